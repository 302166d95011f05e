import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { ApiError, ApiErrorCode } from '../errors.js';
import { throughputBucketMs, type EpisodeRow, type RunRow, type TurnRow } from '../queries.js';
import type { ApiContext } from '../server.js';
import {
  BlobParam, EpisodeList, EpisodeListQuery, errorResponses, PolicyVersionList, RunIdParam, RunList, RunListQuery, RunSummary,
  ThroughputQuery, ThroughputResponse, type EpisodeView,
} from '../schemas.js';

const MAX_COMPLETION_TEXT = 2000;

/** Runs, their summaries, policy versions, throughput, latest episodes, and the screenshots they show. */
export const runRoutes: FastifyPluginAsyncTypebox<{ ctx: ApiContext }> = async (app, { ctx }) => {
  const q = ctx.queries;

  app.get('/runs', {
    schema: { summary: 'runs, the most recently active first', tags: ['runs'], querystring: RunListQuery, response: { 200: RunList, ...errorResponses(400, 503) } },
  }, async (request) => ({ runs: await q.listRuns(request.query.limit) }));

  app.get('/runs/:runId', {
    schema: {
      summary: 'a run\'s summary: outcomes, success rate and reward by policy version, staleness histogram, newest trainer step',
      tags: ['runs'], params: RunIdParam, response: { 200: RunSummary, ...errorResponses(400, 404, 503) },
    },
  }, async (request) => {
    const { runId } = request.params;
    const [run, outcomes, byVersion, staleness, latestStep, versions] = await Promise.all([
      q.run(runId), q.outcomes(runId), q.byVersion(runId), q.staleness(runId), q.latestStep(runId), q.policyVersions(runId),
    ]);
    // A replay run has trainer steps and versions but no trajectory events of its own.
    if (!run && !latestStep && versions.length === 0) throw runNotFound(runId);
    return {
      run: run ?? emptyRun(runId), outcomes, by_version: byVersion, staleness, latest_step: latestStep ?? null, published_versions: versions.length,
    };
  });

  app.get('/runs/:runId/throughput', {
    schema: {
      summary: 'events, turns and finished episodes per time bucket', tags: ['runs'], params: RunIdParam, querystring: ThroughputQuery,
      response: { 200: ThroughputResponse, ...errorResponses(400, 404, 503) },
    },
  }, async (request) => {
    const run = await q.run(request.params.runId);
    if (!run) throw runNotFound(request.params.runId);
    const bucketMs = request.query.bucket_s ? request.query.bucket_s * 1000 : throughputBucketMs(run.last_event_ms - run.first_event_ms);
    return { bucket_ms: bucketMs, points: await q.throughput(run.run_id, bucketMs) };
  });

  app.get('/runs/:runId/policy-versions', {
    schema: { summary: 'adapter versions the run published, oldest first', tags: ['runs'], params: RunIdParam, response: { 200: PolicyVersionList, ...errorResponses(400, 503) } },
  }, async (request) => {
    const rows = await q.policyVersions(request.params.runId);
    return {
      run_id: request.params.runId,
      versions: rows.map(({ metric_names, metric_values, ...v }) => ({ ...v, metrics: Object.fromEntries(metric_names.map((n, i) => [n, metric_values[i]!])) })),
    };
  });

  app.get('/runs/:runId/episodes', {
    schema: {
      summary: 'the newest finished episodes with their turns (screenshot_url for browser observations)', tags: ['runs'], params: RunIdParam,
      querystring: EpisodeListQuery, response: { 200: EpisodeList, ...errorResponses(400, 503) },
    },
  }, async (request) => {
    const episodes = await q.latestEpisodes(request.params.runId, request.query.limit);
    const turns = await q.turns(request.params.runId, episodes.map((e) => e.episode_id));
    return { run_id: request.params.runId, episodes: withTurns(episodes, turns) };
  });

  app.get('/blobs/:sha256', {
    schema: { summary: 'a stored observation (screenshot) by content hash', tags: ['runs'], params: BlobParam, response: errorResponses(400, 404) },
  }, async (request, reply) => {
    const { sha256 } = request.params;
    if (!(await ctx.deps.blobs.has(sha256))) {
      throw new ApiError(404, ApiErrorCode.NOT_FOUND, `blob ${sha256} is not in the blob store`, { hint: 'check storage.blobs: the API must read the store the producers wrote' });
    }
    const bytes = await ctx.deps.blobs.get(sha256);
    // Content-addressed: the bytes behind a hash never change.
    return reply.type(mediaType(bytes)).header('cache-control', 'public, max-age=31536000, immutable').send(bytes);
  });
};

function runNotFound(runId: string): ApiError {
  return new ApiError(404, ApiErrorCode.NOT_FOUND, `run ${JSON.stringify(runId)} has no events, trainer steps or versions in this database`, {
    hint: 'GET /runs lists the runs; check that the sink runs and that the API reads the right clickhouse.database',
  });
}

function emptyRun(runId: string): RunRow {
  return { run_id: runId, first_event_ms: 0, last_event_ms: 0, events: 0, groups: 0, episodes: 0, turns: 0, min_policy_version: 0, max_policy_version: 0, producers: 0 };
}

function withTurns(episodes: EpisodeRow[], turns: TurnRow[]): EpisodeView[] {
  const byEpisode = new Map<string, TurnRow[]>();
  for (const t of turns) byEpisode.set(t.episode_id, [...(byEpisode.get(t.episode_id) ?? []), t]);
  return episodes.map((e) => ({
    ...e,
    turns: (byEpisode.get(e.episode_id) ?? []).map(({ episode_id: _e, observation_sha256, observation_media_type, completion_text, ...t }) => ({
      ...t,
      completion_text: completion_text.length > MAX_COMPLETION_TEXT ? `${completion_text.slice(0, MAX_COMPLETION_TEXT)}…` : completion_text,
      screenshot_url: observation_sha256 && (observation_media_type ?? '').startsWith('image/') ? `/blobs/${observation_sha256}` : null,
    })),
  }));
}

/** The store keeps bytes, not types: PNG and JPEG are told by their first bytes. */
function mediaType(bytes: Buffer): string {
  if (bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'image/png';
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return 'image/jpeg';
  return 'application/octet-stream';
}
