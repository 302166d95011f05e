/**
 * A run made for the API tests: trajectory events (text and browser groups, the browser turns
 * with real PNG screenshots in a blob store), published policy versions and trainer steps,
 * produced to this test's own topics and stored by a real sink into this test's own database.
 * Success grows with the policy version, so the charts have a shape a test can check.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { crc32, deflateSync } from 'node:zlib';
import type { ClickHouseClient } from '@clickhouse/client';
import { Partitioners, type Kafka } from 'kafkajs';
import { buildApi, type Api, type ApiSettings } from '../../src/api/server.js';
import { ApiSection, TrajstoreConfigSchema, type TrajstoreConfig } from '../../src/config/schema.js';
import type { SinkTopics } from '../../src/consumers/clickhouse-sink/sink.js';
import {
  encodePolicyVersion, encodeTrainerStepMetrics, encodeTrajectoryEvent, newTrajectoryEvent,
  type TrajectoryEvent, type TrajectoryEventPayload,
} from '../../src/schemas/index.js';
import { openBlobStore, type BlobStore, type StoredBlob } from '../../src/storage/blob-store.js';
import { count, logger, sinkTopics, startSink, waitFor } from '../sink/harness.js';
import { CLICKHOUSE_URL, KAFKA_BROKERS, testDatabase, testKafka, uniqueName } from '../support/services.js';

export const GROUPS = 8;
export const GROUP_SIZE = 4;
export const TURNS = 2;
/** Group g is sampled by version floor(g / 2): versions 0..3. */
export const versionOf = (g: number) => Math.floor(g / 2);
/** In a group of version v, episodes 0..v succeed: success rate (v + 1) / 4. */
export const succeeds = (version: number, episode: number) => episode <= version;
export const PUBLISHED_VERSIONS = 3;
/** Trainer steps 1..6, each with a staleness histogram; the sums the API must report. */
export const STEPS = 6;
export const EXPECTED_STALENESS = [
  { versions_behind: 0, groups: 12, tokens: 12_000 },
  { versions_behind: 1, groups: 3, tokens: 1_500 },
  { versions_behind: 2, groups: 1, tokens: 700 },
];

export interface TestRun {
  runId: string;
  kafka: Kafka;
  topics: SinkTopics;
  database: string;
  client: ClickHouseClient;
  blobsDir: string;
  blobs: BlobStore;
  screenshots: StoredBlob[];
  dir: string;
  /** Start of the run's events (ms); groups are a minute apart. */
  t0: number;
  /** How many trajectory events the run has. */
  events: number;
}

export async function makeTestRun(t: TestContext): Promise<TestRun> {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const { database, client } = await testDatabase(t);
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-api-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const blobsDir = join(dir, 'blobs');
  const blobs = openBlobStore(blobsDir);
  const runId = uniqueName('run');
  const t0 = Date.now() - GROUPS * 60_000;
  const screenshots = await Promise.all([0, 1, 2].map((i) => blobs.put(pagePng(i), 'image/png')));
  await startSink(t, kafka, topics, database);
  await produce(kafka, topics, runId, t0, screenshots);
  await waitFor('the sink to store the run', async () =>
    (await count(client, `SELECT count() AS n FROM ${database}.episodes WHERE run_id = '${runId}'`)) === GROUPS * GROUP_SIZE
    && (await count(client, `SELECT count() AS n FROM ${database}.policy_versions WHERE run_id = '${runId}'`)) === PUBLISHED_VERSIONS
    && (await count(client, `SELECT count() AS n FROM ${database}.trainer_steps WHERE run_id = '${runId}'`)) === STEPS
    && (await count(client, `SELECT count() AS n FROM ${database}.events WHERE run_id = '${runId}'`)) === runEvents(runId, t0, screenshots).length, 120_000);
  return { runId, kafka, topics, database, client, blobsDir, blobs, screenshots, dir, t0, events: runEvents(runId, t0, screenshots).length };
}

