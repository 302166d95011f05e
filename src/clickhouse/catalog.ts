/**
 * Every SQL statement the project sends, except the migrations (./migrations) and the sink's row
 * inserts (`client.insert` into the tables of src/consumers/clickhouse-sink/rows.ts). Each is
 * named, built from typed parameters (values reach SQL only through quoteString / quoteInteger)
 * and has example parameters. test/clickhouse/current-clickhouse.test.ts runs every entry, with
 * its example, on ClickHouse 18.16 and on current ClickHouse over the same data and fails on any
 * error or difference; the same file fails when SQL text appears in src outside this file and
 * the migrations, so a new query cannot skip that check. Callers (report, API, metrics, demo,
 * sink, migration runner) only pick an entry and pass its parameters.
 */
import { quoteInteger, quoteString } from './sql.js';

/** What the examples may refer to: the test's database, a run it stored, that run's topics. */
export interface ExampleContext {
  /** The database's plain name (for queries on `system` tables). */
  database: string;
  runId: string;
  /** Some episodes of that run. */
  episodeIds: string[];
  /** The topics the sink read that run from. */
  topics: string[];
}

export interface CatalogQuery<P> {
  /** The statement; `db` is the database as a quoted identifier (quoteIdentifier). */
  sql(db: string, params: P): string;
  example(ctx: ExampleContext): P;
  /** The answer is the server's own (its version): run on every server, not compared. */
  serverSpecific?: true;
}

type RunParams = { runId: string };
const run = (ctx: ExampleContext): RunParams => ({ runId: ctx.runId });
const none = (): Record<string, never> => ({});

function query<P>(q: CatalogQuery<P>): CatalogQuery<P> {
  return q;
}

const RUN_COLUMNS = 'run_id, first_event_ms, last_event_ms, events, groups, episodes, turns, min_policy_version, max_policy_version, producers';
/** Runs that get per-run series in /metrics: the most recently active ones. */
const RUNS_IN_METRICS = 20;

/** `satisfies` (not a type annotation): each entry keeps its own parameter type. */
export const QUERIES = {
  // The server and the migration runner (src/clickhouse/migrations/index.ts).
  serverVersion: query({ example: none, serverSpecific: true, sql: () => 'SELECT version() AS v' }),
  migrationVersions: query({ example: none, sql: (db) => `SELECT DISTINCT version FROM ${db}.schema_migrations ORDER BY version` }),
  migrationNewest: query({ example: none, sql: (db) => `SELECT max(version) AS v FROM ${db}.schema_migrations` }),

  // The sink's offset watermark: the sink's own reload, and the API's sink lag.
  sinkWatermarks: query({
    example: none,
    sql: (db) => `SELECT topic, partition, toString(max(next_offset)) AS next_offset FROM ${db}.sink_offsets GROUP BY topic, partition ORDER BY topic, partition`,
  }),
  apiSinkWatermarks: query({
    example: (ctx) => ({ topics: ctx.topics }),
    sql: (db, p: { topics: string[] }) => `SELECT topic, partition, max(next_offset) AS next_offset
FROM ${db}.sink_offsets WHERE topic IN (${p.topics.map(quoteString).join(', ')}) GROUP BY topic, partition ORDER BY topic, partition`,
  }),

  // `trajstore report` (src/consumers/clickhouse-sink/report.ts), one per section.
  reportSummary: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT run_id, events, groups, episodes, turns, min_policy_version, max_policy_version, producers,
  first_event_ms, last_event_ms, round(events * 1000 / greatest(last_event_ms - first_event_ms, 1), 1) AS events_per_s
FROM ${db}.runs WHERE run_id = ${quoteString(p.runId)}`,
  }),
  reportByVersion: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT policy_version, count() AS episodes, round(avg(reward), 4) AS reward_mean,
  round(countIf(status = 'success') / count(), 4) AS success_rate, round(countIf(status = 'timeout') / count(), 4) AS timeout_rate,
  round(countIf(status = 'error') / count(), 4) AS error_rate, round(avg(num_turns), 2) AS turns_mean,
  sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)} GROUP BY policy_version ORDER BY policy_version`,
  }),
  reportByTask: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT task_family, task_id, count() AS episodes, round(avg(reward), 4) AS reward_mean,
  round(countIf(status = 'success') / count(), 4) AS success_rate, min(policy_version) AS first_version, max(policy_version) AS last_version
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)} GROUP BY task_family, task_id ORDER BY episodes DESC, task_family, task_id LIMIT 50`,
  }),
  reportStaleness: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT bucket_versions_behind AS versions_behind, sum(bucket_groups) AS groups, sum(bucket_tokens) AS tokens
FROM ${db}.trainer_steps
ARRAY JOIN staleness_versions_behind AS bucket_versions_behind, staleness_groups AS bucket_groups, staleness_tokens AS bucket_tokens
WHERE run_id = ${quoteString(p.runId)} GROUP BY bucket_versions_behind ORDER BY bucket_versions_behind`,
  }),
  reportThroughput: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT toStartOfMinute(toDateTime(intDiv(timestamp_ms, 1000))) AS minute, count() AS events,
  countIf(kind = 'Turn') AS turns, countIf(kind = 'EpisodeFinished') AS episodes
