/**
 * What the sink tests share: a run's topics and database of their own, an in-process sink, and
 * a config file for a sink child process.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClickHouseClient } from '@clickhouse/client';
import type { Kafka } from 'kafkajs';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { ClickHouseSink, type SinkTopics } from '../../src/consumers/clickhouse-sink/sink.js';
import { createLogger } from '../../src/util/logger.js';
import { CLICKHOUSE_URL, KAFKA_BROKERS, testDatabase, testTopic, uniqueName } from '../support/services.js';

export const logger = createLogger('test-sink', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

/** The four topics a sink reads and writes, made for this test and deleted after it. */
export async function sinkTopics(t: TestContext, kafka: Kafka, partitions = 3): Promise<SinkTopics> {
  return {
    trajectories: await testTopic(t, kafka, 'traj', partitions),
    policyVersions: await testTopic(t, kafka, 'pv', 1),
    trainerMetrics: await testTopic(t, kafka, 'tm', 1),
    deadLetter: await testTopic(t, kafka, 'dlq', 1),
  };
}

/** An in-process sink on this test's topics and database (its own group), stopped after the test. */
export async function startSink(
  t: TestContext,
  kafka: Kafka,
  topics: SinkTopics,
  database: string,
  overrides: { clickhouseUrl?: string; batchMaxRows?: number; retryMaxMs?: number } = {},
): Promise<ClickHouseSink> {
  const clickhouse = createClickHouse({ url: overrides.clickhouseUrl ?? CLICKHOUSE_URL, username: 'default', password: '', requestTimeoutMs: 10_000 });
  const sink = new ClickHouseSink({
    kafka,
    clickhouse,
    database,
    topics,
    groupId: uniqueName('sink'),
    batchMaxRows: overrides.batchMaxRows ?? 5000,
    batchMaxMs: 500,
    lingerMs: 20,
    retryMaxMs: overrides.retryMaxMs ?? 2000,
    sessionTimeoutMs: 10_000,
    logger,
  });
  t.after(async () => {
    await sink.stop();
    await clickhouse.close();
  });
  await sink.start();
  return sink;
}

export async function rows<T = Record<string, unknown>>(client: ClickHouseClient, query: string): Promise<T[]> {
  const result = await client.query({ query, format: 'JSONEachRow', clickhouse_settings: { output_format_json_quote_64bit_integers: 0 } });
  return result.json<T>();
}

export async function count(client: ClickHouseClient, query: string): Promise<number> {
  const [row] = await rows<{ n: number }>(client, query);
  return Number(row?.n);
}

/** Polls until `check` returns true; fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** A config file for a `trajstore sink` child on this test's topics and database. */
export function writeSinkConfig(dir: string, topics: SinkTopics, database: string, sink: Record<string, number | string>): string {
  const file = join(dir, 'sink.yaml');
  const yaml = [
    'model: { name: test-model }',
    'kafka:',
    `  brokers: [${KAFKA_BROKERS.join(', ')}]`,
    '  partitions: 3',
    '  topics:',
    `    trajectories: ${topics.trajectories}`,
    `    policy_versions: ${topics.policyVersions}`,
    `    trainer_metrics: ${topics.trainerMetrics}`,
    `    dead_letter: ${topics.deadLetter}`,
    'clickhouse:',
    `  url: ${CLICKHOUSE_URL}`,
    `  database: ${database}`,
    'sink:',
    ...Object.entries(sink).map(([k, v]) => `  ${k}: ${v}`),
  ].join('\n');
  writeFileSync(file, `${yaml}\n`);
  return file;
}

export { testDatabase };
