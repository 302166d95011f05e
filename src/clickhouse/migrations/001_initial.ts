import type { Migration } from './types.js';

/**
 * The raw events table, one typed table per payload kind, the policy versions and trainer
 * steps, the sink's offset watermarks, and the views users query (episode_summary: migration 002).
 *
 * Storage tables (`*_data`) are ReplacingMergeTree keyed by the event's identity (event_id, or
 * run + version / run + step), so a redelivered event that slipped past the sink's watermark
 * collapses into one row on merge; the views read them with FINAL, so a query never sees the
 * duplicate even before the merge. Times are UInt64 milliseconds plus a Date for partitioning
 * (18.16 has no DateTime64). Nullable only where the event schema is nullable.
 */

const PURPOSE = "Enum8('train' = 1, 'eval' = 2)";

/** Envelope columns every per-event table carries, so no query needs a join for them. */
const ENVELOPE = `
  event_id String,
  run_id String,
  group_id String,
  episode_id String,
  seq UInt32,
  timestamp_ms UInt64,
  event_date Date,
  policy_version UInt32,
  purpose ${PURPOSE}`;

/** Where the row came from in Kafka: for debugging and for the sink's watermark. */
const PROVENANCE = `
  kafka_partition UInt32,
  kafka_offset UInt64,
  ingested_at_ms UInt64`;

function eventTable(db: string, table: string, columns: string, orderBy: string): string {
  return `CREATE TABLE IF NOT EXISTS ${db}.${table} (${ENVELOPE},${columns},${PROVENANCE}
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(event_date) ORDER BY (${orderBy})`;
}

function finalView(db: string, view: string): string {
  return `CREATE VIEW IF NOT EXISTS ${db}.${view} AS SELECT * FROM ${db}.${view}_data FINAL`;
}