FROM ${db}.events WHERE run_id = ${quoteString(p.runId)} GROUP BY minute ORDER BY minute`,
  }),
  // quantile of an integer column is that integer type on 18.16 (the interpolated value cut
  // down) and Float64 on current releases; of a Float64 it is the same Float64 on both.
  reportLatency: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT policy_version, count() AS turns, round(quantile(0.5)(toFloat64(latency_ms))) AS latency_p50_ms,
  round(quantile(0.95)(toFloat64(latency_ms))) AS latency_p95_ms, round(avg(completion_tokens), 1) AS completion_tokens_mean,
  round(countIf(isNull(action_type)) / count(), 4) AS unparsed_action_rate
FROM ${db}.turns WHERE run_id = ${quoteString(p.runId)} GROUP BY policy_version ORDER BY policy_version`,
  }),
  reportErrors: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT status, ifNull(error_code, '') AS error_code, count() AS episodes
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)} AND status != 'success' AND status != 'failure'
GROUP BY status, error_code ORDER BY episodes DESC, status, error_code`,
  }),

  // The API's run endpoints and dashboard (src/api/queries.ts).
  apiRuns: query({
    example: () => ({ limit: 50 }),
    sql: (db, p: { limit: number }) => `SELECT ${RUN_COLUMNS} FROM ${db}.runs ORDER BY last_event_ms DESC, run_id LIMIT ${quoteInteger(p.limit)}`,
  }),
  apiRun: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT ${RUN_COLUMNS} FROM ${db}.runs WHERE run_id = ${quoteString(p.runId)}`,
  }),
  apiOutcomes: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT toString(purpose) AS purpose, count() AS episodes,
  countIf(status = 'success') / count() AS success_rate, avg(reward) AS reward_mean,
  countIf(status = 'timeout') / count() AS timeout_rate, countIf(status = 'error') / count() AS error_rate
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)} GROUP BY purpose ORDER BY purpose`,
  }),
  apiByVersion: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT policy_version, toString(purpose) AS purpose, count() AS episodes,
  countIf(status = 'success') / count() AS success_rate, avg(reward) AS reward_mean,
  avg(num_turns) AS turns_mean, sum(prompt_tokens + completion_tokens) AS tokens
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)}
GROUP BY policy_version, purpose ORDER BY policy_version, purpose`,
  }),
  apiStaleness: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT bucket_versions_behind AS versions_behind, sum(bucket_groups) AS groups, sum(bucket_tokens) AS tokens
FROM ${db}.trainer_steps
ARRAY JOIN staleness_versions_behind AS bucket_versions_behind, staleness_groups AS bucket_groups, staleness_tokens AS bucket_tokens
WHERE run_id = ${quoteString(p.runId)} GROUP BY bucket_versions_behind ORDER BY bucket_versions_behind`,
  }),
  apiThroughput: query({
    example: (ctx) => ({ runId: ctx.runId, bucketMs: 1000 }),
    sql: (db, p: { runId: string; bucketMs: number }) => {
      const bucket = quoteInteger(p.bucketMs);
      return `SELECT intDiv(timestamp_ms, ${bucket}) * ${bucket} AS t_ms, count() AS events,
  countIf(kind = 'Turn') AS turns, countIf(kind = 'EpisodeFinished') AS episodes
FROM ${db}.events WHERE run_id = ${quoteString(p.runId)} GROUP BY t_ms ORDER BY t_ms`;
    },
  }),
  apiPolicyVersions: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT version, parent_version, base_model, served_model_name, adapter_uri, adapter_checksum,
  checkpoint_uri, training_step, metric_names, metric_values, created_at_ms
FROM ${db}.policy_versions WHERE run_id = ${quoteString(p.runId)} ORDER BY version`,
  }),
  apiLatestStep: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT step, timestamp_ms, policy_version, loss, reward_mean, tokens_per_second
FROM ${db}.trainer_steps WHERE run_id = ${quoteString(p.runId)} ORDER BY step DESC LIMIT 1`,
  }),
  apiLatestEpisodes: query({
    example: (ctx) => ({ runId: ctx.runId, limit: 20 }),
    sql: (db, p: { runId: string; limit: number }) => `SELECT episode_id, group_id, policy_version, toString(purpose) AS purpose, toString(status) AS status,
  num_turns, reward, duration_ms, finished_at_ms, task_id, task_family, environment, error_code
