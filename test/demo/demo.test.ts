/** The demo's own logic: its per-run config, and how it reads success per version. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../src/config/index.js';
import { databaseFor, makeRunId, writeRunConfig } from '../../src/demo/run-config.js';
import { resultLine, statusLine } from '../../src/demo/run.js';
import { firstAndLast, recentSuccess, type Snapshot, type VersionStat } from '../../src/demo/status.js';
import { projectRoot } from '../../src/services/paths.js';

const v = (version: number, episodes: number, successes: number): VersionStat => ({
  version, episodes, successes, success_rate: episodes ? successes / episodes : 0, mean_reward: 0, errors: 0,
});

test('a demo run gets its own id, topics, database and directories, and the config validates', () => {
  const runDir = mkdtempSync(join(tmpdir(), 'trajstore-demo-'));
  const runId = makeRunId(3, new Date('2026-11-23T12:34:56Z'));
  assert.equal(runId, 'demo-s3-20261123123456');
  const { file, config } = writeRunConfig({
    baseConfig: join(projectRoot(), 'configs', 'demo.yaml'), runId, seed: 3, runDir, apiBase: 'http://127.0.0.1:9999/v1', modelDir: '/models/x',
  });
  assert.equal(config.run.id, runId);
  assert.equal(config.run.seed, 3);
  assert.equal(config.clickhouse.database, 'demo_s3_20261123123456');
  assert.equal(databaseFor(runId), config.clickhouse.database);
  assert.deepEqual(Object.values(config.kafka.topics).map((t) => t.startsWith(`${runId}.`)), [true, true, true, true]);
  assert.deepEqual(config.inference.api_bases, ['http://127.0.0.1:9999/v1']);
  assert.equal(config.model.path, '/models/x');
  assert.equal(config.checkpoint.dir, join(runDir, 'checkpoints'));
  assert.equal(config.storage.adapters, join(runDir, 'adapters'));
  // The file the children read holds the same thing.
  assert.deepEqual(loadConfig(file, {}), config);
  assert.match(readFileSync(file, 'utf8'), /^# written by npm run demo/);
});

test('first and last versions are the ones measured on enough episodes', () => {
  const versions = [v(0, 3, 0), v(1, 40, 2), v(2, 40, 20), v(3, 40, 35), v(4, 5, 5)];
  const { first, last } = firstAndLast(versions, 16);
  assert.equal(first?.version, 1);
  assert.equal(last?.version, 3);
  assert.deepEqual(firstAndLast([], 16), { first: undefined, last: undefined });
});

test('recent success pools the newest versions until enough episodes', () => {
  const r = recentSuccess([v(0, 40, 0), v(1, 10, 8), v(2, 30, 27)], 32);
  assert.deepEqual(r, { fromVersion: 1, toVersion: 2, episodes: 40, rate: 0.875 });
  assert.equal(recentSuccess([v(0, 4, 1)], 32), undefined);
});

test('the status line and the RESULT line carry the figures a reader needs', () => {
  const snap: Snapshot = { atMs: 70_000, events: 1500, versionsPublished: 3, newestVersion: 3, trainerSteps: 3, groupsTrained: 12, versions: [v(0, 40, 0), v(3, 40, 36)] };
  const prev: Snapshot = { ...snap, atMs: 60_000, events: 500 };
  assert.equal(statusLine(snap, prev, 0), '[01:10] versions 3 (newest v3) · steps 3 · groups trained 12 · success 90% (v3, 40 ep) · 100 events/s · 1500 events');
  const line = resultLine({ run_id: 'r', seed: 1, database: 'd', minutes: 10, wall_s: 600, first: v(0, 40, 0), last: v(3, 40, 36), recent: undefined, versions: [v(0, 40, 0), v(3, 40, 36)] });
  assert.match(line, /^RESULT \{/);
  const json = JSON.parse(line.slice('RESULT '.length));
  assert.deepEqual(json.first_version, { version: 0, success_rate: 0, episodes: 40 });
  assert.deepEqual(json.last_version, { version: 3, success_rate: 0.9, episodes: 40 });
  assert.deepEqual(json.success_by_version['3'], { success_rate: 0.9, episodes: 40 });
});
