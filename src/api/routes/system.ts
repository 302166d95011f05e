import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ApiContext } from '../server.js';
import { Health } from '../schemas.js';

/** /health and /metrics. */
export const systemRoutes: FastifyPluginAsyncTypebox<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.get('/health', {
    schema: {
      summary: 'each dependency\'s state; 503 when one is down',
      tags: ['system'],
      response: { 200: Health, 503: Health },
    },
  }, async (_request, reply) => {
    const dependencies = await ctx.deps.health();
    const ok = Object.values(dependencies).every((d) => d.state === 'up');
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'degraded', uptime_s: (Date.now() - ctx.startedAt) / 1000, dependencies });
  });

  app.get('/metrics', {
    schema: {
      summary: 'Prometheus text: API, producer, sink and trainer figures (the latter read from ClickHouse and Kafka at scrape time)',
      tags: ['system'],
      produces: ['text/plain'],
    },
  }, async (_request, reply) => {
    const text = await ctx.metrics.render(ctx.deps, ctx.jobs.countByState());
    return reply.type(ctx.metrics.registry.contentType).send(text);
  });
};
