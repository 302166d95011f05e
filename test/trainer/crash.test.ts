/**
 * Exactly-once training across crashes: the trainer (`trajstore train --resume`, a child process
 * with its engine) is killed with SIGKILL at random moments, restarted each time, and at the
 * end its ledger (the lineage of the final adapter) holds every complete group exactly once:
 * trained, or dropped with its reason. Real Kafka, real engine on the tiny model.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { listCheckpoints, readTrainerState } from '../../src/consumers/trainer/checkpoints.js';
import { readLedger } from '../../src/consumers/trainer/ledger.js';
import { trainerGroupId } from '../../src/consumers/trainer/stream.js';
import { ensureEngineVenv, ensureTinyModel } from '../../src/inference/cpu-policy-server.js';
import { projectRoot } from '../../src/services/paths.js';
import { testKafka, uniqueName } from '../support/services.js';
import { groupEvents, prng, produceGroups, runTopics, testConfig, testConfigYaml } from './fixtures.js';

const KILLS = Number(process.env.TRAJSTORE_TEST_KILLS ?? 10);
// A crash test that kills nothing would pass while proving nothing.
assert.ok(Number.isInteger(KILLS) && KILLS >= 1, `TRAJSTORE_TEST_KILLS must be a whole number >= 1, not ${process.env.TRAJSTORE_TEST_KILLS}`);

interface TrainerRun {
  child: ChildProcess;
  stderr: () => string;
  /** Logged "training from the log": engine up, checkpoint loaded, reader open. */
  started: Promise<void>;
  /** Resolves once the run has logged `n` steps (0: once started). */
  reachedStep: (n: number) => Promise<void>;
  exited: Promise<number | null>;
}

function startTrainer(configFile: string, env: NodeJS.ProcessEnv): TrainerRun {
  const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'trajstore.mjs'), 'train', '-c', configFile, '--resume', '--stop-when-idle', '4'], {
    env: { ...process.env, ...env, TRAJSTORE_LOG_FORMAT: 'json', TRAJSTORE_LOG_LEVEL: 'info', KAFKAJS_NO_PARTITIONER_WARNING: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  let resolveStarted!: () => void;
  const started = new Promise<void>((r) => (resolveStarted = r));
  const waiters: { n: number; resolve: () => void }[] = [];
  let steps = 0;
  const settle = () => {
    for (const w of waiters.filter((w) => steps >= w.n)) w.resolve();
  };
  child.stderr!.on('data', (d: Buffer) => {
    const text = d.toString();
    err += text;
    if (err.includes('training from the log')) resolveStarted();
    steps += text.split('"msg":"step"').length - 1;
    settle();
  });
  const reachedStep = (n: number) =>
    n === 0 ? started : new Promise<void>((resolve) => {
      waiters.push({ n, resolve });
      settle();
    });
  child.stdout!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, stderr: () => err, started, reachedStep, exited };
}