/** A config of this test's services, as a file would give it (model and api sections filled in). */
export function testConfig(run: TestRun, api: Partial<ApiSettings> = {}, modelPath?: string): TrajstoreConfig {
  return TrajstoreConfigSchema.parse({
    run: { id: run.runId },
    model: { name: 'test-model', path: modelPath, max_seq_length: 256, dtype: 'float32' },
    lora: { r: 4, alpha: 8, dropout: 0 },
    kafka: {
      brokers: KAFKA_BROKERS,
      partitions: 3,
      topics: { trajectories: run.topics.trajectories, policy_versions: run.topics.policyVersions, trainer_metrics: run.topics.trainerMetrics, dead_letter: run.topics.deadLetter },
    },
    clickhouse: { url: CLICKHOUSE_URL, database: run.database },
    storage: { blobs: run.blobsDir },
    training: { output_dir: join(run.dir, 'outputs'), batch_size: 2 },
    checkpoint: { dir: join(run.dir, 'checkpoints') },
    api: { ...ApiSection.parse({}), jobs_dir: join(run.dir, 'jobs'), ...api },
  });
}

/** The API over the test run, closed after the test. */
export async function testApi(
  t: TestContext, run: TestRun, api: Partial<ApiSettings> = {}, options: { withConfig?: boolean; modelPath?: string } = {},
): Promise<Api> {
  const config = testConfig(run, api, options.modelPath);
  const app = await buildApi({
    settings: config.api,
    clickhouse: run.client,
    database: run.database,
    kafka: run.kafka,
    topics: run.topics,
    blobs: run.blobs,
    blobsLocation: run.blobsDir,
    config: options.withConfig === false ? null : config,
    logger,
  });
  t.after(() => app.close());
  await app.ready();
  return app;
}

function runEvents(runId: string, t0: number, screenshots: StoredBlob[]): TrajectoryEvent[] {
  const events: TrajectoryEvent[] = [];
  for (let g = 0; g < GROUPS; g++) {
    const version = versionOf(g);
    const groupId = `${runId}-g${g}`;
    const browser = g % 2 === 1;
    const at = (ms: number) => t0 + g * 60_000 + ms;
    const base = { run_id: runId, group_id: groupId, producer_id: 'worker-1@api-test', policy_version: version, purpose: 'train' as const };
    const push = (payload: TrajectoryEventPayload, episode: string | null, seq: number, ms: number) =>
      events.push(newTrajectoryEvent({ ...base, episode_id: episode, seq, payload, timestamp: at(ms) }));
    push({
      GroupStarted: {
        task: { task_id: browser ? `click-button-${g}` : `add-${g}`, task_family: browser ? 'browser.click_button' : 'arith.add', environment: browser ? 'browser' : 'text', params_json: '{}', split: 'train' },
        group_size: GROUP_SIZE,
        sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: 64, extra_json: null },
      },
    }, null, 0, 0);
    const episodeIds: string[] = [];
    for (let e = 0; e < GROUP_SIZE; e++) {
      const episodeId = `${groupId}-e${e}`;
      episodeIds.push(episodeId);
      let seq = 0;
      push({ EpisodeStarted: { episode_index: e, env_seed: g * 100 + e, env_instance_id: null } }, episodeId, seq++, 1000 + e);
      for (let turn = 0; turn < TURNS; turn++) {
        const shot = screenshots[(g + e + turn) % screenshots.length]!;
        push({
          Turn: {
            turn_index: turn, model: `test-model-v${version}`, prompt_token_ids: [1, 2, 3, 4], completion_token_ids: [5, 6, 7], completion_logprobs: [-0.1, -0.2, -0.3],
            token_policy_versions: null, prompt_format: 'text', prompt: 'click the blue button',
            completion_text: browser ? `<action>{"type":"click","x":${40 + turn * 10},"y":60}</action>` : `the answer is ${g + 2}`,
            action: browser ? { type: 'click', args_json: `{"x":${40 + turn * 10},"y":60}` } : { type: 'answer', args_json: `{"text":"${g + 2}"}` },
            action_parse_error: null,
            observation: browser ? { sha256: shot.sha256, uri: shot.uri, media_type: 'image/png', byte_size: shot.byteSize, width: 160, height: 100 } : null,
            latency_ms: 120 + turn * 30, env_latency_ms: 15, finish_reason: 'stop', request_id: null, prompt_images: [], image_processing: null,
          },
        }, episodeId, seq++, 5000 + e * 1000 + turn * 400);
      }
      const ok = succeeds(version, e);
      push({ Reward: { value: ok ? 1 : 0, components: {}, source: 'env', turn_index: null } }, episodeId, seq++, 20_000 + e * 1000);
      push({
        EpisodeFinished: {
          status: ok ? 'success' : 'failure', num_turns: TURNS, prompt_tokens: 4 * TURNS, completion_tokens: 3 * TURNS, duration_ms: 19_000,
          error_code: null, error_message: null, final_observation: null,
        },
      }, episodeId, seq++, 20_000 + e * 1000 + 1);
    }
    push({ GroupCompleted: { status: 'complete', episode_ids: episodeIds, duration_ms: 25_000 } }, null, 1, 25_000);
  }
  return events;
}

