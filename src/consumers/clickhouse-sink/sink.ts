import type { ClickHouseClient } from '@clickhouse/client';
import { Partitioners, type Batch, type Consumer, type Kafka, type KafkaMessage, type Producer } from 'kafkajs';
import { migrate } from '../../clickhouse/migrations/index.js';
import {
  buildDeadLetter,
  decodePolicyVersion,
  decodeTrainerStepMetrics,
  decodeTrajectoryEvent,
  type DeadLetterMessage,
} from '../../schemas/index.js';
import { TrajstoreError } from '../../util/errors.js';
import type { Logger } from '../../util/logger.js';
import { SinkError, SinkErrorCode } from './errors.js';
import { retryForever } from './retry.js';
import { policyVersionRows, trainerStepRows, trajectoryRows, type DataTable, type MessageRows, type Provenance, type Row } from './rows.js';
import { SinkStore, type PartitionPosition } from './store.js';

export interface SinkTopics {
  trajectories: string;
  policyVersions: string;
  trainerMetrics: string;
  deadLetter: string;
}

export interface SinkOptions {
  kafka: Kafka;
  clickhouse: ClickHouseClient;
  database: string;
  topics: SinkTopics;
  groupId: string;
  batchMaxRows: number;
  batchMaxMs: number;
  lingerMs: number;
  retryMaxMs: number;
  sessionTimeoutMs: number;
  logger: Logger;
}

/** What one flush stored; the CLI's progress bar and the bench listen to it. */
export interface FlushReport {
  messages: number;
  rows: number;
  deadLetters: number;
  positions: PartitionPosition[];
  durationMs: number;
}

/** The messages of one partition's batch, waiting in the buffer for a flush. */
interface Pending {
  topic: string;
  partition: number;
  nextOffset: bigint;
  messages: number;
  rows: MessageRows;
  deadLetters: DeadLetterMessage[];
  resolve: () => void;
  reject: (err: unknown) => void;
}

const positionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

/**
 * Kafka → ClickHouse. Per flush, in this order: dead letters are produced, rows inserted, then
 * the offset watermark (`sink_offsets`) written, and only then Kafka offsets committed. A crash
 * anywhere redelivers the uncommitted messages; those below the watermark are skipped, and a
 * duplicate that slips through (crash between the row insert and the watermark) is collapsed by
 * the ReplacingMergeTree tables and hidden by the FINAL views. ClickHouse down: the flush
 * retries with backoff and the partitions wait (nothing is committed, nothing dropped).
 *
 * Batching: kafkajs hands over one batch per partition; the batches of all partitions join one
 * buffer that is flushed when it holds `batchMaxRows`, when no batch arrived for `lingerMs`, or
 * when its oldest row is `batchMaxMs` old, so an insert carries as many rows as a fetch brought.
 */
export class ClickHouseSink {
  private readonly consumer: Consumer;
  private readonly producer: Producer;
  private readonly store: SinkStore;
  private readonly log: Logger;
  private readonly watermarks = new Map<string, bigint>();
  private buffer: Pending[] = [];
  private bufferRows = 0;
  private lingerTimer: NodeJS.Timeout | undefined;
  private ageTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private stopping = false;
  private readonly flushListeners: Array<(report: FlushReport) => void> = [];
  /** Counters since start, for logs and the bench. */
  readonly stats = { messages: 0, rows: 0, deadLetters: 0, skippedRedelivered: 0, flushes: 0 };

  constructor(private readonly opts: SinkOptions) {
    this.log = opts.logger.child({ component: 'clickhouse-sink', database: opts.database });
    this.store = new SinkStore(opts.clickhouse, opts.database);
    this.consumer = opts.kafka.consumer({
      groupId: opts.groupId,
      sessionTimeout: opts.sessionTimeoutMs,
      // A member killed during a rebalance holds the group until this expires; twice the session
      // is time enough for a live member to finish its batch, since flushes heartbeat.
      rebalanceTimeout: 2 * opts.sessionTimeoutMs,
      heartbeatInterval: Math.max(500, Math.floor(opts.sessionTimeoutMs / 6)),
      // Large fetches make large inserts, which is what ClickHouse wants.
      maxBytesPerPartition: 8 * 1024 * 1024,
      maxBytes: 64 * 1024 * 1024,
      maxWaitTimeInMs: 250,
    });
    this.producer = opts.kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
  }

