/**
 * Shared pieces of the producer tests: read a topic back and decode it, group events, and start
 * one CPU policy server per test file.
 */
import type { TestContext } from 'node:test';
import type { Kafka } from 'kafkajs';
import { TrajstoreConfigSchema, type TrajstoreConfig, type TrajstoreConfigInput } from '../../src/config/index.js';
import { decodeTrajectoryEvent, payloadKind, type TrajectoryEvent } from '../../src/schemas/index.js';
import { testTopic, uniqueName } from '../support/services.js';

export interface ReadEvent {
  event: TrajectoryEvent;
  key: string;
  partition: number;
  offset: number;
}

/** Reads every message of `topic` (from the beginning) until `until` says enough or `timeoutMs` passes. */
export async function readTopic(kafka: Kafka, topic: string, until: (events: ReadEvent[]) => boolean, timeoutMs = 60_000): Promise<ReadEvent[]> {
  const consumer = kafka.consumer({ groupId: uniqueName('test-reader'), maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const events: ReadEvent[] = [];
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      events.push({ event: decodeTrajectoryEvent(message.value), key: message.key!.toString(), partition, offset: Number(message.offset) });
      if (until(events)) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  return events;
}

/** Events by group id, each list in log order. */
export function byGroup(events: ReadEvent[]): Map<string, ReadEvent[]> {
  const out = new Map<string, ReadEvent[]>();
  for (const e of events) {
    const list = out.get(e.event.group_id) ?? [];
    list.push(e);
    out.set(e.event.group_id, list);
  }
  for (const list of out.values()) list.sort((a, b) => a.offset - b.offset);
  return out;
}

export function countKind(events: ReadEvent[], kind: string): number {
  return events.filter((e) => payloadKind(e.event.payload) === kind).length;
}

/**
 * Checks one group's log: one partition, GroupStarted first and GroupCompleted last, and per
 * episode EpisodeStarted, Turns, optional Reward, EpisodeFinished with seq 0,1,2,... Returns the
 * problems (empty: fine), so a failing test says what broke.
 */
export function groupProblems(list: ReadEvent[]): string[] {
  const problems: string[] = [];
  if (new Set(list.map((e) => e.partition)).size !== 1) problems.push('events spread over partitions');
  if (list.some((e) => e.key !== list[0]!.event.group_id)) problems.push('a key is not the group id');
  const kinds = list.map((e) => payloadKind(e.event.payload));
  if (kinds[0] !== 'GroupStarted') problems.push(`first event is ${kinds[0]}`);
  if (kinds.at(-1) !== 'GroupCompleted') problems.push(`last event is ${kinds.at(-1)}`);
  const episodes = new Map<string, string[]>();
  const seqs = new Map<string, number[]>();
  for (const { event } of list) {
    const id = event.episode_id ?? '(group)';
    episodes.set(id, [...(episodes.get(id) ?? []), payloadKind(event.payload)]);
    seqs.set(id, [...(seqs.get(id) ?? []), event.seq]);
  }
  for (const [id, s] of seqs) if (s.some((v, i) => v !== i)) problems.push(`${id}: seq ${s.join(',')}`);
  for (const [id, ks] of episodes) {
    if (id === '(group)') continue;
    const shape = ks.join(' ');
    if (!/^EpisodeStarted( Turn)*( Reward)? EpisodeFinished$/.test(shape)) problems.push(`${id}: ${shape}`);
  }
  const completed = list.at(-1)?.event.payload;
  if (completed && 'GroupCompleted' in completed) {
    const ids = new Set(completed.GroupCompleted.episode_ids);
    for (const id of episodes.keys()) if (id !== '(group)' && !ids.has(id)) problems.push(`${id} missing from GroupCompleted`);
  }
  return problems;
}

/** A config for tests: tiny model, small groups, pacing off unless asked, the given topics and server. */
/** A rollout's own topics (removed after the test): trajectories, versions, metrics, dead letters. */
export async function rolloutTopics(t: TestContext, kafka: Kafka): Promise<Record<'trajectories' | 'policy_versions' | 'trainer_metrics' | 'dead_letter', string>> {
  return {
    trajectories: await testTopic(t, kafka, 'traj'),
    policy_versions: await testTopic(t, kafka, 'pv', 1),
    trainer_metrics: await testTopic(t, kafka, 'tm', 1),
    dead_letter: uniqueName('dlq'),
  };
}

export function testConfig(over: { topics: Record<string, string>; apiBase: string; rollout?: TrajstoreConfigInput['rollout']; inference?: TrajstoreConfigInput['inference']; training?: TrajstoreConfigInput['training']; runId?: string }): TrajstoreConfig {
  return TrajstoreConfigSchema.parse({
    run: { id: over.runId ?? uniqueName('run'), seed: 7 },
    model: { name: 'tiny' },
    training: { batch_size: 2, max_staleness: 1, ...over.training },
    rollout: { environment: 'text', num_rollouts: 3, max_turns: 3, concurrency: 3, max_tokens: 4, staleness_pacing: false, episode_timeout_s: 60, env_options: { families: ['copy_digit', 'guess'] }, ...over.rollout },
    inference: { backend: 'cpu', api_bases: [over.apiBase], request_timeout_s: 30, max_retries: 1, ...over.inference },
    kafka: { topics: over.topics },
  });
}
