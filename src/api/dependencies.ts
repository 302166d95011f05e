/**
 * What the API reads: ClickHouse (the sink's database), Kafka (watermarks for sink lag and the
 * dead-letter count) and the blob store (screenshots). Each check is bounded in time, so /health
 * and /metrics answer promptly with a dependency marked down instead of hanging on it.
 */
import type { ClickHouseClient } from '@clickhouse/client';
import type { Admin, Kafka } from 'kafkajs';
import { QUERIES } from '../clickhouse/catalog.js';
import { queryReadOnly } from '../clickhouse/readonly.js';
import { quoteIdentifier } from '../clickhouse/sql.js';
import type { BlobStore } from '../storage/blob-store.js';
import type { HealthView } from './schemas.js';

const CHECK_TIMEOUT_MS = 3_000;
/** ClickHouse's code for an unknown database. */
const UNKNOWN_DATABASE = 81;

export interface ApiTopics {
  trajectories: string;
  policyVersions: string;
  trainerMetrics: string;
  deadLetter: string;
}

export interface DependencyState { state: 'up' | 'down'; latency_ms: number; detail: string }

export class Dependencies {
  private admin: Admin | null = null;

  constructor(
    readonly clickhouse: ClickHouseClient,
    readonly database: string,
    private readonly kafka: Kafka,
    readonly topics: ApiTopics,
    readonly blobs: BlobStore,
    private readonly blobsLocation: string,
  ) {}

  async health(): Promise<HealthView['dependencies']> {
    const [clickhouse, database, kafka, blobs] = await Promise.all([
      timed(() => this.clickhouseVersion(), 'check that ClickHouse runs (`trajstore services status`) at clickhouse.url'),
      timed(async () => `migration ${await this.scalar(QUERIES.migrationNewest.sql(quoteIdentifier(this.database), {}))}`,
        `run \`trajstore sink\` once: it creates and migrates database ${this.database}`),
      timed(async () => {
        const cluster = await this.withAdmin((a) => a.describeCluster());
        return `${cluster.brokers.length} broker(s), controller ${cluster.controller}`;
      }, 'check that Kafka runs (`trajstore services status`) at kafka.brokers'),
      timed(async () => {
        await this.blobs.has('0'.repeat(64));
        return this.blobsLocation;
      }, 'check storage.blobs (a readable directory or s3:// bucket)'),
    ]);
    return { clickhouse, database, kafka, blobs };
  }

  async listTopics(): Promise<Set<string>> {
    return new Set(await this.withAdmin((a) => a.listTopics()));
  }

  /** High and low watermarks of each partition of a topic. */
  async topicOffsets(topic: string): Promise<Array<{ partition: number; high: number; low: number }>> {
    const offsets = await this.withAdmin((a) => a.fetchTopicOffsets(topic));
    return offsets.map((o) => ({ partition: o.partition, high: Number(o.high), low: Number(o.low) }));
  }

  /** The sink's watermark (first offset not stored) per topic and partition. */
  async sinkWatermarks(): Promise<Array<{ topic: string; partition: number; next_offset: number }>> {
    const topics = [this.topics.trajectories, this.topics.policyVersions, this.topics.trainerMetrics];
    const sql = QUERIES.apiSinkWatermarks.sql(quoteIdentifier(this.database), { topics });
    const result = await queryReadOnly(this.clickhouse, sql, { maxRows: 10_000, timeoutS: 10, numbersAsJson: true });
    return result.rows as Array<{ topic: string; partition: number; next_offset: number }>;
  }

  async close(): Promise<void> {
    await this.admin?.disconnect().catch(() => undefined);
    this.admin = null;
  }

  /** The server's version; a missing database is the database check's concern, not the server's. */
  private async clickhouseVersion(): Promise<string> {
    try {
      return `ClickHouse ${await this.scalar(QUERIES.serverVersion.sql('', {}))}`;
    } catch (err) {
      if ((err as { serverCode?: number }).serverCode === UNKNOWN_DATABASE) return 'ClickHouse answers (the database is missing, see the database check)';
      throw err;
    }
  }

  private async scalar(sql: string): Promise<string> {
    const result = await queryReadOnly(this.clickhouse, sql, { maxRows: 1, timeoutS: 5 });
    return String(result.rows[0]?.v);
  }

  /** One admin connection, reopened after a failure; each call bounded by CHECK_TIMEOUT_MS. */
  private async withAdmin<T>(use: (admin: Admin) => Promise<T>): Promise<T> {
    try {
      if (!this.admin) {
        const admin = this.kafka.admin();
        await withTimeout(admin.connect(), 'connecting to Kafka');
        this.admin = admin;
      }
      return await withTimeout(use(this.admin), 'a Kafka admin request');
    } catch (err) {
      const admin = this.admin;
      this.admin = null;
      await admin?.disconnect().catch(() => undefined);
      throw err;
    }
  }
}

async function timed(check: () => Promise<string>, hint: string): Promise<DependencyState> {
  const t0 = performance.now();
  try {
    const detail = await withTimeout(check(), 'the check');
    return { state: 'up', latency_ms: Math.round(performance.now() - t0), detail };
  } catch (err) {
    return { state: 'down', latency_ms: Math.round(performance.now() - t0), detail: `${(err as Error).message.split('\n')[0]} → ${hint}` };
  }
}

export function withTimeout<T>(promise: Promise<T>, what: string, ms = CHECK_TIMEOUT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
