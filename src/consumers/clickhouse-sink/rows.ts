import {
  payloadKind,
  type PolicyVersion,
  type TrainerStepMetrics,
  type TrajectoryEvent,
} from '../../schemas/index.js';

/**
 * Decoded messages to ClickHouse rows (JSONEachRow objects), one function per table. The
 * column sets are those of migration 001 (src/clickhouse/migrations/001_initial.ts); an insert
 * with a column the table lacks fails, so the tests pin the two together.
 */

export type Row = Record<string, unknown>;

/** The storage tables the sink writes, in the order rows are grouped. */
export const DATA_TABLES = [
  'events_data',
  'groups_data',
  'group_completions_data',
  'episode_starts_data',
  'episodes_data',
  'turns_data',
  'rewards_data',
  'policy_versions_data',
  'trainer_steps_data',
] as const;
export type DataTable = (typeof DATA_TABLES)[number];

/** Where a message came from, stamped on every row. */
export interface Provenance {
  topic: string;
  partition: number;
  offset: string;
  ingestedAtMs: number;
}

/** Rows of one message, by table. */
export type MessageRows = Array<[DataTable, Row]>;

function dateOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

function provenance(p: Provenance): Row {
  return { kafka_partition: p.partition, kafka_offset: p.offset, ingested_at_ms: p.ingestedAtMs };
}

function envelope(e: TrajectoryEvent): Row {
  return {
    event_id: e.event_id,
    run_id: e.run_id,
    group_id: e.group_id,
    episode_id: e.episode_id ?? '',
    seq: e.seq,
    timestamp_ms: e.timestamp,
    event_date: dateOf(e.timestamp),
    policy_version: e.policy_version,
    purpose: e.purpose,
  };
}

/** A trajectory event: one row in `events_data` and one in the table of its payload kind. */
export function trajectoryRows(e: TrajectoryEvent, p: Provenance): MessageRows {
  const base = { ...envelope(e), ...provenance(p) };
  const tagKeys = Object.keys(e.tags);
  const rows: MessageRows = [[
    'events_data',
    {
      ...base,
      producer_id: e.producer_id,
      schema_version: e.schema_version,
      kind: payloadKind(e.payload),
      trace_id: e.trace_id ?? '',
      tag_keys: tagKeys,
      tag_values: tagKeys.map((k) => e.tags[k]),
      kafka_topic: p.topic,
    },
  ]];
  const payload = e.payload;
  if ('GroupStarted' in payload) {
    const { task, sampling, group_size } = payload.GroupStarted;
    rows.push(['groups_data', {
      ...base,
      task_id: task.task_id,
      task_family: task.task_family,
      environment: task.environment,
      task_params_json: task.params_json,
      split: task.split,
      group_size,
      temperature: sampling.temperature,
      top_p: sampling.top_p,
      top_k: sampling.top_k,
      max_tokens: sampling.max_tokens,
      sampling_extra_json: sampling.extra_json,
    }]);
  } else if ('GroupCompleted' in payload) {
    const g = payload.GroupCompleted;
    rows.push(['group_completions_data', { ...base, status: g.status, episode_ids: g.episode_ids, duration_ms: g.duration_ms }]);
  } else if ('EpisodeStarted' in payload) {
    const s = payload.EpisodeStarted;
    rows.push(['episode_starts_data', { ...base, episode_index: s.episode_index, env_seed: s.env_seed, env_instance_id: s.env_instance_id }]);
  } else if ('EpisodeFinished' in payload) {
    const f = payload.EpisodeFinished;
    rows.push(['episodes_data', {
      ...base,
      status: f.status,
      num_turns: f.num_turns,
      prompt_tokens: f.prompt_tokens,
      completion_tokens: f.completion_tokens,
      duration_ms: f.duration_ms,
      error_code: f.error_code,
      error_message: f.error_message,
      final_observation_sha256: f.final_observation?.sha256 ?? null,
    }]);
  } else if ('Turn' in payload) {
    rows.push(['turns_data', { ...base, ...turnColumns(payload.Turn, e.policy_version) }]);
  } else {
    const r = payload.Reward;
    const names = Object.keys(r.components);
    rows.push(['rewards_data', {
      ...base,
      value: r.value,
      component_names: names,
      component_values: names.map((n) => r.components[n]),
      source: r.source,
      turn_index: r.turn_index,
    }]);
  }
  return rows;
}

