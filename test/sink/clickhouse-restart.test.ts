/**
 * ClickHouse stopped and restarted while the sink runs: the sink pauses and retries, Kafka
 * offsets do not move past what ClickHouse acknowledged, and nothing is lost. Runs a ClickHouse
 * server of its own (temp home, free ports) so the shared one is never stopped.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { ClickHouseService } from '../../src/services/clickhouse.js';
import { testKafka, uniqueName } from '../support/services.js';
import { produceEvents, syntheticRun } from './events.js';
import { count, rows, sinkTopics, startSink, waitFor } from './harness.js';

async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  for (let i = 0; i < n; i++) {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
  }
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

test('ClickHouse stopped and restarted mid-run: the sink waits, commits nothing unstored, loses nothing', { timeout: 240_000 }, async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'trajstore-ch-restart-'));
  const [httpPort, tcpPort] = await freePorts(2);
  const server = new ClickHouseService({ home, host: '127.0.0.1', httpPort: httpPort!, tcpPort: tcpPort! });
  const log = () => undefined;
  t.after(async () => {
    await server.stop(log);
    rmSync(home, { recursive: true, force: true });
  });
  await server.start(log);
  const url = `http://127.0.0.1:${httpPort}`;
  const client = createClickHouse({ url, username: 'default', password: '' });
  t.after(() => client.close());

  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const database = uniqueName('restart');
  const sink = await startSink(t, kafka, topics, database, { clickhouseUrl: url, batchMaxRows: 300, retryMaxMs: 1000 });
  const produced: string[] = [];
  const produce = async (seed: number) => {
    const events = syntheticRun({ runId: 'restart-run', groups: 4, groupSize: 4, turns: 2, promptTokens: 64, completionTokens: 16, seed });
    await produceEvents(kafka, topics.trajectories, events, 100);
    produced.push(...events.map((e) => e.event_id));
  };

  await produce(1);
  await waitFor('first batch stored', async () => (await count(client, `SELECT count() AS n FROM ${database}.events`)) === produced.length);

  await server.stop(log);
  const storedBeforeStop = produced.length;
  // Events keep coming while ClickHouse is down; the sink has nowhere to put them.
  for (let seed = 2; seed <= 4; seed++) await produce(seed);
  await sleep(4000);
  const admin = kafka.admin();
  await admin.connect();
  t.after(() => admin.disconnect());
  const [committed] = await admin.fetchOffsets({ groupId: sink.groupId, topics: [topics.trajectories] });
  const committedTotal = committed!.partitions.reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
  assert.equal(committedTotal, storedBeforeStop, 'no offset was committed for events ClickHouse never acknowledged');

  await server.start(log);
  await produce(5);
  await waitFor('everything stored after the restart', async () => (await count(client, `SELECT count() AS n FROM ${database}.events`)) === produced.length, 120_000);
  const stored = await rows<{ event_id: string }>(client, `SELECT event_id FROM ${database}.events ORDER BY event_id`);
  assert.deepEqual(stored.map((r) => r.event_id), [...produced].sort());
  assert.equal(sink.stats.deadLetters, 0);
});

