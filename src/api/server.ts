/**
 * The trajstore HTTP API: one Fastify instance, routes as encapsulated plugins, one JSON schema
 * per route driving validation, serialization and the OpenAPI document at /docs, one error
 * shape (ErrorBody) for every failure.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { ClickHouseClient } from '@clickhouse/client';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Kafka } from 'kafkajs';
import type { TrajstoreConfig } from '../config/index.js';
import type { BlobStore } from '../storage/blob-store.js';
import type { Logger } from '../util/logger.js';
import { Dependencies, type ApiTopics } from './dependencies.js';
import { ApiError, ApiErrorCode, toErrorBody } from './errors.js';
import { ReplayJobs } from './jobs.js';
import { ApiMetrics } from './metrics.js';
import { RunQueries } from './queries.js';
import { dashboardRoutes } from './routes/dashboard.js';
import { replayRoutes } from './routes/replay.js';
import { runRoutes } from './routes/runs.js';
import { sqlRoutes } from './routes/sql.js';
import { systemRoutes } from './routes/system.js';
import { ErrorBody } from './schemas.js';

export type ApiSettings = TrajstoreConfig['api'];

export interface ApiOptions {
  settings: ApiSettings;
  clickhouse: ClickHouseClient;
  database: string;
  kafka: Kafka;
  topics: ApiTopics;
  blobs: BlobStore;
  blobsLocation: string;
  /** The full config, for replay jobs; null when the API runs on defaults (replay jobs refused). */
  config: TrajstoreConfig | null;
  logger: Logger;
}

/** What every route plugin gets. */
export interface ApiContext {
  settings: ApiSettings;
  deps: Dependencies;
  queries: RunQueries;
  jobs: ReplayJobs;
  metrics: ApiMetrics;
  /** preHandler of mutating routes: 401 without the configured bearer token. */
  requireToken: (request: FastifyRequest) => Promise<void>;
  startedAt: number;
}

export type Api = FastifyInstance;

export async function buildApi(opts: ApiOptions): Promise<Api> {
  const app = Fastify({
    // pino's Logger is Fastify's logger; the cast only widens its type.
    loggerInstance: opts.logger as FastifyBaseLogger,
    bodyLimit: opts.settings.body_limit_bytes,
    // One line per request is noise next to the metrics; errors are logged by the error handler.
    logController: new LogController({ disableRequestLogging: true }),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, useDefaults: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  const ctx: ApiContext = {
    settings: opts.settings,
    deps: new Dependencies(opts.clickhouse, opts.database, opts.kafka, opts.topics, opts.blobs, opts.blobsLocation),
    queries: new RunQueries(opts.clickhouse, opts.database),
    jobs: new ReplayJobs({ config: opts.config, jobsDir: opts.settings.jobs_dir, maxRunning: opts.settings.max_replay_jobs, logger: opts.logger }),
    metrics: new ApiMetrics(opts.logger),
    requireToken: tokenCheck(opts.settings.token),
    startedAt: Date.now(),
  };

  app.addSchema(ErrorBody);
  installErrorHandling(app, ctx);
  await app.register(swagger, {
    openapi: {
      info: { title: 'trajstore API', version: '0.1.0', description: 'runs, policy versions, read-only SQL and replay jobs over the trajectory store; errors are ErrorBody' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  await app.register(rateLimit, {
    max: opts.settings.rate_limit_per_minute,
    timeWindow: 60_000,
    errorResponseBuilder: (_req, context) => new ApiError(429, ApiErrorCode.RATE_LIMITED, `more than ${context.max} requests a minute from this client`, {
      retriable: true,
      hint: `retry after ${context.after}; api.rate_limit_per_minute sets the limit`,
    }),
  });
  await app.register(systemRoutes, { ctx });
  await app.register(runRoutes, { ctx });
  await app.register(sqlRoutes, { ctx });
  await app.register(replayRoutes, { ctx });
  await app.register(dashboardRoutes, { ctx });
  app.addHook('onClose', async () => {
    await ctx.jobs.close();
    await ctx.deps.close();
  });
  return app as unknown as Api;
}

function installErrorHandling(app: FastifyInstance, ctx: ApiContext): void {
  app.setErrorHandler((err, request, reply) => {
    const body = toErrorBody(err, request.id);
    if (body.statusCode >= 500) request.log.error({ err, code: body.code, url: request.url }, 'request failed');
    else request.log.debug({ code: body.code, url: request.url }, body.message);
    return reply.code(body.statusCode).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    const err = new ApiError(404, ApiErrorCode.NOT_FOUND, `no route ${request.method} ${request.url.split('?')[0]}`, { hint: 'the routes are listed at /docs' });
    return reply.code(404).send(toErrorBody(err, request.id));
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    ctx.metrics.requests.inc({ method: request.method, route, status_code: String(reply.statusCode) });
    ctx.metrics.duration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
  });
}

/** Compares digests, so the comparison takes the same time whatever the token. */
function tokenCheck(token: string | undefined): (request: FastifyRequest) => Promise<void> {
  const expected = token === undefined ? null : createHash('sha256').update(token).digest();
  return async (request) => {
    if (expected === null) {
      throw new ApiError(401, ApiErrorCode.UNAUTHORIZED, 'this endpoint changes state and the API has no token configured', {
        hint: 'set api.token in the config (or TRAJSTORE__API__TOKEN) and send it as "Authorization: Bearer <token>"',
      });
    }
    const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '');
    const given = match ? createHash('sha256').update(match[1]!).digest() : null;
    if (!given || !timingSafeEqual(given, expected)) {
      throw new ApiError(401, ApiErrorCode.UNAUTHORIZED, match ? 'the bearer token is wrong' : 'this endpoint needs "Authorization: Bearer <token>"', {
        hint: 'send the token set in api.token of the API\'s config',
      });
    }
  };
}