FROM ${db}.episode_summary WHERE run_id = ${quoteString(p.runId)}
ORDER BY finished_at_ms DESC, episode_id LIMIT ${quoteInteger(p.limit)}`,
  }),
  apiTurns: query({
    example: (ctx) => ({ runId: ctx.runId, episodeIds: ctx.episodeIds }),
    sql: (db, p: { runId: string; episodeIds: string[] }) => `SELECT episode_id, turn_index, policy_version, model, prompt_tokens, completion_tokens, completion_text,
  action_type, action_args_json, action_parse_error, observation_sha256, observation_media_type, latency_ms, finish_reason
FROM ${db}.turns WHERE run_id = ${quoteString(p.runId)} AND episode_id IN (${p.episodeIds.map(quoteString).join(', ')})
ORDER BY episode_id, turn_index`,
  }),

  // /metrics (src/api/metrics.ts). Aliases differ from column names: ClickHouse resolves a
  // column name to a same-named alias.
  metricsRuns: query({
    example: none,
    sql: (db) => `SELECT run_id, events, episodes, turns, last_event_ms, max_policy_version FROM ${db}.runs
ORDER BY last_event_ms DESC, run_id LIMIT ${RUNS_IN_METRICS}`,
  }),
  metricsSteps: query({
    example: none,
    sql: (db) => `SELECT run_id, max(step) AS last_step, argMax(loss, step) AS last_loss, argMax(tokens_per_second, step) AS last_tps FROM ${db}.trainer_steps
GROUP BY run_id ORDER BY max(timestamp_ms) DESC, run_id LIMIT ${RUNS_IN_METRICS}`,
  }),
  metricsVersions: query({
    example: none,
    sql: (db) => `SELECT run_id, max(version) AS newest FROM ${db}.policy_versions GROUP BY run_id ORDER BY max(created_at_ms) DESC, run_id LIMIT ${RUNS_IN_METRICS}`,
  }),

  // The demo's live status and RESULT (src/demo/status.ts).
  demoReady: query({
    example: (ctx) => ({ database: ctx.database }),
    sql: (_db, p: { database: string }) => `SELECT count() AS n FROM system.tables WHERE database = ${quoteString(p.database)} AND name = 'episode_summary'`,
  }),
  demoEvents: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT count() AS n FROM ${db}.events_data WHERE run_id = ${quoteString(p.runId)}`,
  }),
  demoVersions: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT uniqExact(version) AS n, max(version) AS v FROM ${db}.policy_versions_data WHERE run_id = ${quoteString(p.runId)}`,
  }),
  demoSteps: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT count() AS steps, sum(num_groups) AS groups FROM ${db}.trainer_steps_data FINAL WHERE run_id = ${quoteString(p.runId)}`,
  }),
  demoPerVersion: query({
    example: run,
    sql: (db, p: RunParams) => `SELECT policy_version AS version,
  countIf(status IN ('success', 'failure', 'timeout')) AS episodes,
  countIf(status = 'success') AS successes,
  avgIf(reward, status IN ('success', 'failure', 'timeout')) AS mean_reward,
  countIf(status = 'error') AS errors
FROM ${db}.episode_summary
WHERE run_id = ${quoteString(p.runId)} AND purpose = 'train'
GROUP BY policy_version ORDER BY policy_version`,
  }),
  // Printed by the demo for the user to run with `trajstore sql --database DB`: table names are
  // left unqualified (the shell would read back-quotes), so `db` is not used.
  demoHintByVersion: query({
    example: run,
    sql: (_db, p: RunParams) => `SELECT policy_version, count() AS episodes, round(avg(status = 'success'), 3) AS success FROM episode_summary WHERE run_id = ${quoteString(p.runId)} GROUP BY policy_version ORDER BY policy_version`,
  }),
  demoHintSteps: query({
    example: none,
    sql: () => 'SELECT step, policy_version, round(loss, 4) AS loss, round(reward_mean, 3) AS reward FROM trainer_steps ORDER BY step DESC LIMIT 10',
  }),
} satisfies Record<string, CatalogQuery<any>>;

export type QueryName = keyof typeof QUERIES;

/** Every catalog statement built with its example parameters, for the compatibility test. */
export function exampleStatements(db: string, ctx: ExampleContext): Array<{ name: QueryName; sql: string; compare: boolean }> {
  return (Object.keys(QUERIES) as QueryName[]).map((name) => {
    const q = QUERIES[name] as CatalogQuery<unknown>;
    return { name, sql: q.sql(db, q.example(ctx)), compare: q.serverSpecific !== true };
  });
}