export const migration001: Migration = {
  version: 1,
  name: 'events, typed tables, policy versions, trainer steps, offsets, views',
  statements: (db) => [
    `CREATE TABLE IF NOT EXISTS ${db}.events_data (${ENVELOPE},
  producer_id String,
  schema_version UInt8,
  kind Enum8('GroupStarted' = 1, 'EpisodeStarted' = 2, 'Turn' = 3, 'Reward' = 4, 'EpisodeFinished' = 5, 'GroupCompleted' = 6),
  trace_id String,
  tag_keys Array(String),
  tag_values Array(String),
  kafka_topic String,${PROVENANCE}
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(event_date) ORDER BY (run_id, event_id)`,
    eventTable(db, 'groups_data', `
  task_id String,
  task_family String,
  environment String,
  task_params_json String,
  split Enum8('train' = 1, 'eval' = 2),
  group_size UInt32,
  temperature Float64,
  top_p Float64,
  top_k Nullable(Int32),
  max_tokens UInt32,
  sampling_extra_json Nullable(String)`, 'run_id, group_id, event_id'),
    eventTable(db, 'group_completions_data', `
  status Enum8('complete' = 1, 'partial' = 2, 'aborted' = 3),
  episode_ids Array(String),
  duration_ms UInt64`, 'run_id, group_id, event_id'),
    eventTable(db, 'episode_starts_data', `
  episode_index UInt32,
  env_seed Nullable(Int64),
  env_instance_id Nullable(String)`, 'run_id, episode_id, event_id'),
    eventTable(db, 'episodes_data', `
  status Enum8('success' = 1, 'failure' = 2, 'timeout' = 3, 'error' = 4, 'interrupted' = 5),
  num_turns UInt32,
  prompt_tokens UInt64,
  completion_tokens UInt64,
  duration_ms UInt64,
  error_code Nullable(String),
  error_message Nullable(String),
  final_observation_sha256 Nullable(String)`, 'run_id, episode_id, event_id'),
    eventTable(db, 'turns_data', `
  turn_index UInt32,
  model String,
  prompt_tokens UInt32,
  completion_tokens UInt32,
  completion_token_ids Array(UInt32),
  completion_logprobs Array(Float32),
  logprob_sum Float64,
  token_policy_versions Array(UInt32),
  min_token_policy_version UInt32,
  prompt_format Enum8('text' = 1, 'messages_json' = 2, 'messages_delta_json' = 3),
  prompt String,
  completion_text String,
  action_type Nullable(String),
  action_args_json Nullable(String),
  action_parse_error Nullable(String),
  observation_sha256 Nullable(String),
  observation_uri Nullable(String),
  observation_media_type Nullable(String),
  latency_ms UInt32,
  env_latency_ms Nullable(UInt32),
  finish_reason String,
  request_id Nullable(String)`, 'run_id, episode_id, turn_index, event_id'),
    eventTable(db, 'rewards_data', `
  value Float64,
  component_names Array(String),
  component_values Array(Float64),
  source String,
  turn_index Nullable(UInt32)`, 'run_id, episode_id, event_id'),
    `CREATE TABLE IF NOT EXISTS ${db}.policy_versions_data (
  run_id String,
  version UInt32,
  parent_version Nullable(UInt32),
  base_model String,
  served_model_name String,
  adapter_uri String,
  adapter_checksum String,
  checkpoint_uri Nullable(String),
  training_step UInt64,
  metric_names Array(String),
  metric_values Array(Float64),
  created_at_ms UInt64,
  created_date Date,${PROVENANCE}
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(created_date) ORDER BY (run_id, version)`,
    `CREATE TABLE IF NOT EXISTS ${db}.trainer_steps_data (
  run_id String,
  step UInt64,
  timestamp_ms UInt64,
  event_date Date,
  policy_version UInt32,
  loss Float64,
  kl_ref Nullable(Float64),
  entropy Nullable(Float64),
  clip_fraction Float64,
  importance_weight_mean Float64,
  importance_weight_max Float64,
  behavior_logprob_abs_diff_mean Float64,
  behavior_logprob_abs_diff_max Float64,
  behavior_kl Float64,
  grad_norm Float64,
  learning_rate Float64,
  tokens_per_second Float64,
  step_time_ms Float64,
  num_tokens UInt64,
  num_sequences UInt32,
  num_groups UInt32,
  reward_mean Float64,
  reward_std Float64,
  staleness_versions_behind Array(UInt32),
  staleness_groups Array(UInt32),
  staleness_tokens Array(UInt64),
  dropped_reasons Array(String),
  dropped_counts Array(UInt64),
  extra_names Array(String),
  extra_values Array(Float64),${PROVENANCE}
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(event_date) ORDER BY (run_id, step)`,
    // next_offset is the first offset of (topic, partition) not yet stored; the highest wins.
    `CREATE TABLE IF NOT EXISTS ${db}.sink_offsets (
  topic String,
  partition UInt32,
  next_offset UInt64,
  updated_at DateTime
) ENGINE = ReplacingMergeTree(next_offset) ORDER BY (topic, partition)`,
    ...['events', 'groups', 'group_completions', 'episode_starts', 'episodes', 'turns', 'rewards', 'policy_versions', 'trainer_steps'].map((v) => finalView(db, v)),
    // One row per run: what the log holds for it.
    `CREATE VIEW IF NOT EXISTS ${db}.runs AS
SELECT
  run_id,
  min(timestamp_ms) AS first_event_ms,
  max(timestamp_ms) AS last_event_ms,
  count() AS events,
  uniqExact(group_id) AS groups,
  countIf(kind = 'EpisodeFinished') AS episodes,
  countIf(kind = 'Turn') AS turns,
  min(policy_version) AS min_policy_version,
  max(policy_version) AS max_policy_version,
  uniqExact(producer_id) AS producers
FROM ${db}.events_data FINAL
GROUP BY run_id`,
    // episode_summary was created here, in a form current ClickHouse refuses (unaliased joined
    // subqueries); it is created by migration 002 now, which also replaces it in databases that
    // older code migrated. Nothing else here changed.
  ],
};
