/**
 * Reading the trajectory topic from exact offsets. kafkajs has no manual partition assignment,
 * so each reader joins a consumer group of its own (a fresh id, nobody else in it) and seeks to
 * the checkpoint's offsets: no rebalance waits on a killed predecessor that the broker still
 * believes alive, and records before the start offsets are never handed out. Offsets the run
 * has durably trained are committed separately, to the run's stable group (`OffsetCommitter`),
 * only after a checkpoint is on disk; that group is what `kafka-consumer-groups --describe`
 * shows as the trainer's lag.
 *
 * Memory is bounded: fetched records wait in a queue of at most `highWater` records; past it the
 * fetch loop holds (sending heartbeats) until the trainer has taken them.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Consumer, Kafka } from 'kafkajs';
import { decodeTrajectoryEvent, type TrajectoryEvent } from '../../schemas/index.js';
import type { Logger } from '../../util/logger.js';

export interface LogRecord {
  partition: number;
  offset: number;
  /** The Kafka message timestamp (ms). */
  timestamp: number;
  value: Buffer | null;
}

/** The record's trajectory event; throws the codec's typed error (or a tombstone's) when there is none. */
export function decodeRecord(rec: LogRecord): TrajectoryEvent {
  if (!rec.value) throw new Error('empty message (tombstone) on the trajectory topic');
  return decodeTrajectoryEvent(rec.value);
}

export interface ReaderOptions {
  topic: string;
  /** partition → first offset to read; partitions not listed start at their earliest offset. */
  start: Map<number, number>;
  groupPrefix: string;
  highWater?: number;
  logger: Logger;
}

export class LogReader {
  private consumer: Consumer | null = null;
  private queue: LogRecord[] = [];
  private wake: (() => void) | null = null;
  private failed: unknown = null;
  readonly groupId: string;

  constructor(private readonly kafka: Kafka, private readonly opts: ReaderOptions) {
    this.groupId = `${opts.groupPrefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  }

  async open(): Promise<void> {
    const { topic } = this.opts;
    const highWater = this.opts.highWater ?? 20_000;
    const next = new Map(this.opts.start);
    const consumer = this.kafka.consumer({ groupId: this.groupId, sessionTimeout: 60_000, rebalanceTimeout: 60_000, maxWaitTimeInMs: 200 });
    this.consumer = consumer;
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    consumer.on(consumer.events.CRASH, (e) => {
      this.failed = e.payload.error;
      this.wake?.();
    });
    await consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch, heartbeat, isRunning }) => {
        const from = next.get(batch.partition) ?? 0;
        for (const m of batch.messages) {
          const offset = Number(m.offset);
          // Before the seek below takes effect a fetch may start at the beginning, and after it
          // records may come again: only offsets at or past the next expected one are taken.
          if (offset < (next.get(batch.partition) ?? from)) continue;
          next.set(batch.partition, offset + 1);
          this.queue.push({ partition: batch.partition, offset, timestamp: Number(m.timestamp), value: m.value });
        }
        this.wake?.();
        while (this.queue.length > highWater && isRunning()) {
          await sleep(20);
          await heartbeat();
        }
      },
    });
    for (const [partition, offset] of this.opts.start) consumer.seek({ topic, partition, offset: String(offset) });
  }

  /** Records fetched so far (at most `max`), waiting up to `waitMs` when there are none. */
  async next(waitMs: number, max = 5000): Promise<LogRecord[]> {
    if (this.failed) throw this.failed;
    if (this.queue.length === 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
    if (this.failed) throw this.failed;
    return this.queue.length <= max ? this.queue.splice(0) : this.queue.splice(0, max);
  }

  async close(): Promise<void> {
    const c = this.consumer;
    this.consumer = null;
    if (c) await c.disconnect().catch((err) => this.opts.logger.warn({ err: String(err) }, 'consumer disconnect failed'));
    // The group was only a vehicle for the start offsets; leave nothing behind.
    const admin = this.kafka.admin();
    await admin.connect();
    await admin.deleteGroups([this.groupId]).catch(() => undefined);
    await admin.disconnect();
  }
}

/**
 * Commits checkpoints' resume offsets to the run's stable consumer group, in the background:
 * kafkajs' admin.setOffsets joins the group with a short-lived consumer (about 5 s), and these
 * commits only inform monitoring (a resume reads the offsets from the checkpoint itself), so the
 * training loop does not wait for them. Latest wins: offsets that arrive while a commit runs
 * replace any not yet started.
 *
 * setOffsets refuses while the group has members. A trainer killed during a commit leaves its
 * short-lived consumer in the group until the broker's session timeout (30 s) expires it, so a
 * refused commit is retried every `retryMs` for up to `retryForMs`, unless newer offsets come.
 */
export class OffsetCommitter {
  private pending: Map<number, number> | null = null;
  private running: Promise<void> | null = null;

  constructor(
    private readonly kafka: Kafka,
    private readonly groupId: string,
    private readonly topic: string,
    private readonly logger: Logger,
    private readonly retry = { retryMs: 2000, retryForMs: 60_000 },
  ) {}

  commit(offsets: Map<number, number>): void {
    if (offsets.size === 0) return;
    this.pending = offsets;
    if (!this.running) this.running = this.drain();
  }

  /** Waits for the newest offsets handed in to be committed (or given up on). */
  async flush(): Promise<void> {
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    let failingSince: number | null = null;
    while (this.pending) {
      const offsets = this.pending;
      this.pending = null;
      try {
        await this.setOffsets(offsets);
        failingSince = null;
      } catch (err) {
        failingSince ??= Date.now();
        if (Date.now() - failingSince >= this.retry.retryForMs) {
          this.logger.warn({ group: this.groupId, err: String(err) }, 'could not commit offsets to the run group (monitoring only; resume uses the checkpoint)');
          failingSince = null;
          continue;
        }
        this.logger.debug({ group: this.groupId, err: String(err) }, 'offset commit refused; retrying');
        await new Promise((r) => setTimeout(r, this.retry.retryMs));
        this.pending ??= offsets;
      }
    }
    this.running = null;
  }

  private async setOffsets(offsets: Map<number, number>): Promise<void> {
    const admin = this.kafka.admin();
    try {
      await admin.connect();
      await admin.setOffsets({ groupId: this.groupId, topic: this.topic, partitions: [...offsets].map(([partition, offset]) => ({ partition, offset: String(offset) })) });
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }
}

/** Low and high watermarks of every partition. */
export async function topicWatermarks(kafka: Kafka, topic: string): Promise<Map<number, { low: number; high: number }>> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const offsets = await admin.fetchTopicOffsets(topic);
    return new Map(offsets.map((o) => [o.partition, { low: Number(o.low), high: Number(o.high) }]));
  } finally {
    await admin.disconnect();
  }
}

/** First offset of every partition at or after `timestampMs` (the high watermark when none). */
export async function offsetsAtTime(kafka: Kafka, topic: string, timestampMs: number): Promise<Map<number, number>> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const found = await admin.fetchTopicOffsetsByTimestamp(topic, timestampMs);
    return new Map(found.map((o) => [o.partition, Number(o.offset)]));
  } finally {
    await admin.disconnect();
  }
}
