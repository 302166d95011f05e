/**
 * Synthetic trajectory groups for the trainer's tests: valid events (the encoder checks them),
 * token ids inside the tiny model's vocabulary, behavior logprobs <= 0, rewards that differ
 * within a group unless a test asks otherwise. Seeded, so a test's log is the same every run.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { Kafka } from 'kafkajs';
import { parseConfig, type TrajstoreConfig } from '../../src/config/index.js';
import { ensureTopics } from '../../src/kafka/client.js';
import { topicSpecs } from '../../src/kafka/topics.js';
import { encodeTrajectoryEvent, newTrajectoryEvent, type EpisodeStatus, type ImageProcessing, type PromptImage, type TrajectoryEvent, type TrajectoryEventPayload } from '../../src/schemas/index.js';
import { imageTokenCount } from '../../src/consumers/trainer/image-tokens.js';
import type { AssembledGroup } from '../../src/consumers/trainer/types.js';
import { KAFKA_BROKERS, uniqueName } from '../support/services.js';

export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

export interface GroupSpec {
  runId: string;
  groupId?: string;
  size?: number;
  /** Per episode; default: 0, 1, 0, 1, ... (never all equal). */
  rewards?: number[];
  statuses?: EpisodeStatus[];
  policyVersion?: number;
  /** Leave out GroupCompleted (a producer that died). */
  incomplete?: boolean;
  purpose?: 'train' | 'eval';
  promptLen?: number;
  completionLen?: number;
  /** Smallest token id used (ids are base .. base+119); past the vocabulary makes an invalid batch. */
  tokenBase?: number;
  seed?: number;
  /** Timestamp of the group's first event (ms); the i-th event gets startMs + i. Default: now. */
  startMs?: number;
}

/** The events of one group, in the order a producer writes them. */
export function groupEvents(spec: GroupSpec): TrajectoryEvent[] {
  const rand = prng(spec.seed ?? 1);
  const gid = spec.groupId ?? randomUUID();
  const size = spec.size ?? 2;
  const version = spec.policyVersion ?? 0;
  const purpose = spec.purpose ?? 'train';
  const base = { run_id: spec.runId, group_id: gid, producer_id: 'test-producer', policy_version: version, purpose } as const;
  let n = 0;
  const ev = (payload: TrajectoryEventPayload, episode_id: string | null, seq: number) =>
    newTrajectoryEvent({ ...base, episode_id, seq, payload, ...(spec.startMs === undefined ? {} : { timestamp: spec.startMs + n++ }) });
  const out: TrajectoryEvent[] = [
    ev({ GroupStarted: { task: { task_id: `task-${gid.slice(0, 8)}`, task_family: 'test', environment: 'text', params_json: '{}', split: 'train' }, group_size: size,
      sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: 8, extra_json: null } } }, null, 0),
  ];
  const ids: string[] = [];
  const base0 = spec.tokenBase ?? 3;
  const prompt = Array.from({ length: spec.promptLen ?? 6 }, () => base0 + Math.floor(rand() * 120));
  for (let i = 0; i < size; i++) {
    const eid = randomUUID();
    ids.push(eid);
    const completion = Array.from({ length: spec.completionLen ?? 4 }, () => base0 + Math.floor(rand() * 120));
    out.push(ev({ EpisodeStarted: { episode_index: i, env_seed: i, env_instance_id: null } }, eid, 0));
    out.push(ev({ Turn: { turn_index: 0, model: 'tiny', prompt_token_ids: prompt, completion_token_ids: completion,
      completion_logprobs: completion.map(() => -Math.fround(1 + rand() * 4)), token_policy_versions: null, prompt_format: 'text', prompt: 'p', completion_text: 'c',
      action: null, action_parse_error: null, observation: null, latency_ms: 1, env_latency_ms: null, finish_reason: 'length', request_id: null, prompt_images: [], image_processing: null } }, eid, 1));
    out.push(ev({ Reward: { value: spec.rewards?.[i] ?? i % 2, components: {}, source: 'env', turn_index: null } }, eid, 2));
    out.push(ev({ EpisodeFinished: { status: spec.statuses?.[i] ?? 'success', num_turns: 1, prompt_tokens: prompt.length, completion_tokens: completion.length,
      duration_ms: 1, error_code: null, error_message: null, final_observation: null } }, eid, 3));
  }
  if (!spec.incomplete) out.push(ev({ GroupCompleted: { status: 'complete', episode_ids: ids, duration_ms: 5 } }, null, 1));
  return out;
}

