/**
 * `trajstore rollout` as a process: SIGTERM mid-run stops new groups, finishes or interrupts the
 * running ones, flushes and exits 0, leaving every started group completed or marked aborted
 * with interrupted episodes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { stringify } from 'yaml';
import { startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { projectRoot } from '../../src/services/paths.js';
import { payloadAs } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { KAFKA_BROKERS, testKafka, testTopic, uniqueName } from '../support/services.js';
import { byGroup, countKind, groupProblems, readTopic } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

describe('trajstore rollout shutdown', () => {
  let server: CpuPolicyServer;
  before(async () => {
    server = await startCpuPolicyServer({ logger });
  });
  after(async () => {
    await server?.stop();
  });

  async function startRollout(t: TestContext, graceS: number) {
    const kafka = testKafka();
    const topics = {
      trajectories: await testTopic(t, kafka, 'traj'),
      policy_versions: await testTopic(t, kafka, 'pv', 1),
      trainer_metrics: await testTopic(t, kafka, 'tm', 1),
      dead_letter: await testTopic(t, kafka, 'dlq', 1),
    };
    const file = join(mkdtempSync(join(tmpdir(), 'rollout-')), 'config.yaml');
    writeFileSync(file, stringify({
      run: { id: uniqueName('run'), seed: 3 },
      model: { name: 'tiny' },
      // Multi-turn guessing with longer replies keeps episodes running when the signal comes.
      rollout: { environment: 'text', num_rollouts: 3, max_turns: 6, concurrency: 3, max_tokens: 24, staleness_pacing: false, env_options: { families: ['guess'] } },
      inference: { backend: 'cpu', api_bases: [`${server.baseUrl}/v1`], request_timeout_s: 30 },
      kafka: { brokers: KAFKA_BROKERS, topics },
    }));
    const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'trajstore.mjs'), 'rollout', '-c', file, '--grace-s', String(graceS), '--progress-s', '1'], {
      env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'info', TRAJSTORE_LOG_FORMAT: 'json' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    t.after(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    return { kafka, topics, child, exited, output: () => output };
  }

  for (const graceS of [0, 60]) {
    test(`SIGTERM mid-run (grace ${graceS} s) leaves every started group completed or aborted, and exits 0`, async (t) => {
      const run = await startRollout(t, graceS);
      // Wait until groups are under way: a few turns written.
      await readTopic(run.kafka, run.topics.trajectories, (es) => countKind(es, 'Turn') >= 4, 120_000);
      run.child.kill('SIGTERM');
      const code = await run.exited;
      assert.equal(code, 0, run.output().slice(-3000));
      assert.match(run.output(), /groups \d+ done/, 'progress lines are printed');

      const events = await readTopic(run.kafka, run.topics.trajectories, () => false, 4_000);
      const groups = byGroup(events);
      assert.ok(groups.size >= 1);
      const statuses = new Set<string>();
      for (const list of groups.values()) {
        assert.deepEqual(groupProblems(list), [], 'complete, ordered sequence');
        const completed = payloadAs(list.at(-1)!.event, 'GroupCompleted')!;
        const episodes = list.map((e) => payloadAs(e.event, 'EpisodeFinished')).filter((x) => x !== undefined);
        const interrupted = episodes.filter((f) => f.status === 'interrupted');
        statuses.add(completed.status);
        // A group with an interrupted episode must not be trained on; one without is complete.
        assert.equal(completed.status, interrupted.length > 0 ? 'aborted' : 'complete');
        for (const f of interrupted) assert.equal(f.error_code, 'TRAJ_E_INTERRUPTED');
      }
      if (graceS === 0) assert.ok(statuses.has('aborted'), 'with no grace, running groups are interrupted');
      else assert.deepEqual([...statuses], ['complete'], 'with grace, running groups finish');
    });
  }
});
