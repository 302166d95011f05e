/**
 * `trajstore sink --from-beginning --database NAME --until-caught-up`: rebuilding the analytics
 * from the log into a fresh database, and doing it again without duplicating anything.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { CLICKHOUSE_URL, testKafka, uniqueName } from '../support/services.js';
import { produceEvents, syntheticRun } from './events.js';
import { count, sinkTopics, writeSinkConfig } from './harness.js';

test('sink --from-beginning rebuilds a fresh database from the log, and again without duplicates', { timeout: 180_000 }, async (t) => {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const database = uniqueName('rebuild');
  const client = createClickHouse({ url: CLICKHOUSE_URL, username: 'default', password: '' });
  t.after(async () => {
    await client.command({ query: `DROP DATABASE IF EXISTS ${database}` });
    await client.close();
  });
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-rebuild-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // The config names another database: --database must win.
  const config = writeSinkConfig(dir, topics, 'not_this_one', { session_timeout_ms: 6000 });
  const events = syntheticRun({ runId: 'rebuild-run', groups: 5, groupSize: 3, turns: 2, promptTokens: 32, completionTokens: 8, seed: 11 });
  await produceEvents(kafka, topics.trajectories, events);

  const sink = () => spawnSync(process.execPath, ['bin/trajstore.mjs', 'sink', '-c', config, '--database', database, '--from-beginning', '--until-caught-up', '--no-progress'], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'info', TRAJSTORE_LOG_FORMAT: 'json' },
  });
  const first = sink();
  assert.equal(first.status, 0, first.stderr.slice(-3000));
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.events`), events.length);
  const progress = first.stderr.split('\n').filter((l) => l.includes('"sink progress"')).map((l) => JSON.parse(l) as { stored: number; total: number });
  assert.deepEqual(progress.at(-1) && [progress.at(-1)!.stored, progress.at(-1)!.total], [events.length, events.length], 'the last progress line says all stored');

  const second = sink();
  assert.equal(second.status, 0, second.stderr.slice(-3000));
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.events_data`), events.length, 'replaying into the same database adds no row');
  assert.equal(await count(client, `SELECT count() AS n FROM system.databases WHERE name = 'not_this_one'`), 0);
});