/** A vision model's special token ids (its config.json: image_token_id, vision_start_token_id, vision_end_token_id). */
export interface VisionTokenIds { image: number; start: number; end: number }

/** The vision token ids of a Qwen2-VL/Qwen3-VL-style model directory. */
export function visionTokenIds(modelDir: string): VisionTokenIds {
  const config = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { image_token_id: number; vision_start_token_id: number; vision_end_token_id: number };
  return { image: config.image_token_id, start: config.vision_start_token_id, end: config.vision_end_token_id };
}

/** The tiny VL model's processor settings (engine/trajstore_engine/tiny_vl.py: 4..64 tokens an image). */
export const TINY_VL_IMAGE_PROCESSING: ImageProcessing = {
  processor: 'Qwen2VLImageProcessor', processor_version: 'transformers 5.17.0',
  min_pixels: 4096, max_pixels: 65_536, patch_size: 16, merge_size: 2, temporal_patch_size: 2,
};

/** The prompt image a stored PNG is cited as (size from its IHDR). */
export function pngPromptImage(png: Buffer, sha256: string): PromptImage {
  return { sha256, media_type: 'image/png', byte_size: png.length, width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}

export interface VisionGroupOptions {
  /** Image settings recorded on every Turn (and used to count the pads). Default: the tiny VL model's. */
  settings?: ImageProcessing;
  /** Episode i's reward; default i (never all equal). */
  rewards?: number[];
  /** Episode 1's images get the right number of pads, but each in two runs (only the engine can tell). */
  splitPads?: boolean;
}

/**
 * A vision group as a Qwen3-VL-serving producer writes it: one episode per entry of `shots`,
 * one Turn per screenshot, every screenshot kept in the history (each prompt extends the
 * previous prompt + completion, so an episode is one training sequence), each image rendered
 * `<|vision_start|>` + one pad per merged patch (smart_resize at `settings`) + `<|vision_end|>`.
 */
export function visionGroupEvents(runId: string, groupId: string, shots: PromptImage[][], ids: VisionTokenIds, opts: VisionGroupOptions = {}): TrajectoryEvent[] {
  const settings = opts.settings ?? TINY_VL_IMAGE_PROCESSING;
  const base = { run_id: runId, group_id: groupId, producer_id: 'p', policy_version: 0, purpose: 'train' } as const;
  const ev = (payload: TrajectoryEventPayload, episode_id: string | null, seq: number) => newTrajectoryEvent({ ...base, episode_id, seq, payload });
  const out = [ev({ GroupStarted: { task: { task_id: 't', task_family: 'f', environment: 'gbox', params_json: '{}', split: 'train' }, group_size: shots.length,
    sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: 8, extra_json: null } } }, null, 0)];
  const episodeIds = shots.map((_, i) => `${groupId}-e${i}`);
  shots.forEach((episodeShots, i) => {
    const eid = episodeIds[i]!;
    out.push(ev({ EpisodeStarted: { episode_index: i, env_seed: i, env_instance_id: null } }, eid, 0));
    let prompt = [20, 21, 22];
    let seq = 1;
    episodeShots.forEach((img, k) => {
      const n = imageTokenCount(img.height, img.width, settings);
      const run = opts.splitPads && i === 1
        ? [ids.start, ...Array(n - 1).fill(ids.image), ids.end, ids.start, ids.image, ids.end]
        : [ids.start, ...Array(n).fill(ids.image), ids.end];
      prompt = [...prompt, 23 + k, ...run, 30, 31];
      const completion = [40 + i, 41 + k, 42];
      out.push(ev({ Turn: { turn_index: k, model: 'tiny-vl', prompt_token_ids: prompt, completion_token_ids: completion, completion_logprobs: [-1.5, -2, -0.75],
        token_policy_versions: null, prompt_format: 'messages_json', prompt: '[]', completion_text: 'x', action: null, action_parse_error: 'none', observation: null,
        latency_ms: 1, env_latency_ms: null, finish_reason: 'stop', request_id: null, prompt_images: episodeShots.slice(0, k + 1), image_processing: settings } }, eid, seq++));
      prompt = [...prompt, ...completion];
    });
    out.push(ev({ Reward: { value: opts.rewards?.[i] ?? i, components: {}, source: 'env', turn_index: null } }, eid, seq++));
    out.push(ev({ EpisodeFinished: { status: 'success', num_turns: episodeShots.length, prompt_tokens: 1, completion_tokens: 1, duration_ms: 1, error_code: null, error_message: null, final_observation: null } }, eid, seq++));
  });
  out.push(ev({ GroupCompleted: { status: 'complete', episode_ids: episodeIds, duration_ms: 1 } }, null, 1));
  return out;
}

