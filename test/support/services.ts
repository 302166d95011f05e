/**
 * The test harness's view of the local services. `npm test` starts them once for the whole
 * suite (scripts/test.sh); each test makes its own topics and databases with unique names so
 * tests never see each other's data, and removes them when it ends.
 */
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import type { ClickHouseClient } from '@clickhouse/client';
import type { Kafka } from 'kafkajs';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { createKafka, ensureTopics } from '../../src/kafka/client.js';
import { servicesOptionsFromEnv } from '../../src/services/manager.js';
import { LOCAL_S3_BUCKET, LOCAL_S3_CREDENTIALS } from '../../src/services/s3.js';
import type { S3Options } from '../../src/storage/s3.js';
import { createLogger } from '../../src/util/logger.js';

const services = servicesOptionsFromEnv();
export const KAFKA_BROKERS = [`${services.host}:${services.kafkaPort}`];
export const CLICKHOUSE_URL = `http://${services.host}:${services.clickhouseHttpPort}`;

/**
 * The local S3-compatible store (`services up --s3`, which scripts/test.sh runs): its options,
 * and an s3:// location under a prefix of this test's own. The AWS SDK reads credentials from
 * the environment, so the local store's are put there (the suite never talks to real AWS).
 */
export function testS3(prefix = 'test'): { location: string; options: S3Options } {
  process.env.AWS_ACCESS_KEY_ID = LOCAL_S3_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = LOCAL_S3_CREDENTIALS.secretAccessKey;
  return {
    location: `s3://${LOCAL_S3_BUCKET}/${uniqueName(prefix)}`,
    options: { endpoint: `http://${services.host}:${services.s3Port}`, region: 'us-east-1', forcePathStyle: true },
  };
}

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

/** A name no other test (or earlier run) uses: prefix plus random hex. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

export function testKafka(): Kafka {
  return createKafka({ brokers: KAFKA_BROKERS, clientId: uniqueName('test') }, logger);
}

/** Creates a topic for this test only; deleted when the test ends. */
export async function testTopic(t: TestContext, kafka: Kafka, prefix = 'test', numPartitions = 3): Promise<string> {
  const topic = uniqueName(prefix);
  await ensureTopics(kafka, [{ topic, numPartitions }]);
  t.after(async () => {
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
  });
  return topic;
}

/** Creates a ClickHouse database for this test only; dropped when the test ends. */
export async function testDatabase(t: TestContext): Promise<{ database: string; client: ClickHouseClient }> {
  const database = uniqueName('test');
  const admin = createClickHouse({ url: CLICKHOUSE_URL, username: 'default', password: '' });
  await admin.command({ query: `CREATE DATABASE ${database}` });
  const client = createClickHouse({ url: CLICKHOUSE_URL, database, username: 'default', password: '' });
  t.after(async () => {
    await client.close();
    await admin.command({ query: `DROP DATABASE IF EXISTS ${database}` });
    await admin.close();
  });
  return { database, client };
}