  get groupId(): string {
    return this.opts.groupId;
  }

  onFlush(listener: (report: FlushReport) => void): void {
    this.flushListeners.push(listener);
  }

  /** The first offset of each partition not yet stored, as far as this process knows. */
  positions(): PartitionPosition[] {
    return [...this.watermarks].map(([key, nextOffset]) => {
      const [topic, partition] = key.split('\u0000') as [string, string];
      return { topic, partition: Number(partition), nextOffset };
    });
  }

  /** Migrates the database, reads the watermark, joins the consumer group and starts consuming. */
  async start(): Promise<void> {
    await this.retry(() => migrateRetriable(this.opts.clickhouse, this.opts.database, this.log));
    await this.reloadWatermarks();
    await this.producer.connect();
    await this.consumer.connect();
    // Partitions move between sinks on rebalance; another sink may have stored further meanwhile.
    this.consumer.on(this.consumer.events.GROUP_JOIN, () => {
      this.reloadWatermarks().catch((err: unknown) => this.log.warn({ err }, 'could not reload the watermark after a rebalance; redeliveries are still deduplicated by the tables'));
    });
    // An error retrying cannot fix (the server rejects the insert): kafkajs restarts the consumer,
    // which fetches the same uncommitted batch again, so the sink keeps trying until the cause
    // is fixed; say so loudly, once per attempt.
    this.consumer.on(this.consumer.events.CRASH, ({ payload }) => {
      const err = payload.error as Error & { code?: string; hint?: string };
      this.log.error({ code: err.code, error: err.message, hint: err.hint, restart: payload.restart }, 'sink consumer crashed; nothing was committed past the failed batch');
    });
    const { trajectories, policyVersions, trainerMetrics } = this.opts.topics;
    // A new group starts at the beginning: a sink must not skip what was produced before it ran.
    await this.consumer.subscribe({ topics: [trajectories, policyVersions, trainerMetrics], fromBeginning: true });
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 32,
      eachBatch: ({ batch, heartbeat, resolveOffset }) => this.handleBatch(batch, heartbeat, resolveOffset),
    });
    this.log.info({ group: this.opts.groupId, topics: [trajectories, policyVersions, trainerMetrics] }, 'sink started');
  }

  /** Stops consuming; a flush still retrying gives up without committing (redelivered on restart). */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.lingerTimer);
    clearTimeout(this.ageTimer);
    await this.consumer.disconnect();
    await this.producer.disconnect();
    this.log.info(this.stats, 'sink stopped');
  }

  private async reloadWatermarks(): Promise<void> {
    const stored = await this.retry(() => this.store.loadWatermarks());
    for (const p of stored) this.advance(p.topic, p.partition, p.nextOffset);
  }

  /** Watermarks only move forward, whatever order reloads and flushes finish in. */
  private advance(topic: string, partition: number, nextOffset: bigint): void {
    const key = positionKey(topic, partition);
    const current = this.watermarks.get(key);
    if (current === undefined || nextOffset > current) this.watermarks.set(key, nextOffset);
  }

  private async handleBatch(batch: Batch, heartbeat: () => Promise<void>, resolveOffset: (offset: string) => void): Promise<void> {
    if (batch.messages.length === 0) return;
    const pending = this.decodeBatch(batch);
    if (pending.messages > 0) {
      // Keep the group membership alive while the flush waits for ClickHouse.
      const ticker = setInterval(() => heartbeat().catch(() => undefined), 1000);
      try {
        await new Promise<void>((resolve, reject) => this.enqueue({ ...pending, resolve, reject }));
      } catch (err) {
        // Stopping during an outage: leave the batch unresolved and uncommitted; it is redelivered.
        if (err instanceof SinkError && err.code === SinkErrorCode.STOPPED) return;
        throw err;
      } finally {
        clearInterval(ticker);
      }
    }
    // Only now may kafkajs fetch past this batch; a batch that failed is fetched again.
    resolveOffset((pending.nextOffset - 1n).toString());
    await this.commit(batch.topic, batch.partition, pending.nextOffset);
  }

  /** Decodes a batch into rows and dead letters, skipping what the watermark says is stored. */
  private decodeBatch(batch: Batch): Omit<Pending, 'resolve' | 'reject'> {
    const { topic, partition } = batch;
    const stored = this.watermarks.get(positionKey(topic, partition)) ?? -1n;
    const pending: Omit<Pending, 'resolve' | 'reject'> = { topic, partition, nextOffset: 0n, messages: 0, rows: [], deadLetters: [] };
    const ingestedAtMs = Date.now();
    for (const message of batch.messages) {
      const offset = BigInt(message.offset);
      pending.nextOffset = offset + 1n;
      if (offset < stored) {
        this.stats.skippedRedelivered++;
        continue;
      }
      pending.messages++;
      try {
        const rows = this.toRows(topic, message, { topic, partition, offset: message.offset, ingestedAtMs });
        assertStorable(rows);
        pending.rows.push(...rows);
      } catch (error) {
        pending.deadLetters.push(buildDeadLetter({
          value: message.value,
          error,
          source: { topic, partition, offset: message.offset, key: message.key, timestamp: message.timestamp },
          rejectedBy: this.opts.groupId,
        }));
      }
    }
    return pending;
  }

  private toRows(topic: string, message: KafkaMessage, provenance: Provenance): MessageRows {
    const value = message.value ?? Buffer.alloc(0);
    if (topic === this.opts.topics.trajectories) return trajectoryRows(decodeTrajectoryEvent(value), provenance);
    if (topic === this.opts.topics.policyVersions) return policyVersionRows(decodePolicyVersion(value), provenance);
    return trainerStepRows(decodeTrainerStepMetrics(value), provenance);
  }

  private enqueue(pending: Pending): void {
    this.buffer.push(pending);
    this.bufferRows += pending.rows.length;
    this.schedule();
  }

  private schedule(): void {
    if (this.flushing || this.buffer.length === 0) return;
    if (this.bufferRows >= this.opts.batchMaxRows) return this.startFlush();
    clearTimeout(this.lingerTimer);
    this.lingerTimer = setTimeout(() => this.startFlush(), this.opts.lingerMs);
    this.ageTimer ??= setTimeout(() => this.startFlush(), this.opts.batchMaxMs);
  }

  private startFlush(): void {
    clearTimeout(this.lingerTimer);
    clearTimeout(this.ageTimer);
    this.ageTimer = undefined;
    if (this.flushing || this.buffer.length === 0) return;
    const parts = this.buffer;
    this.buffer = [];
    this.bufferRows = 0;
    this.flushing = this.flush(parts).then(
      () => parts.forEach((p) => p.resolve()),
      (err: unknown) => parts.forEach((p) => p.reject(err)),
    ).finally(() => {
      this.flushing = undefined;
      this.schedule();
    });
  }

  private async flush(parts: Pending[]): Promise<void> {
    const started = Date.now();
    const deadLetters = parts.flatMap((p) => p.deadLetters);
    if (deadLetters.length > 0) await this.retry(() => this.sendDeadLetters(deadLetters));
    const byTable = new Map<DataTable, Row[]>();
    for (const part of parts) {
      for (const [table, row] of part.rows) {
        const rows = byTable.get(table);
        if (rows) rows.push(row);
        else byTable.set(table, [row]);
      }
    }
    await Promise.all([...byTable].map(([table, rows]) => this.retry(() => this.store.insert(table, rows))));
    const positions = latestPositions(parts);
    await this.retry(() => this.store.saveWatermarks(positions));
    for (const p of positions) this.advance(p.topic, p.partition, p.nextOffset);
    const report: FlushReport = {
      messages: parts.reduce((n, p) => n + p.messages, 0),
      rows: parts.reduce((n, p) => n + p.rows.length, 0),
      deadLetters: deadLetters.length,
      positions,
      durationMs: Date.now() - started,
    };
    this.stats.flushes++;
    this.stats.messages += report.messages;
    this.stats.rows += report.rows;
    this.stats.deadLetters += report.deadLetters;
    this.log.debug(report, 'flushed');
    for (const listener of this.flushListeners) listener(report);
  }

  private async sendDeadLetters(deadLetters: DeadLetterMessage[]): Promise<void> {
    try {
      await this.producer.send({
        topic: this.opts.topics.deadLetter,
        acks: -1,
        messages: deadLetters.map((d) => ({ key: d.key, value: d.value, headers: d.headers })),
      });
      for (const d of deadLetters) {
        this.log.warn({ source_topic: d.record.source_topic, partition: d.record.source_partition, offset: d.record.source_offset, code: d.record.error_code, reason: d.record.reason }, 'message sent to the dead-letter topic');
      }
    } catch (err) {
      throw new SinkError('TRAJ_E_SINK_DEAD_LETTER', `could not produce ${deadLetters.length} dead letters to ${this.opts.topics.deadLetter}: ${(err as Error).message}`, {
        retriable: true,
        cause: err,
        hint: `check that Kafka runs and the topic ${this.opts.topics.deadLetter} exists (\`trajstore topics\`)`,
      });
    }
  }

  /** Commits after the flush; a failed commit (rebalance) only means a redelivery the watermark skips. */
  private async commit(topic: string, partition: number, nextOffset: bigint): Promise<void> {
    try {
      await this.consumer.commitOffsets([{ topic, partition, offset: nextOffset.toString() }]);
    } catch (err) {
      this.log.warn({ err, topic, partition }, 'offset commit failed; the stored messages will be redelivered and skipped');
    }
  }

  private retry<T>(fn: () => Promise<T>): Promise<T> {
    return retryForever(fn, {
      initialMs: 200,
      maxMs: this.opts.retryMaxMs,
      stopped: () => this.stopping,
      onRetry: (err, attempt, delayMs) => {
        const log = attempt === 1 || attempt % 10 === 0 ? this.log.warn.bind(this.log) : this.log.debug.bind(this.log);
        log({ code: err.code, attempt, delayMs, error: err.message }, 'ClickHouse or Kafka unavailable; consumption paused, retrying');
      },
    });
  }
}

