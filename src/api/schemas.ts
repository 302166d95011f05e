/**
 * JSON schemas of every request and response. One schema drives Fastify's validation of inputs,
 * the serialization of outputs (a missing required field is an error, an unknown one is
 * dropped) and the OpenAPI document at /docs.
 */
import { Type, type Static } from 'typebox';

const Nullable = <T extends ReturnType<typeof Type.String> | ReturnType<typeof Type.Integer> | ReturnType<typeof Type.Number>>(t: T) =>
  Type.Union([t, Type.Null()]);

export const ErrorBody = Type.Object(
  {
    statusCode: Type.Integer(),
    code: Type.String({ description: 'stable TRAJ_E_* code, listed in src/api/README.md' }),
    message: Type.String(),
    hint: Nullable(Type.String({ description: 'what to do next' })),
    retriable: Type.Boolean({ description: 'whether the same request may succeed later' }),
    requestId: Type.String(),
  },
  { $id: 'ErrorBody', description: 'the one error shape of every endpoint' },
);

/** Error responses a route may give, by reference to the shared ErrorBody schema. */
export const errorResponses = (...codes: number[]): Record<number, { $ref: string }> =>
  Object.fromEntries(codes.map((c) => [c, { $ref: 'ErrorBody#' }]));

export const RunIdParam = Type.Object({ runId: Type.String({ pattern: '^[a-zA-Z0-9._-]{1,128}$', description: 'run id' }) });

const DependencyState = Type.Object({
  state: Type.Union([Type.Literal('up'), Type.Literal('down')]),
  latency_ms: Type.Number(),
  detail: Type.String({ description: 'version when up, the error and what to do when down' }),
});

export const Health = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded')]),
  uptime_s: Type.Number(),
  dependencies: Type.Object({ clickhouse: DependencyState, database: DependencyState, kafka: DependencyState, blobs: DependencyState }),
});

export const Run = Type.Object({
  run_id: Type.String(),
  first_event_ms: Type.Number(),
  last_event_ms: Type.Number(),
  events: Type.Integer(),
  groups: Type.Integer(),
  episodes: Type.Integer(),
  turns: Type.Integer(),
  min_policy_version: Type.Integer(),
  max_policy_version: Type.Integer(),
  producers: Type.Integer(),
});

export const RunList = Type.Object({ runs: Type.Array(Run) });
export const RunListQuery = Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }) });

const Outcome = Type.Object({
  purpose: Type.String(), episodes: Type.Integer(), success_rate: Type.Number(), reward_mean: Type.Number(),
  timeout_rate: Type.Number(), error_rate: Type.Number(),
});
const VersionStats = Type.Object({
  policy_version: Type.Integer(), purpose: Type.String(), episodes: Type.Integer(), success_rate: Type.Number(),
  reward_mean: Type.Number(), turns_mean: Type.Number(), tokens: Type.Integer(),
});
const Staleness = Type.Object({ versions_behind: Type.Integer(), groups: Type.Integer(), tokens: Type.Integer() });
const Throughput = Type.Object({ t_ms: Type.Number(), events: Type.Integer(), turns: Type.Integer(), episodes: Type.Integer() });

export const RunSummary = Type.Object({
  run: Run,
  outcomes: Type.Array(Outcome),
  by_version: Type.Array(VersionStats),
  staleness: Type.Array(Staleness),
  latest_step: Type.Union([
    Type.Object({ step: Type.Integer(), timestamp_ms: Type.Number(), policy_version: Type.Integer(), loss: Type.Number(), reward_mean: Type.Number(), tokens_per_second: Type.Number() }),
    Type.Null(),
  ]),
  published_versions: Type.Integer(),
});

export const ThroughputQuery = Type.Object({ bucket_s: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400, description: 'default: chosen to give at most ~120 points' })) });
export const ThroughputResponse = Type.Object({ bucket_ms: Type.Integer(), points: Type.Array(Throughput) });

export const PolicyVersion = Type.Object({
  version: Type.Integer(),
  parent_version: Nullable(Type.Integer()),
  base_model: Type.String(),
  served_model_name: Type.String(),
  adapter_uri: Type.String(),
  adapter_checksum: Type.String(),
  checkpoint_uri: Nullable(Type.String()),
  training_step: Type.Integer(),
  metrics: Type.Record(Type.String(), Type.Number()),
  created_at_ms: Type.Number(),
});
export const PolicyVersionList = Type.Object({ run_id: Type.String(), versions: Type.Array(PolicyVersion) });

