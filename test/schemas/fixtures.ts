/**
 * Sample values of every event type, typed with the generated TypeScript types: if the types
 * and the schemas ever disagree, either this file stops compiling or the round-trip tests fail.
 */
import {
  LATEST_VERSIONS,
  type DeadLetter,
  type ImageProcessing,
  type ObservationRef,
  type PolicyVersion,
  type TrainerStepMetrics,
  type TrajectoryEvent,
  type TrajectoryEventPayload,
} from '../../src/schemas/index.js';

/** Seeded PRNG (mulberry32): the same data on every run. */
export { mulberry32 as prng } from '../../src/util/random.js';

const observation: ObservationRef = {
  sha256: 'a'.repeat(64),
  uri: 'file:///var/lib/trajstore/blobs/aa/aaaa.png',
  media_type: 'image/png',
  byte_size: 183_422,
  width: 1280,
  height: 800,
};

/** Qwen3-VL's image settings (its preprocessor_config.json), as a vLLM server records them. */
export const qwen3VlProcessing: ImageProcessing = {
  processor: 'Qwen2VLImageProcessorFast',
  processor_version: 'vLLM 0.11.0',
  min_pixels: 65_536,
  max_pixels: 16_777_216,
  patch_size: 16,
  merge_size: 2,
  temporal_patch_size: 2,
};

export function envelope(payload: TrajectoryEventPayload, overrides: Partial<TrajectoryEvent> = {}): TrajectoryEvent {
  const groupLevel = 'GroupStarted' in payload || 'GroupCompleted' in payload;
  return {
    event_id: '0b7a4c8e-5f7e-4f3e-9c1a-2d6b8e9f0a1b',
    run_id: 'run-2025-11-23-a',
    group_id: 'grp-000042',
    episode_id: groupLevel ? null : 'ep-000042-3',
    seq: 2,
    timestamp: 1_763_900_000_123,
    producer_id: 'rollout-worker-7@host-3',
    schema_version: LATEST_VERSIONS.trajectory_event,
    policy_version: 12,
    purpose: 'train',
    trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
    tags: { experiment: 'lr-sweep', pool: 'a100' },
    payload,
    ...overrides,
  };
}

export const groupStarted = envelope({
  GroupStarted: {
    task: {
      task_id: 'fill-form-017',
      task_family: 'browser.fill_form',
      environment: 'browser',
      params_json: JSON.stringify({ url: 'http://127.0.0.1:8080/tasks/form?id=17', max_turns: 15 }),
      split: 'train',
    },
    group_size: 8,
    sampling: { temperature: 1.0, top_p: 0.95, top_k: null, max_tokens: 512, extra_json: '{"stop":["</action>"]}' },
  },
});

export const episodeStarted = envelope({ EpisodeStarted: { episode_index: 3, env_seed: 1234567, env_instance_id: 'ctx-19' } }, { seq: 0 });

export const turn = envelope({
  Turn: {
    turn_index: 1,
    model: 'run-2025-11-23-a-v12',
    prompt_token_ids: [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198],
    completion_token_ids: [27, 1311, 29, 3678, 2],
    completion_logprobs: [-0.01171875, -0.5, -1.25, -0.0009765625, -3.5],
    token_policy_versions: null,
    prompt_format: 'messages_delta_json',
    prompt: JSON.stringify([{ role: 'user', content: [{ type: 'image_ref', sha256: 'a'.repeat(64) }, { type: 'text', text: 'Fill in the form — ünïcödé ✓' }] }]),
    completion_text: '<action>{"type":"click","x":412,"y":233}</action>',
    action: { type: 'click', args_json: '{"x":412,"y":233}' },
    action_parse_error: null,
    observation,
    latency_ms: 842,
    env_latency_ms: 120,
    finish_reason: 'stop',
    request_id: 'cmpl-8a7b6c',
    prompt_images: [{ sha256: 'a'.repeat(64), media_type: 'image/png', byte_size: 183_422, width: 1280, height: 800 }],
    image_processing: qwen3VlProcessing,
  },
});