/** Writes groups' events to a topic keyed by group id; groups interleave when `interleave` (as concurrent producers do). */
export async function produceGroups(kafka: Kafka, topic: string, groups: TrajectoryEvent[][], interleave = false): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    const order: TrajectoryEvent[] = [];
    if (interleave) {
      const cursors = groups.map(() => 0);
      let left = groups.reduce((n, g) => n + g.length, 0);
      for (let i = 0; left > 0; i++) {
        const g = i % groups.length;
        // An uneven number of events per visit: groups overlap in varied ways.
        for (let k = 0; k < 1 + (g % 3) && cursors[g]! < groups[g]!.length; k++) {
          order.push(groups[g]![cursors[g]!++]!);
          left--;
        }
      }
    } else for (const g of groups) order.push(...g);
    for (let i = 0; i < order.length; i += 500) {
      await producer.send({ topic, messages: order.slice(i, i + 500).map((e) => ({ key: e.group_id, value: encodeTrajectoryEvent(e) })) });
    }
  } finally {
    await producer.disconnect();
  }
}

/** Reads `topic` from the beginning, decoding each message, until `want` is satisfied (fails after 30 s). */
export async function readMessages<T>(kafka: Kafka, topic: string, decode: (b: Buffer) => T, want: (items: T[]) => boolean): Promise<T[]> {
  const consumer = kafka.consumer({ groupId: uniqueName('read') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const items: T[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out reading ${topic}: ${items.length} items`)), 30_000);
      void consumer.run({ eachMessage: async ({ message }) => {
        items.push(decode(message.value!));
        if (want(items)) {
          clearTimeout(timer);
          resolve();
        }
      } });
    });
  } finally {
    await consumer.disconnect();
  }
  return items;
}

/** Folds a group's events into the assembler's shape without Kafka (pure unit tests). */
export function positions(events: TrajectoryEvent[], partition = 0, start = 0): Array<{ event: TrajectoryEvent; pos: { partition: number; offset: number } }> {
  return events.map((event, i) => ({ event, pos: { partition, offset: start + i } }));
}

export type { AssembledGroup };

/** A config for a test run: tiny model, its own topics and directories. */
export interface TestConfigOptions { runId: string; topic: string; dir: string; modelDir: string; apiBases?: string[] }

export function testConfig(opts: TestConfigOptions): TrajstoreConfig {
  return parseConfig(testConfigYaml(opts), 'test', {});
}

export function testConfigYaml(opts: TestConfigOptions): string {
  return `
run: { id: ${opts.runId}, seed: 0 }
model: { name: tiny, path: ${opts.modelDir}, max_seq_length: 256, dtype: float32 }
lora: { r: 4, alpha: 8, dropout: 0.0 }
training:
  learning_rate: 1.0e-2
  batch_size: 2
  max_tokens_per_microbatch: 4096
  max_steps: 1000
  max_staleness: 2
  publish_every_steps: 1000
  group_timeout_s: 5
  output_dir: ${opts.dir}/out
checkpoint: { dir: ${opts.dir}/checkpoints, save_every_steps: 1, keep_last: 2 }
inference: { backend: cpu, api_bases: [${(opts.apiBases ?? ['http://127.0.0.1:9/v1']).join(', ')}], request_timeout_s: 10, max_loaded_adapters: 2 }
kafka:
  brokers: [${KAFKA_BROKERS.join(', ')}]
  topics: { trajectories: ${opts.topic}, policy_versions: ${opts.topic}.versions, trainer_metrics: ${opts.topic}.metrics, dead_letter: ${opts.topic}.dlq }
  partitions: 3
storage: { adapters: ${opts.dir}/adapters }
`;
}

/** Creates a run's topics (trajectories, versions, metrics, dead letters) for one test, deleted after it. */
export async function runTopics(t: TestContext, kafka: Kafka, config: TrajstoreConfig): Promise<void> {
  await ensureTopics(kafka, topicSpecs(config));
  t.after(() => deleteRunTopics(kafka, config));
}

export async function deleteRunTopics(kafka: Kafka, config: TrajstoreConfig): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  await admin.deleteTopics({ topics: topicSpecs(config).map((s) => s.topic) }).catch(() => undefined);
  await admin.disconnect();
}