const Turn = Type.Object({
  turn_index: Type.Integer(),
  policy_version: Type.Integer(),
  model: Type.String(),
  prompt_tokens: Type.Integer(),
  completion_tokens: Type.Integer(),
  completion_text: Type.String({ description: 'cut at 2,000 characters' }),
  action_type: Nullable(Type.String()),
  action_args_json: Nullable(Type.String()),
  action_parse_error: Nullable(Type.String()),
  screenshot_url: Nullable(Type.String({ description: '/blobs/<sha256> when the turn observed a stored image' })),
  latency_ms: Type.Integer(),
  finish_reason: Type.String(),
});
export const Episode = Type.Object({
  episode_id: Type.String(),
  group_id: Type.String(),
  policy_version: Type.Integer(),
  purpose: Type.String(),
  status: Type.String(),
  num_turns: Type.Integer(),
  reward: Type.Number(),
  duration_ms: Type.Number(),
  finished_at_ms: Type.Number(),
  task_id: Type.String(),
  task_family: Type.String(),
  environment: Type.String(),
  error_code: Nullable(Type.String()),
  turns: Type.Array(Turn),
});
export const EpisodeList = Type.Object({ run_id: Type.String(), episodes: Type.Array(Episode) });
export const EpisodeListQuery = Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 100, default: 10 }) });

export const BlobParam = Type.Object({ sha256: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'lower-case hex SHA-256' }) });

export const SqlRequest = Type.Object(
  {
    query: Type.String({ minLength: 1, maxLength: 100_000, description: 'one statement; runs with readonly=1' }),
    max_rows: Type.Optional(Type.Integer({ minimum: 1, description: 'at most api.sql_max_rows (the default)' })),
    timeout_s: Type.Optional(Type.Integer({ minimum: 1, description: 'at most api.sql_timeout_s (the default)' })),
  },
  { additionalProperties: false },
);
export const SqlResponse = Type.Object({
  columns: Type.Array(Type.Object({ name: Type.String(), type: Type.String() })),
  rows: Type.Array(Type.Record(Type.String(), Type.Unknown())),
  row_count: Type.Integer(),
});

const JobState = Type.Union([Type.Literal('queued'), Type.Literal('running'), Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('cancelled')]);
export const ReplayJob = Type.Object({
  id: Type.String(),
  state: JobState,
  source_run: Type.String(),
  run: Type.String(),
  from: Nullable(Type.String()),
  to: Nullable(Type.String()),
  dry_run: Type.Boolean(),
  created_at_ms: Type.Number(),
  started_at_ms: Nullable(Type.Number()),
  finished_at_ms: Nullable(Type.Number()),
  pid: Nullable(Type.Integer()),
  exit_code: Nullable(Type.Integer()),
  signal: Nullable(Type.String()),
  result: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()], { description: "the replay's JSON result once it succeeded" }),
  error: Nullable(Type.String({ description: 'the last lines of its log when it failed' })),
  log_path: Type.String(),
});
export const ReplayJobList = Type.Object({ jobs: Type.Array(ReplayJob) });
export const ReplayJobParam = Type.Object({ jobId: Type.String({ pattern: '^[a-zA-Z0-9-]{1,64}$' }) });
const runId = Type.String({ pattern: '^[a-zA-Z0-9._-]{1,128}$' });
const bound = Type.String({ minLength: 1, maxLength: 4096, pattern: '^[0-9A-Za-z:.,+-]+$', description: 'an offset, partition:offset list, ISO time, or epoch ms with an ms suffix' });
export const ReplayJobRequest = Type.Object(
  {
    source_run: runId,
    run: runId,
    from: Type.Optional(bound),
    to: Type.Optional(bound),
    dry_run: Type.Optional(Type.Boolean({ default: false })),
    training: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: "overrides of the config's training section (validated like the config)" })),
  },
  { additionalProperties: false },
);

export type ReplayJobRequestBody = Static<typeof ReplayJobRequest>;
export type ReplayJobView = Static<typeof ReplayJob>;
export type EpisodeView = Static<typeof Episode>;
export type HealthView = Static<typeof Health>;
