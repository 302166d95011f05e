/**
 * `trajstore replay --resume`: a replay killed with SIGKILL part-way and resumed trains every
 * group once and ends where an uninterrupted replay of the same range ends: same steps, same
 * drops, same adapter checksum. Each step leaves a group waiting for the next (token budget), so
 * every checkpoint has one pending; policy versions rise through the log, so staleness has to be
 * judged as the uninterrupted replay judged it.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { listCheckpoints, readTrainerState } from '../../src/consumers/trainer/checkpoints.js';
import { replayConfig, runReplay } from '../../src/consumers/trainer/replay.js';
import { ensureEngineVenv, ensureTinyModel } from '../../src/inference/cpu-policy-server.js';
import { ensureTopics } from '../../src/kafka/client.js';
import { topicSpecs } from '../../src/kafka/topics.js';
import { parseConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka, uniqueName } from '../support/services.js';
import { deleteRunTopics, groupEvents, produceGroups, testConfigYaml } from './fixtures.js';

const logger = createLogger('test-replay-resume', { level: 'warn', pretty: false });

/** Trained and dropped group ids in a run's ledger, with how often each was trained. */
function ledgerOf(outputDir: string): { trained: string[]; dropped: Record<string, string> } {
  const lines = readFileSync(join(outputDir, 'ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { trained: string[]; dropped: Record<string, string> });
  return { trained: lines.flatMap((l) => l.trained), dropped: Object.assign({}, ...lines.map((l) => l.dropped)) };
}

describe('replay --resume', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-replay-resume-'));
  const kafka = testKafka();
  const topic = uniqueName('trresume');
  const source = uniqueName('src');
  const configFile = join(dir, 'config.yaml');
  let config: ReturnType<typeof parseConfig>;

  before(async () => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyModel();
    const yaml = testConfigYaml({ runId: 'unused', topic, dir, modelDir })
      // 20 tokens a group: a step takes one of the two groups waiting and leaves the other.
      .replace('max_tokens_per_microbatch: 4096', 'max_tokens_per_microbatch: 4096\n  max_tokens_per_step: 30');
    writeFileSync(configFile, yaml);
    config = parseConfig(yaml, configFile, {});
    await ensureTopics(kafka, topicSpecs(config));
    // 16 groups over 3 partitions, written in these batches (a batch's groups interleave; later
    // batches have later timestamps): 12 sampled by versions rising from 0 to 3, two without
    // signal (equal rewards), and two sampled by version 0 but written alone after version 3's
    // (3 behind: past max_staleness 2).
    const fresh = Array.from({ length: 12 }, (_, i) => ({ seed: i + 1, policyVersion: Math.floor(i / 3), rewards: [i % 2, 2] }));
    const equal = [60, 61].map((seed, i) => ({ seed, policyVersion: i + 1, rewards: [1, 1] }));
    const late = [50, 51].map((seed) => ({ seed, policyVersion: 0 }));
    const batches = [fresh.slice(0, 3), [fresh[3]!, equal[0]!, fresh[4]!], fresh.slice(5, 8), [fresh[8]!, fresh[9]!, equal[1]!], [late[0]!], fresh.slice(10), [late[1]!]];
    let t = Date.now();
    for (const batch of batches) {
      await produceGroups(kafka, topic, batch.map((spec) => groupEvents({ runId: source, ...spec, startMs: (t += 100) })), true);
    }
  });
  after(async () => {
    await deleteRunTopics(kafka, config);
    rmSync(dir, { recursive: true, force: true });
  });

  it('a replay killed part-way and resumed trains every group once and ends with the uninterrupted replay\'s adapter', { timeout: 600_000 }, async () => {
    const reference = await runReplay({ config, sourceRunId: source, runId: uniqueName('whole'), logger, progress: null });
    assert.equal(reference.steps, 12, 'one group a step (token budget)');
    assert.equal(reference.totals.groups_dropped_stale, 2);
    assert.equal(reference.totals.groups_dropped_equal_rewards, 2);

    const run = uniqueName('killed');
    const paths = replayConfig(config, run);
    const cli = (...extra: string[]) => spawn(process.execPath, ['bin/trajstore.mjs', 'replay', '--source-run', source, '--run', run, '-c', configFile, ...extra], {
      env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn', KAFKAJS_NO_PARTITIONER_WARNING: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const first = cli();
    let exited = false;
    first.on('exit', () => (exited = true));
    while (listCheckpoints(paths.checkpoint.dir).length < 2 && !exited) await sleep(20);
    assert.equal(exited, false, 'the replay ended before it could be killed');
    first.kill('SIGKILL');
    await new Promise((r) => first.on('close', r));
    const killedAt = readTrainerState(listCheckpoints(paths.checkpoint.dir)[0]!.dir);
    assert.ok(killedAt.step < reference.steps, `killed at step ${killedAt.step} of ${reference.steps}`);
    assert.ok(killedAt.replay!.pending.length > 0, 'the checkpoint had a group waiting for a step');

    const resumed = cli('--resume');
    let out = '';
    let err = '';
    resumed.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    resumed.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => resumed.on('close', r));
    assert.equal(code, 0, err.slice(-3000));
    const result = JSON.parse(out.trim().split('\n').at(-1)!) as typeof reference;

    assert.equal(result.steps, reference.steps);
    assert.equal(result.adapterChecksum, reference.adapterChecksum);
    for (const k of ['groups_trained', 'groups_dropped_stale', 'groups_dropped_equal_rewards', 'tokens_trained']) {
      assert.equal(result.totals[k], reference.totals[k], k);
    }
    const ledger = ledgerOf(paths.training.output_dir);
    const whole = ledgerOf(replayConfig(config, reference.runId).training.output_dir);
    assert.equal(new Set(ledger.trained).size, ledger.trained.length, 'no group trained twice');
    assert.deepEqual([...ledger.trained].sort(), [...whole.trained].sort());
    assert.deepEqual(ledger.dropped, whole.dropped);
  });

  it('--resume without a checkpoint, or with a new range, is refused with what to do', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, ['bin/trajstore.mjs', 'replay', '--source-run', source, '-c', configFile, ...args], { encoding: 'utf8' });
    const none = run('--run', uniqueName('none'), '--resume');
    assert.equal(none.status, 2);
    assert.match(none.stderr, /has no checkpoint .* to resume from/);
    const ranged = run('--run', uniqueName('r'), '--resume', '--from', '0');
    assert.equal(ranged.status, 2);
    assert.match(ranged.stderr, /--resume reads the range the replay started with/);
  });
});