async function produce(kafka: Kafka, topics: SinkTopics, runId: string, t0: number, screenshots: StoredBlob[]): Promise<void> {
  const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  try {
    const events = runEvents(runId, t0, screenshots);
    await producer.send({ topic: topics.trajectories, acks: -1, messages: events.map((e) => ({ key: e.group_id, value: encodeTrajectoryEvent(e) })) });
    await producer.send({
      topic: topics.policyVersions, acks: -1,
      messages: Array.from({ length: PUBLISHED_VERSIONS }, (_, i) => ({
        key: `${runId}:${i + 1}`,
        value: encodePolicyVersion({
          run_id: runId, version: i + 1, parent_version: i === 0 ? null : i, base_model: 'test-model', served_model_name: `${runId}-v${i + 1}`,
          adapter_uri: `file:///tmp/adapters/${runId}/v${i + 1}`, adapter_checksum: `sha256:${'ab'.repeat(32)}`, checkpoint_uri: null,
          training_step: (i + 1) * 2, metrics: { loss: 0.5 - i * 0.1 }, created_at: t0 + (i + 1) * 120_000,
        }),
      })),
    });
    await producer.send({
      topic: topics.trainerMetrics, acks: -1,
      messages: Array.from({ length: STEPS }, (_, i) => ({ key: runId, value: encodeTrainerStepMetrics(trainerStep(runId, i + 1, t0)) })),
    });
  } finally {
    await producer.disconnect();
  }
}

function trainerStep(runId: string, step: number, t0: number) {
  const histogram = [{ versions_behind: 0, groups: 2, tokens: 2000 }];
  if (step % 2 === 1) histogram.push({ versions_behind: 1, groups: 1, tokens: 500 });
  if (step === 6) histogram.push({ versions_behind: 2, groups: 1, tokens: 700 });
  return {
    run_id: runId, step, timestamp: t0 + step * 60_000, policy_version: Math.floor(step / 2), loss: 1 / step, kl_ref: null, entropy: null,
    clip_fraction: 0.01, importance_weight_mean: 1, importance_weight_max: 1.2, behavior_logprob_abs_diff_mean: 0.001, behavior_logprob_abs_diff_max: 0.01,
    behavior_kl: 0.0001, grad_norm: 0.5, learning_rate: 1e-5, tokens_per_second: 1000 + step, step_time_ms: 100, num_tokens: 2000, num_sequences: 8,
    num_groups: 2, reward_mean: 0.5, reward_std: 0.3, staleness_histogram: histogram, groups_dropped: {}, extra: {},
  };
}

/** Processes whose process group is `pgid` (Linux /proc), to see a job's engine and its end. */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the parenthesised command: state, ppid, pgrp, ...
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid && fields[0] !== 'Z') out.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

/**
 * A small real PNG that looks like a task page: a light page, a header bar and a blue button
 * whose position depends on `variant`. Encoded by hand (zlib + CRC) to need no image library.
 */
export function pagePng(variant: number, width = 160, height = 100): Buffer {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0;
    for (let x = 0; x < width; x++) {
      let rgb = [246, 247, 250];
      if (y < 14) rgb = [40, 48, 66];
      const bx = 20 + variant * 40;
      if (x >= bx && x < bx + 44 && y >= 50 && y < 68) rgb = [55, 99, 214];
      raw.set(rgb, y * (width * 3 + 1) + 1 + x * 3);
    }
  }
  const chunk = (type: string, data: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', header), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}
