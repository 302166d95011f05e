/**
 * The read queries behind the run endpoints and the dashboard, over the views of migration 001
 * (src/consumers/clickhouse-sink/README.md lists their columns). Every value reaches SQL through
 * quoteString / quoteInteger / quoteIdentifier; every query runs through queryReadOnly, so even
 * a bug here cannot write. Statements run on ClickHouse 18.16 and current releases.
 */
import type { ClickHouseClient } from '@clickhouse/client';
import { queryReadOnly } from '../clickhouse/readonly.js';
import { quoteIdentifier, quoteInteger, quoteString } from '../clickhouse/sql.js';

const LIMITS = { maxRows: 100_000, timeoutS: 30, numbersAsJson: true };

export class RunQueries {
  private readonly db: string;

  constructor(private readonly client: ClickHouseClient, database: string) {
    this.db = quoteIdentifier(database);
  }

  private async rows<T>(sql: string): Promise<T[]> {
    return (await queryReadOnly(this.client, sql, LIMITS)).rows as T[];
  }

  /** Runs, the most recently active first. */
  async listRuns(limit: number): Promise<RunRow[]> {
    return this.rows<RunRow>(`SELECT ${RUN_COLUMNS} FROM ${this.db}.runs ORDER BY last_event_ms DESC, run_id LIMIT ${quoteInteger(limit)}`);
  }

  async run(runId: string): Promise<RunRow | undefined> {
    const [row] = await this.rows<RunRow>(`SELECT ${RUN_COLUMNS} FROM ${this.db}.runs WHERE run_id = ${quoteString(runId)}`);
    return row;
  }

  /** Outcome of finished episodes overall (train and eval apart). */
  async outcomes(runId: string): Promise<OutcomeRow[]> {
    return this.rows<OutcomeRow>(`SELECT toString(purpose) AS purpose, count() AS episodes,
  countIf(status = 'success') / count() AS success_rate, avg(reward) AS reward_mean,
  countIf(status = 'timeout') / count() AS timeout_rate, countIf(status = 'error') / count() AS error_rate
FROM ${this.db}.episode_summary WHERE run_id = ${quoteString(runId)} GROUP BY purpose ORDER BY purpose`);
  }

  /** Success rate and reward by the behavior policy version: is training helping? */
  async byVersion(runId: string): Promise<VersionStatsRow[]> {
    return this.rows<VersionStatsRow>(`SELECT policy_version, toString(purpose) AS purpose, count() AS episodes,
  countIf(status = 'success') / count() AS success_rate, avg(reward) AS reward_mean,
  avg(num_turns) AS turns_mean, sum(prompt_tokens + completion_tokens) AS tokens
FROM ${this.db}.episode_summary WHERE run_id = ${quoteString(runId)}
GROUP BY policy_version, purpose ORDER BY policy_version, purpose`);
  }

  /** The trainer's staleness histogram summed over its steps: groups trained N versions behind. */
  async staleness(runId: string): Promise<StalenessRow[]> {
    return this.rows<StalenessRow>(`SELECT bucket_versions_behind AS versions_behind, sum(bucket_groups) AS groups, sum(bucket_tokens) AS tokens
FROM ${this.db}.trainer_steps
ARRAY JOIN staleness_versions_behind AS bucket_versions_behind, staleness_groups AS bucket_groups, staleness_tokens AS bucket_tokens
WHERE run_id = ${quoteString(runId)} GROUP BY bucket_versions_behind ORDER BY bucket_versions_behind`);
  }

  /** Events, turns and finished episodes per time bucket. */
  async throughput(runId: string, bucketMs: number): Promise<ThroughputRow[]> {
    const bucket = quoteInteger(bucketMs);
    return this.rows<ThroughputRow>(`SELECT intDiv(timestamp_ms, ${bucket}) * ${bucket} AS t_ms, count() AS events,
  countIf(kind = 'Turn') AS turns, countIf(kind = 'EpisodeFinished') AS episodes
FROM ${this.db}.events WHERE run_id = ${quoteString(runId)} GROUP BY t_ms ORDER BY t_ms`);
  }