/** The highest next offset per partition among the flushed parts. */
function latestPositions(parts: Pending[]): PartitionPosition[] {
  const latest = new Map<string, PartitionPosition>();
  for (const p of parts) {
    const key = positionKey(p.topic, p.partition);
    const seen = latest.get(key);
    if (!seen || p.nextOffset > seen.nextOffset) latest.set(key, { topic: p.topic, partition: p.partition, nextOffset: p.nextOffset });
  }
  return [...latest.values()];
}

/** JSON has no NaN or infinity; such a value would make the whole insert fail, so its message is dead-lettered instead. */
function assertStorable(rows: MessageRows): void {
  for (const [table, row] of rows) {
    for (const column in row) {
      const value = row[column];
      const bad = typeof value === 'number' ? !Number.isFinite(value) : Array.isArray(value) && value.some((v) => typeof v === 'number' && !Number.isFinite(v));
      if (bad) throw new SinkError(SinkErrorCode.UNSTORABLE, `${table}.${column} holds NaN or an infinity, which ClickHouse's JSON input cannot take`);
    }
  }
}

/** Migration errors from an unreachable server are retried like inserts; others stop the sink. */
async function migrateRetriable(client: ClickHouseClient, database: string, log: Logger): Promise<void> {
  try {
    await migrate(client, database, log);
  } catch (err) {
    if (err instanceof TrajstoreError) throw err;
    throw new SinkError('TRAJ_E_CLICKHOUSE_UNAVAILABLE', `migrating ${database} failed: ${(err as Error).message}`, { retriable: true, cause: err });
  }
}
