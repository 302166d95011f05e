/**
 * The loop closed: producers (`trajstore rollout`, text tasks) sample from the CPU policy server,
 * the trainer trains on their groups and publishes versions, the server loads them, and the
 * producers' later events carry the new versions (model `<run>-v<N>`, policy_version N).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { adapterName } from '../../src/consumers/trainer/publisher.js';
import { runStreamingTrainer } from '../../src/consumers/trainer/stream.js';
import { ensureEngineVenv, ensureTinyModel, startCpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { projectRoot } from '../../src/services/paths.js';
import { decodeTrajectoryEvent, type TrajectoryEvent } from '../../src/schemas/index.js';
import { loadConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka, uniqueName } from '../support/services.js';
import { runTopics, testConfigYaml } from './fixtures.js';

const logger = createLogger('test-e2e', { level: 'warn', pretty: false });

describe('producers, trainer and policy server together', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-e2e-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('versions the trainer publishes are loaded by the server and used by the producers for new episodes', { timeout: 600_000 }, async (t) => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyModel();
    const server = await startCpuPolicyServer({ maxLoras: 4 });
    t.after(() => server.stop());
    const kafka = testKafka();
    const topic = uniqueName('tre2e');
    const runId = uniqueName('e2e');
    const yaml = testConfigYaml({ runId, topic, dir, modelDir, apiBases: [`${server.baseUrl}/v1`] })
      .replace('publish_every_steps: 1000', 'publish_every_steps: 1')
      .replace('max_steps: 1000', 'max_steps: 3')
      .replace('max_staleness: 2', 'max_staleness: 8')
      + 'rollout: { environment: text, num_rollouts: 4, max_turns: 1, concurrency: 4, max_tokens: 6, episode_timeout_s: 60 }\n';
    const configFile = join(dir, 'config.yaml');
    writeFileSync(configFile, yaml);
    const config = loadConfig(configFile, {});
    await runTopics(t, kafka, config);

    const rollout = spawn(process.execPath, [join(projectRoot(), 'bin', 'trajstore.mjs'), 'rollout', '-c', configFile, '--grace-s', '5'], {
      env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn', KAFKAJS_NO_PARTITIONER_WARNING: '1' }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let rolloutErr = '';
    rollout.stderr!.on('data', (d: Buffer) => { rolloutErr += d.toString(); });
    const rolloutExit = new Promise<number | null>((r) => rollout.on('exit', (c) => r(c)));
    t.after(() => { rollout.kill('SIGKILL'); });

    const result = await runStreamingTrainer({ config, logger });
    assert.equal(result.steps, 3, rolloutErr.slice(-2000));
    assert.equal(result.policyVersion, 3);

    // Let the producers start new episodes on the newest version, then stop them.
    const deadline = Date.now() + 90_000;
    const seen: TrajectoryEvent[] = [];
    const consumer = kafka.consumer({ groupId: uniqueName('e2e-read') });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve) => {
      const check = () => seen.some((e) => 'Turn' in e.payload && e.policy_version >= 2) || Date.now() > deadline;
      const timer = setInterval(() => { if (check()) { clearInterval(timer); resolve(); } }, 500);
      void consumer.run({ eachMessage: async ({ message }) => { seen.push(decodeTrajectoryEvent(message.value!)); } });
    });
    await consumer.disconnect();
    rollout.kill('SIGTERM');
    await rolloutExit;

    const turns = seen.filter((e) => 'Turn' in e.payload && e.run_id === runId);
    const versions = new Set(turns.map((e) => e.policy_version));
    assert.ok(versions.has(0), 'early episodes sampled by the base model');
    const newer = turns.filter((e) => e.policy_version >= 2);
    assert.ok(newer.length > 0, `producers used a published version (versions seen: ${[...versions].join(',')})\n${rolloutErr.slice(-2000)}`);
    for (const e of newer) assert.equal((e.payload as { Turn: { model: string } }).Turn.model, adapterName(runId, e.policy_version));
  });
});