  async policyVersions(runId: string): Promise<PolicyVersionRow[]> {
    return this.rows<PolicyVersionRow>(`SELECT version, parent_version, base_model, served_model_name, adapter_uri, adapter_checksum,
  checkpoint_uri, training_step, metric_names, metric_values, created_at_ms
FROM ${this.db}.policy_versions WHERE run_id = ${quoteString(runId)} ORDER BY version`);
  }

  /** The newest trainer step of the run, if it has trained. */
  async latestStep(runId: string): Promise<TrainerStepRow | undefined> {
    const [row] = await this.rows<TrainerStepRow>(`SELECT step, timestamp_ms, policy_version, loss, reward_mean, tokens_per_second
FROM ${this.db}.trainer_steps WHERE run_id = ${quoteString(runId)} ORDER BY step DESC LIMIT 1`);
    return row;
  }

  /** The newest finished episodes. */
  async latestEpisodes(runId: string, limit: number): Promise<EpisodeRow[]> {
    return this.rows<EpisodeRow>(`SELECT episode_id, group_id, policy_version, toString(purpose) AS purpose, toString(status) AS status,
  num_turns, reward, duration_ms, finished_at_ms, task_id, task_family, environment, error_code
FROM ${this.db}.episode_summary WHERE run_id = ${quoteString(runId)}
ORDER BY finished_at_ms DESC, episode_id LIMIT ${quoteInteger(limit)}`);
  }

  /** The turns of the given episodes, in order. */
  async turns(runId: string, episodeIds: string[]): Promise<TurnRow[]> {
    if (episodeIds.length === 0) return [];
    return this.rows<TurnRow>(`SELECT episode_id, turn_index, policy_version, model, prompt_tokens, completion_tokens, completion_text,
  action_type, action_args_json, action_parse_error, observation_sha256, observation_media_type, latency_ms, finish_reason
FROM ${this.db}.turns WHERE run_id = ${quoteString(runId)} AND episode_id IN (${episodeIds.map(quoteString).join(', ')})
ORDER BY episode_id, turn_index`);
  }
}

const RUN_COLUMNS = 'run_id, first_event_ms, last_event_ms, events, groups, episodes, turns, min_policy_version, max_policy_version, producers';

export interface RunRow {
  run_id: string;
  first_event_ms: number;
  last_event_ms: number;
  events: number;
  groups: number;
  episodes: number;
  turns: number;
  min_policy_version: number;
  max_policy_version: number;
  producers: number;
}
export interface OutcomeRow { purpose: string; episodes: number; success_rate: number; reward_mean: number; timeout_rate: number; error_rate: number }
export interface VersionStatsRow { policy_version: number; purpose: string; episodes: number; success_rate: number; reward_mean: number; turns_mean: number; tokens: number }
export interface StalenessRow { versions_behind: number; groups: number; tokens: number }
export interface ThroughputRow { t_ms: number; events: number; turns: number; episodes: number }
export interface PolicyVersionRow {
  version: number;
  parent_version: number | null;
  base_model: string;
  served_model_name: string;
  adapter_uri: string;
  adapter_checksum: string;
  checkpoint_uri: string | null;
  training_step: number;
  metric_names: string[];
  metric_values: number[];
  created_at_ms: number;
}
export interface TrainerStepRow { step: number; timestamp_ms: number; policy_version: number; loss: number; reward_mean: number; tokens_per_second: number }
export interface EpisodeRow {
  episode_id: string;
  group_id: string;
  policy_version: number;
  purpose: string;
  status: string;
  num_turns: number;
  reward: number;
  duration_ms: number;
  finished_at_ms: number;
  task_id: string;
  task_family: string;
  environment: string;
  error_code: string | null;
}
export interface TurnRow {
  episode_id: string;
  turn_index: number;
  policy_version: number;
  model: string;
  prompt_tokens: number;
  completion_tokens: number;
  completion_text: string;
  action_type: string | null;
  action_args_json: string | null;
  action_parse_error: string | null;
  observation_sha256: string | null;
  observation_media_type: string | null;
  latency_ms: number;
  finish_reason: string;
}

/** A bucket width that draws a run's span in at most ~120 points, rounded to a readable unit. */
export function throughputBucketMs(spanMs: number): number {
  const steps = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21_600, 86_400].map((s) => s * 1000);
  return steps.find((b) => spanMs / b <= 120) ?? 86_400_000;
}