type TurnPayload = Extract<TrajectoryEvent['payload'], { Turn: unknown }>['Turn'];

/**
 * Turn columns. Prompt token ids stay in Kafka: the prompt grows with every turn of an episode,
 * so storing them again per turn is quadratic, and SQL questions need their count, not the ids.
 */
function turnColumns(t: TurnPayload, policyVersion: number): Row {
  let logprobSum = 0;
  for (const lp of t.completion_logprobs) logprobSum += lp;
  const versions = t.token_policy_versions ?? [];
  return {
    turn_index: t.turn_index,
    model: t.model,
    prompt_tokens: t.prompt_token_ids.length,
    completion_tokens: t.completion_token_ids.length,
    completion_token_ids: t.completion_token_ids,
    completion_logprobs: t.completion_logprobs,
    logprob_sum: logprobSum,
    token_policy_versions: versions,
    min_token_policy_version: versions.length > 0 ? Math.min(...versions) : policyVersion,
    prompt_format: t.prompt_format,
    prompt: t.prompt,
    completion_text: t.completion_text,
    action_type: t.action?.type ?? null,
    action_args_json: t.action?.args_json ?? null,
    action_parse_error: t.action_parse_error,
    observation_sha256: t.observation?.sha256 ?? null,
    observation_uri: t.observation?.uri ?? null,
    observation_media_type: t.observation?.media_type ?? null,
    latency_ms: t.latency_ms,
    env_latency_ms: t.env_latency_ms,
    finish_reason: t.finish_reason,
    request_id: t.request_id,
  };
}

export function policyVersionRows(v: PolicyVersion, p: Provenance): MessageRows {
  const names = Object.keys(v.metrics);
  return [['policy_versions_data', {
    run_id: v.run_id,
    version: v.version,
    parent_version: v.parent_version,
    base_model: v.base_model,
    served_model_name: v.served_model_name,
    adapter_uri: v.adapter_uri,
    adapter_checksum: v.adapter_checksum,
    checkpoint_uri: v.checkpoint_uri,
    training_step: v.training_step,
    metric_names: names,
    metric_values: names.map((n) => v.metrics[n]),
    created_at_ms: v.created_at,
    created_date: dateOf(v.created_at),
    ...provenance(p),
  }]];
}

export function trainerStepRows(m: TrainerStepMetrics, p: Provenance): MessageRows {
  const dropped = Object.keys(m.groups_dropped);
  const extra = Object.keys(m.extra);
  return [['trainer_steps_data', {
    run_id: m.run_id,
    step: m.step,
    timestamp_ms: m.timestamp,
    event_date: dateOf(m.timestamp),
    policy_version: m.policy_version,
    loss: m.loss,
    kl_ref: m.kl_ref,
    entropy: m.entropy,
    clip_fraction: m.clip_fraction,
    importance_weight_mean: m.importance_weight_mean,
    importance_weight_max: m.importance_weight_max,
    behavior_logprob_abs_diff_mean: m.behavior_logprob_abs_diff_mean,
    behavior_logprob_abs_diff_max: m.behavior_logprob_abs_diff_max,
    behavior_kl: m.behavior_kl,
    grad_norm: m.grad_norm,
    learning_rate: m.learning_rate,
    tokens_per_second: m.tokens_per_second,
    step_time_ms: m.step_time_ms,
    num_tokens: m.num_tokens,
    num_sequences: m.num_sequences,
    num_groups: m.num_groups,
    reward_mean: m.reward_mean,
    reward_std: m.reward_std,
    staleness_versions_behind: m.staleness_histogram.map((b) => b.versions_behind),
    staleness_groups: m.staleness_histogram.map((b) => b.groups),
    staleness_tokens: m.staleness_histogram.map((b) => b.tokens),
    dropped_reasons: dropped,
    dropped_counts: dropped.map((r) => m.groups_dropped[r]),
    extra_names: extra,
    extra_values: extra.map((n) => m.extra[n]),
    ...provenance(p),
  }]];
}
