/**
 * Realistic trajectory events for the sink's tests and bench: GRPO groups of G episodes, each
 * a few turns of a chat policy with real-sized token arrays, logprobs and text, an outcome
 * reward and a finish; deterministic from a seed.
 */
import { randomUUID } from 'node:crypto';
import { Partitioners, type Kafka } from 'kafkajs';
import {
  encodeTrajectoryEvent,
  newTrajectoryEvent,
  type EpisodeStatus,
  type TrajectoryEvent,
  type TrajectoryEventPayload,
} from '../../src/schemas/index.js';
import { mulberry32 as prng } from '../../src/util/random.js';

/** Seeded PRNG (mulberry32): the same data on every run. */
export { mulberry32 as prng } from '../../src/util/random.js';

export interface RunShape {
  runId: string;
  groups: number;
  groupSize: number;
  turns: number;
  promptTokens: number;
  completionTokens: number;
  seed: number;
  /** Policy version of group g (default: g / 2, floor). */
  versionOf?: (group: number) => number;
}

const STATUSES: EpisodeStatus[] = ['success', 'failure', 'timeout', 'error'];

/** The events of one run, each group's events in order (the order a producer writes them). */
export function syntheticRun(shape: RunShape): TrajectoryEvent[] {
  const rand = prng(shape.seed);
  const events: TrajectoryEvent[] = [];
  const t0 = Date.now();
  for (let g = 0; g < shape.groups; g++) {
    const groupId = `${shape.runId}-g${g}`;
    const version = shape.versionOf ? shape.versionOf(g) : Math.floor(g / 2);
    const base = { run_id: shape.runId, group_id: groupId, producer_id: 'worker-1@test', policy_version: version, purpose: 'train' as const, timestamp: t0 + g };
    const push = (payload: TrajectoryEventPayload, episode: string | null, seq: number) =>
      events.push(newTrajectoryEvent({ ...base, episode_id: episode, seq, payload, tags: { suite: 'sink' } }));
    push({
      GroupStarted: {
        task: { task_id: `task-${g % 3}`, task_family: g % 2 === 0 ? 'arith.add' : 'browser.fill_form', environment: 'text', params_json: `{"a":${g},"b":2}`, split: 'train' },
        group_size: shape.groupSize,
        sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: shape.completionTokens, extra_json: null },
      },
    }, null, 0);
    const episodeIds: string[] = [];
    for (let e = 0; e < shape.groupSize; e++) {
      const episodeId = `${groupId}-e${e}`;
      episodeIds.push(episodeId);
      let seq = 0;
      push({ EpisodeStarted: { episode_index: e, env_seed: g * 100 + e, env_instance_id: null } }, episodeId, seq++);
      for (let turn = 0; turn < shape.turns; turn++) push({ Turn: turnPayload(rand, turn, shape) }, episodeId, seq++);
      const status = STATUSES[Math.floor(rand() * STATUSES.length)]!;
      push({ Reward: { value: status === 'success' ? 1 : 0, components: { correct: status === 'success' ? 1 : 0 }, source: 'rule:exact_match', turn_index: null } }, episodeId, seq++);
      push({
        EpisodeFinished: {
          status,
          num_turns: shape.turns,
          prompt_tokens: shape.promptTokens * shape.turns,
          completion_tokens: shape.completionTokens * shape.turns,
          duration_ms: 1000 + e,
          error_code: status === 'error' ? 'TRAJ_E_ENV_CRASHED' : null,
          error_message: status === 'error' ? 'environment exited' : null,
          final_observation: null,
        },
      }, episodeId, seq++);
    }
    push({ GroupCompleted: { status: 'complete', episode_ids: episodeIds, duration_ms: 5000 } }, null, 1);
  }
  return events;
}

const WORDS = ['the', 'form', 'field', 'click', 'submit', 'name', 'email', 'button', 'answer', 'is', 'page', 'value'];

function text(rand: () => number, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[Math.floor(rand() * WORDS.length)]!);
  return out.join(' ');
}

/** A turn with the sizes of a real chat step: prompt stored as the messages added since the last turn. */
function turnPayload(rand: () => number, turnIndex: number, shape: RunShape) {
  const prompt = Array.from({ length: shape.promptTokens }, () => Math.floor(rand() * 151_000));
  const completion = Array.from({ length: shape.completionTokens }, () => Math.floor(rand() * 151_000));
  const logprobs = completion.map(() => Math.fround(-rand() * 3));
  return {
    turn_index: turnIndex,
    model: 'qwen3-0.6b-lora-v1',
    prompt_token_ids: prompt,
    completion_token_ids: completion,
    completion_logprobs: logprobs,
    token_policy_versions: null,
    prompt_format: 'messages_delta_json' as const,
    prompt: JSON.stringify([{ role: 'user', content: text(rand, Math.floor(shape.promptTokens / 4)) }]),
    completion_text: text(rand, Math.floor(shape.completionTokens * 0.8)),
    action: { type: 'click', args_json: `{"x":${Math.floor(rand() * 1280)},"y":${Math.floor(rand() * 800)}}` },
    action_parse_error: null,
    observation: null,
    latency_ms: 100 + Math.floor(rand() * 900),
    env_latency_ms: 20,
    finish_reason: 'stop',
    request_id: randomUUID(),
    prompt_images: [],
    image_processing: null,
  };
}

/** Produces events keyed by group id (as rollout producers do), in order, in chunks. */
export async function produceEvents(kafka: Kafka, topic: string, events: TrajectoryEvent[], chunk = 500): Promise<void> {
  const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    for (let i = 0; i < events.length; i += chunk) {
      await producer.send({ topic, acks: -1, messages: events.slice(i, i + chunk).map((e) => ({ key: e.group_id, value: encodeTrajectoryEvent(e) })) });
    }
  } finally {
    await producer.disconnect();
  }
}