describe('crash and resume', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-crash-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it(`SIGKILLed ${KILLS} times at random moments, the trainer ends with every complete group decided exactly once`, { timeout: 1_200_000 }, async (t) => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyModel();
    const kafka = testKafka();
    const topic = uniqueName('trcrash');
    const runId = uniqueName('crash');
    const opts = { runId, topic, dir, modelDir };
    const config = testConfig(opts);
    await runTopics(t, kafka, config);

    // 4 trainable groups per killed run (4 * KILLS steps of 1), 3 with equal rewards (dropped),
    // 2 whose producer died. The trainable groups arrive in chunks, one before each run, so a run
    // can never drain the whole input before it is killed, however fast the machine is: once it
    // has trained what the log holds it waits (--stop-when-idle 4 s, far longer than the kill
    // delay) and the kill still lands.
    const trainableCount = 4 * KILLS;
    const trainable = Array.from({ length: trainableCount }, (_, i) => groupEvents({ runId, seed: i + 1 }));
    const equalGroups = Array.from({ length: 3 }, (_, i) => groupEvents({ runId, seed: 100 + i, rewards: [1, 1] }));
    const incomplete = Array.from({ length: 2 }, (_, i) => groupEvents({ runId, seed: 200 + i, incomplete: true }));
    const groups = [...trainable, ...equalGroups, ...incomplete];
    const chunks = Array.from({ length: KILLS }, (_, k) => trainable.slice(4 * k, 4 * k + 4));
    chunks[0] = [...chunks[0]!, ...equalGroups, ...incomplete];
    const complete = groups.filter((g) => 'GroupCompleted' in g.at(-1)!.payload).map((g) => g[0]!.group_id);
    const equal = new Set(equalGroups.map((g) => g[0]!.group_id));

    const configFile = join(dir, 'config.yaml');
    writeFileSync(configFile, testConfigYaml(opts));
    const env = {
      // No step limit: each run drains the log and stops once idle, so every complete group is decided.
      TRAJSTORE__TRAINING__MAX_STEPS: '1000',
      TRAJSTORE__TRAINING__BATCH_SIZE: '1',
      TRAJSTORE__TRAINING__PUBLISH_EVERY_STEPS: '4',
      TRAJSTORE__CHECKPOINT__SAVE_EVERY_STEPS: '2',
      // Only idle time closes the incomplete groups; the run must not wait on them.
      TRAJSTORE__TRAINING__GROUP_TIMEOUT_S: '600',
      // The groups are all sampled by version 0: keep them trainable while the versions advance.
      TRAJSTORE__TRAINING__MAX_STALENESS: '100',
    };
    const rand = prng(7);
    let kills = 0;
    while (kills < KILLS) {
      await produceGroups(kafka, topic, chunks[kills]!, true);
      const run = startTrainer(configFile, env);
      // The kill lands up to 400 ms after start-up (reading, assembling, the first step), after
      // the first step or after the second (steps, checkpoints, publishing). Every run has at
      // least 4 untrained groups in the log, so it always reaches its second step.
      const after = run.reachedStep(kills % 3);
      const outcome = await Promise.race([after.then(() => 'ready' as const), run.exited.then(() => 'exited' as const)]);
      assert.equal(outcome, 'ready', `run ${kills + 1} exited before it could be killed:\n${run.stderr().slice(-3000)}`);
      await sleep(Math.floor(rand() * 400));
      run.child.kill('SIGKILL');
      await run.exited;
      kills++;
    }
    assert.equal(kills, KILLS, `the trainer was killed ${kills} times, not ${KILLS}`);

    const last = startTrainer(configFile, env);
    const code = await last.exited;
    assert.equal(code, 0, last.stderr().slice(-4000));

    const ledger = readLedger(join(dir, 'out', 'ledger.jsonl'));
    const seen = new Map<string, number>();
    for (const line of ledger) for (const g of [...line.trained, ...Object.keys(line.dropped)]) seen.set(g, (seen.get(g) ?? 0) + 1);
    const twice = [...seen].filter(([, n]) => n > 1);
    assert.deepEqual(twice, [], 'no group decided twice');
    const trained = ledger.flatMap((l) => l.trained);
    assert.equal(trained.length, trainableCount, 'every trainable group trained');
    for (const g of complete) assert.ok(seen.has(g), `complete group ${g} was decided`);
    const dropped = Object.fromEntries(ledger.flatMap((l) => Object.entries(l.dropped)));
    assert.deepEqual(new Set(Object.keys(dropped)), equal);
    assert.ok(Object.values(dropped).every((r) => r === 'equal_rewards'));
    assert.deepEqual(ledger.filter((l) => l.trained.length > 0).map((l) => l.step), Array.from({ length: trainableCount }, (_, i) => i + 1), `steps 1..${trainableCount}, each once`);

    // The newest checkpoint holds the last step and its version (published every 4 steps).
    const newest = listCheckpoints(join(dir, 'checkpoints'))[0]!;
    const state = readTrainerState(newest.dir);
    assert.equal(state.step, trainableCount);
    assert.equal(state.policy_version, trainableCount / 4);
    // The run's consumer group holds the same offsets (committed after the checkpoint).
    const admin = kafka.admin();
    await admin.connect();
    const committed = await admin.fetchOffsets({ groupId: trainerGroupId(runId), topics: [topic] });
    await admin.disconnect();
    const byPartition = Object.fromEntries(committed[0]!.partitions.filter((p) => p.offset !== '-1').map((p) => [String(p.partition), Number(p.offset)]));
    assert.deepEqual(byPartition, Object.fromEntries(Object.entries(state.resume).map(([p, r]) => [p, r.offset])));
    t.diagnostic(`killed ${kills} times; ledger lines ${ledger.length}`);
  });
});