export const turnUnparsed = envelope({
  Turn: {
    turn_index: 2,
    model: 'Qwen/Qwen3-0.6B',
    prompt_token_ids: [1, 2, 3],
    completion_token_ids: [],
    completion_logprobs: [],
    token_policy_versions: [],
    prompt_format: 'text',
    prompt: '',
    completion_text: '',
    action: null,
    action_parse_error: 'no <action> tag in the completion',
    observation: null,
    latency_ms: 0,
    env_latency_ms: null,
    finish_reason: 'length',
    request_id: null,
    prompt_images: [],
    image_processing: null,
  },
}, { purpose: 'eval', trace_id: null, tags: {}, policy_version: 0 });

export const reward = envelope({ Reward: { value: 0.75, components: { correct: 1, format: -0.25 }, source: 'rule:form_match', turn_index: null } }, { seq: 5 });

export const episodeFinished = envelope(
  {
    EpisodeFinished: {
      status: 'timeout',
      num_turns: 15,
      prompt_tokens: 48_213,
      completion_tokens: 3_811,
      duration_ms: 95_311,
      error_code: null,
      error_message: null,
      final_observation: observation,
    },
  },
  { seq: 6 },
);

export const groupCompleted = envelope(
  { GroupCompleted: { status: 'partial', episode_ids: ['ep-000042-0', 'ep-000042-1', 'ep-000042-3'], duration_ms: 120_000 } },
  { seq: 1 },
);

export const allTrajectoryEvents: Record<string, TrajectoryEvent> = {
  groupStarted,
  episodeStarted,
  turn,
  turnUnparsed,
  reward,
  episodeFinished,
  groupCompleted,
};

export const policyVersion: PolicyVersion = {
  run_id: 'run-2025-11-23-a',
  version: 12,
  parent_version: 11,
  base_model: 'Qwen/Qwen3-0.6B',
  served_model_name: 'run-2025-11-23-a-v12',
  adapter_uri: 'file:///var/lib/trajstore/adapters/run-2025-11-23-a/v12',
  adapter_checksum: `sha256:${'0123456789abcdef'.repeat(4)}`,
  checkpoint_uri: null,
  training_step: 240,
  metrics: { loss: 0.0123, reward_mean: 0.61 },
  created_at: 1_763_900_100_000,
};

export const trainerStepMetrics: TrainerStepMetrics = {
  run_id: 'run-2025-11-23-a',
  step: 240,
  timestamp: 1_763_900_099_000,
  policy_version: 12,
  loss: 0.0123,
  kl_ref: null,
  entropy: 0.84,
  clip_fraction: 0.031,
  importance_weight_mean: 1.002,
  importance_weight_max: 1.87,
  behavior_logprob_abs_diff_mean: 0.0041,
  behavior_logprob_abs_diff_max: 0.61,
  behavior_kl: 0.00093,
  grad_norm: 0.42,
  learning_rate: 1e-5,
  tokens_per_second: 18_250.5,
  step_time_ms: 2_140.7,
  num_tokens: 39_040,
  num_sequences: 64,
  num_groups: 8,
  reward_mean: 0.61,
  reward_std: 0.33,
  staleness_histogram: [
    { versions_behind: 0, groups: 5, tokens: 24_000 },
    { versions_behind: 1, groups: 3, tokens: 15_040 },
  ],
  groups_dropped: { zero_variance: 4, stale: 1 },
  extra: {},
};

export const deadLetter: DeadLetter = {
  dead_letter_id: '9e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b',
  source_topic: 'trajectories',
  source_partition: 3,
  source_offset: 1_234_567,
  source_key: Buffer.from('grp-000042'),
  source_timestamp: 1_763_900_000_500,
  original_bytes: Buffer.from([0xc3, 0x01, 1, 2, 3]),
  original_byte_length: 5,
  original_sha256: 'b'.repeat(64),
  original_truncated: false,
  error_code: 'TRAJ_E_DECODE_TRUNCATED',
  reason: 'message ends inside the 10-byte single-object header',
  writer_fingerprint: null,
  schema_name: null,
  rejected_by: 'clickhouse-sink',
  rejected_at: 1_763_900_001_000,
};

/** Plain JSON-like copy (decoded records are avsc class instances; Buffers become hex). */
export function plain(value: unknown): unknown {
  return JSON.parse(
    JSON.stringify(value, (_k, v: unknown) => {
      if (v && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
        return `hex:${Buffer.from((v as { data: number[] }).data).toString('hex')}`;
      }
      return v;
    }),
  );
}
