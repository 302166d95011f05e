/**
 * Replay: a new run trained from another run's logged events. Two replays of the same range end
 * with the same adapter checksum (CPU, tiny model); stale groups are dropped as configured and
 * counted; a dry run reports what would be trained without training.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { decodeSafetensors } from '../../src/engine/batch-file.js';
import { replayConfig, runReplay } from '../../src/consumers/trainer/replay.js';
import { ensureEngineVenv, ensureTinyModel } from '../../src/inference/cpu-policy-server.js';
import { ensureTopics } from '../../src/kafka/client.js';
import { topicSpecs } from '../../src/kafka/topics.js';
import { decodeTrainerStepMetrics } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { topicWatermarks } from '../../src/consumers/trainer/source.js';
import { testKafka, uniqueName } from '../support/services.js';
import { deleteRunTopics, groupEvents, produceGroups, testConfig } from './fixtures.js';

const logger = createLogger('test-replay', { level: 'warn', pretty: false });

describe('replay', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-replay-'));
  const kafka = testKafka();
  const topic = uniqueName('trreplay');
  const source = uniqueName('src');
  let config: ReturnType<typeof testConfig>;

  before(async () => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyModel();
    config = testConfig({ runId: 'unused', topic, dir, modelDir });
    // One partition: the log's order is the order written here (staleness in a replay is
    // measured against the newest version seen so far in the log).
    config.kafka.partitions = 1;
    await ensureTopics(kafka, topicSpecs(config));
    // Source run: 6 fresh groups sampled by version 4, 2 sampled by version 0 (4 behind: past
    // max_staleness 2) after the first 4, one with equal rewards, and one of another run.
    const fresh = Array.from({ length: 6 }, (_, i) => groupEvents({ runId: source, seed: i + 1, policyVersion: 4, rewards: [i % 2, 2] }));
    const stale = Array.from({ length: 2 }, (_, i) => groupEvents({ runId: source, seed: 50 + i, policyVersion: 0 }));
    const equal = groupEvents({ runId: source, seed: 60, policyVersion: 4, rewards: [1, 1] });
    const other = groupEvents({ runId: 'someone-else', seed: 70 });
    await produceGroups(kafka, topic, fresh.slice(0, 4), true);
    await produceGroups(kafka, topic, [...stale, equal, other], true);
    await produceGroups(kafka, topic, fresh.slice(4), true);
    // Another source run: a group tokenized for another model (ids past the vocabulary) between two good ones.
    await produceGroups(kafka, topic, [
      groupEvents({ runId: `${source}-b`, seed: 80 }),
      groupEvents({ runId: `${source}-b`, seed: 81, tokenBase: 1_000_000 }),
      groupEvents({ runId: `${source}-b`, seed: 82 }),
    ]);
  });
  after(async () => {
    await deleteRunTopics(kafka, config);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a dry run reports groups, tokens, steps and staleness, counts stale and equal-reward drops, and trains nothing', async () => {
    const run = uniqueName('dry');
    const r = await runReplay({ config, sourceRunId: source, runId: run, dryRun: true, logger, progress: null });
    assert.equal(r.steps, 0);
    assert.deepEqual(r.plan, { groups: 6, tokens: 6 * 2 * 10, steps: 3, staleness: { '0': 6 } });
    assert.equal(r.totals.groups_dropped_stale, 2);
    assert.equal(r.totals.groups_dropped_equal_rewards, 1);
    assert.ok(!existsSync(replayConfig(config, run).checkpoint.dir), 'no checkpoint written');
  });

  it('a batch the engine refuses drops its groups as invalid_batch, counted, and training goes on', { timeout: 300_000 }, async () => {
    const c = { ...config, training: { ...config.training, batch_size: 1 } };
    const r = await runReplay({ config: c, sourceRunId: `${source}-b`, runId: uniqueName('inv'), logger, progress: null });
    assert.equal(r.steps, 2);
    assert.equal(r.totals.groups_trained, 2);
    assert.equal(r.totals.groups_dropped_invalid_batch, 1);
  });

  it('two replays of the same events end with the same adapter checksum, and the adapter was trained', { timeout: 600_000 }, async () => {
    const a = await runReplay({ config, sourceRunId: source, runId: uniqueName('ra'), logger, progress: null });
    const b = await runReplay({ config, sourceRunId: source, runId: uniqueName('rb'), logger, progress: null });
    assert.equal(a.steps, 3);
    assert.equal(b.steps, 3);
    assert.match(a.adapterChecksum ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.equal(a.adapterChecksum, b.adapterChecksum);
    assert.equal(a.totals.groups_dropped_stale, 2);
    // PEFT starts lora_B at zero: a non-zero lora_B means the steps changed the adapter.
    const { tensors } = decodeSafetensors(readFileSync(join(a.adapterDir!, 'adapter_model.safetensors')));
    const loraB = Object.entries(tensors).filter(([k]) => k.includes('lora_B'));
    assert.ok(loraB.length > 0);
    assert.ok(loraB.some(([, t]) => Array.from(t.data as Float32Array).some((x) => x !== 0)), 'lora_B moved away from zero');

    // One metrics event per step, with the stale drops counted where they happened.
    const consumer = kafka.consumer({ groupId: uniqueName('m') });
    await consumer.connect();
    await consumer.subscribe({ topic: config.kafka.topics.trainer_metrics, fromBeginning: true });
    const seen: Array<ReturnType<typeof decodeTrainerStepMetrics>> = [];
    await new Promise<void>((resolve) => {
      void consumer.run({ eachMessage: async ({ message }) => {
        const m = decodeTrainerStepMetrics(message.value!);
        if (m.run_id === a.runId) seen.push(m);
        if (seen.length === 3) resolve();
      } });
    });
    await consumer.disconnect();
    assert.deepEqual(seen.map((m) => m.step), [1, 2, 3]);
    assert.ok(seen.every((m) => m.num_groups === 2 && m.num_tokens === 40 && Number.isFinite(m.loss)));
    // The stale and equal-reward groups come between step 2's groups and step 3's: counted in step 3.
    assert.deepEqual(seen.map((m) => m.groups_dropped), [{}, {}, { stale: 2, equal_rewards: 1 }]);
    assert.deepEqual(JSON.parse(JSON.stringify(seen.map((m) => m.staleness_histogram))), Array(3).fill([{ versions_behind: 0, groups: 2, tokens: 40 }]));
  });
});

describe('replay of a run spread over partitions', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-replay-parts-'));
  const kafka = testKafka();
  const topic = uniqueName('trreplayp');
  const source = uniqueName('srcp');
  let config: ReturnType<typeof testConfig>;

  before(async () => {
    config = testConfig({ runId: 'unused', topic, dir, modelDir: join(dir, 'no-model') });
    config.kafka.partitions = 3;
    await ensureTopics(kafka, topicSpecs(config));
    // 12 groups, one a minute, each sampled by the version its trainer had then (0, 1, 2, ...):
    // never more than max_staleness (2) behind at its own time.
    const t0 = Date.now() - 3_600_000;
    const groups = Array.from({ length: 12 }, (_, i) => groupEvents({ runId: source, seed: i + 1, policyVersion: i, startMs: t0 + i * 60_000 }));
    await produceGroups(kafka, topic, groups);
  });
  after(async () => {
    await deleteRunTopics(kafka, config);
    rmSync(dir, { recursive: true, force: true });
  });

  it('groups are compared with the versions of their own time, not with the end of another partition', { timeout: 120_000 }, async () => {
    const partitionsUsed = [...(await topicWatermarks(kafka, topic)).values()].filter((m) => m.high > m.low);
    assert.ok(partitionsUsed.length >= 2, 'the groups spread over several partitions');
    for (const readers of [1, 3]) {
      const r = await runReplay({ config, sourceRunId: source, runId: uniqueName('parts'), dryRun: true, logger, progress: null, readers });
      assert.deepEqual(r.plan, { groups: 12, tokens: 12 * 2 * 10, steps: 6, staleness: { '0': 12 } }, `${readers} reader(s)`);
      assert.equal(r.totals.groups_dropped_stale, undefined);
    }
  });
});

