/**
 * The read queries behind the run endpoints and the dashboard, over the migrations' views
 * (src/consumers/clickhouse-sink/README.md lists their columns). The statements are the
 * catalog's (src/clickhouse/catalog.ts: typed parameters, checked on ClickHouse 18.16 and
 * current releases); every query runs through queryReadOnly, so even a bug here cannot write.
 */
import type { ClickHouseClient } from '@clickhouse/client';
import { queryReadOnly } from '../clickhouse/readonly.js';
import { QUERIES } from '../clickhouse/catalog.js';
import { quoteIdentifier } from '../clickhouse/sql.js';

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
    return this.rows<RunRow>(QUERIES.apiRuns.sql(this.db, { limit }));
  }

  async run(runId: string): Promise<RunRow | undefined> {
    const [row] = await this.rows<RunRow>(QUERIES.apiRun.sql(this.db, { runId }));
    return row;
  }

  /** Outcome of finished episodes overall (train and eval apart). */
  async outcomes(runId: string): Promise<OutcomeRow[]> {
    return this.rows<OutcomeRow>(QUERIES.apiOutcomes.sql(this.db, { runId }));
  }

  /** Success rate and reward by the behavior policy version: is training helping? */
  async byVersion(runId: string): Promise<VersionStatsRow[]> {
    return this.rows<VersionStatsRow>(QUERIES.apiByVersion.sql(this.db, { runId }));
  }

  /** The trainer's staleness histogram summed over its steps: groups trained N versions behind. */
  async staleness(runId: string): Promise<StalenessRow[]> {
    return this.rows<StalenessRow>(QUERIES.apiStaleness.sql(this.db, { runId }));
  }

  /** Events, turns and finished episodes per time bucket. */
  async throughput(runId: string, bucketMs: number): Promise<ThroughputRow[]> {
    return this.rows<ThroughputRow>(QUERIES.apiThroughput.sql(this.db, { runId, bucketMs }));
  }

  async policyVersions(runId: string): Promise<PolicyVersionRow[]> {
    return this.rows<PolicyVersionRow>(QUERIES.apiPolicyVersions.sql(this.db, { runId }));
  }

  /** The newest trainer step of the run, if it has trained. */
  async latestStep(runId: string): Promise<TrainerStepRow | undefined> {
    const [row] = await this.rows<TrainerStepRow>(QUERIES.apiLatestStep.sql(this.db, { runId }));
    return row;
  }

  /** The newest finished episodes. */
  async latestEpisodes(runId: string, limit: number): Promise<EpisodeRow[]> {
    return this.rows<EpisodeRow>(QUERIES.apiLatestEpisodes.sql(this.db, { runId, limit }));
  }

  /** The turns of the given episodes, in order. */
  async turns(runId: string, episodeIds: string[]): Promise<TurnRow[]> {
    if (episodeIds.length === 0) return [];
    return this.rows<TurnRow>(QUERIES.apiTurns.sql(this.db, { runId, episodeIds }));
  }
}

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
