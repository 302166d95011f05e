/**
 * Writes trajectory events to Kafka: Avro single-object encoded, keyed by group_id (a group's
 * events share a partition and stay in order), through kafkajs's idempotent producer (acks from
 * all in-sync replicas; a retried batch is not written twice).
 *
 * Events are buffered and sent in large batches, one request in flight at a time: kafkajs's
 * idempotent producer assigns sequence numbers per send, and two concurrent sends to one
 * partition can be reordered on a retry, which would break a group's order. While one batch is
 * in flight the next accumulates, so batches grow with load. When more than `maxBufferedBytes`
 * wait, `append` makes the caller wait (backpressure): a slow broker slows the rollouts instead
 * of growing memory without bound.
 */
import { CompressionTypes, Partitioners, type Kafka, type Message, type Producer } from 'kafkajs';
import { encodeTrajectoryEvent, type TrajectoryEvent } from '../schemas/index.js';
import type { Logger } from '../util/logger.js';
import { ProducerError } from './errors.js';

export interface EventWriterOptions {
  kafka: Kafka;
  topic: string;
  compression?: 'none' | 'gzip';
  /** Bytes waiting (not yet sent) before append blocks. Default 16 MiB. */
  maxBufferedBytes?: number;
  /** Bytes per produce request at most. Default 4 MiB (one produce request; single messages stay under the broker's 1 MB limit). */
  maxBatchBytes?: number;
  /** How long a lone event may wait for company before it is sent. Default 5 ms. */
  lingerMs?: number;
  logger?: Logger;
}

interface Pending {
  message: Message;
  bytes: number;
}

export class EventWriter {
  private producer: Producer | undefined;
  private queue: Pending[] = [];
  private queuedBytes = 0;
  private sending: Promise<void> | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  private failure: ProducerError | undefined;
  private roomWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  /** Events acknowledged by Kafka. */
  acked = 0;
  private readonly maxBuffered: number;
  private readonly maxBatch: number;
  private readonly linger: number;
  private readonly compression: CompressionTypes;

  constructor(private readonly opts: EventWriterOptions) {
    this.maxBuffered = opts.maxBufferedBytes ?? 16 * 1024 * 1024;
    this.maxBatch = opts.maxBatchBytes ?? 4 * 1024 * 1024;
    this.linger = opts.lingerMs ?? 5;
    this.compression = opts.compression === 'none' ? CompressionTypes.None : CompressionTypes.GZIP;
  }

  async connect(): Promise<void> {
    // maxInFlightRequests 1 with the idempotent producer: see the module comment.
    // The default partitioner is murmur2 like Java's: a group lands where any Kafka client would put its key.
    this.producer = this.opts.kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
    try {
      await this.producer.connect();
    } catch (err) {
      throw new ProducerError('TRAJ_E_PRODUCE', `cannot connect to Kafka: ${(err as Error).message}`, {
        cause: err,
        retriable: true,
        hint: 'check kafka.brokers; on a development machine `trajstore services up` starts the local Kafka',
      });
    }
  }

  /** Encodes and queues one event; waits while the buffer is full. Throws TRAJ_E_ENCODE_* or TRAJ_E_PRODUCE. */
  async append(event: TrajectoryEvent): Promise<void> {
    if (this.failure) throw this.failure;
    const value = encodeTrajectoryEvent(event);
    this.enqueue({ key: event.group_id, value, timestamp: String(event.timestamp) }, value.length + event.group_id.length);
    while (this.queuedBytes > this.maxBuffered && !this.failure) {
      await new Promise<void>((done) => this.roomWaiters.push(done));
    }
    if (this.failure) throw this.failure;
  }

  /** Queues already-encoded messages (the benchmark path; same batching and ordering). */
  appendEncoded(key: string, value: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    this.enqueue({ key, value }, value.length + key.length);
    if (this.queuedBytes <= this.maxBuffered) return Promise.resolve();
    return new Promise<void>((done) => this.roomWaiters.push(done)).then(() => {
      if (this.failure) throw this.failure;
    });
  }

  private enqueue(message: Message, bytes: number): void {
    this.queue.push({ message, bytes });
    this.queuedBytes += bytes;
    if (this.sending) return; // the send loop picks it up when the current request returns
    if (this.queuedBytes >= this.maxBatch) this.kick();
    else this.lingerTimer ??= setTimeout(() => this.kick(), this.linger);
  }

  private kick(): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    if (this.sending || this.queue.length === 0) return;
    this.sending = this.sendLoop().finally(() => {
      this.sending = undefined;
      for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  private async sendLoop(): Promise<void> {
    while (this.queue.length > 0 && !this.failure) {
      const batch: Message[] = [];
      let bytes = 0;
      while (this.queue.length > 0 && (batch.length === 0 || bytes + this.queue[0]!.bytes <= this.maxBatch)) {
        const p = this.queue.shift()!;
        batch.push(p.message);
        bytes += p.bytes;
      }
      try {
        await this.producer!.send({ topic: this.opts.topic, acks: -1, compression: this.compression, messages: batch });
        this.acked += batch.length;
      } catch (err) {
        this.failure = new ProducerError('TRAJ_E_PRODUCE', `Kafka did not take ${batch.length} events for ${this.opts.topic}: ${(err as Error).message}`, {
          cause: err,
          hint: 'check the broker (trajstore services status) and that the topic exists (trajstore topics create)',
        });
        this.opts.logger?.error({ err: (err as Error).message }, 'producing failed');
      } finally {
        this.queuedBytes -= bytes;
        this.releaseRoom();
      }
    }
    if (this.failure) this.releaseRoom(true);
  }

  private releaseRoom(all = false): void {
    if (!all && this.queuedBytes > this.maxBuffered) return;
    for (const w of this.roomWaiters.splice(0)) w();
  }

  /** Resolves when every event appended so far is acknowledged; throws if any could not be written. */
  async flush(): Promise<void> {
    this.kick();
    while (this.sending || (this.queue.length > 0 && !this.failure)) {
      if (!this.sending) this.kick();
      await new Promise<void>((done) => this.idleWaiters.push(done));
    }
    if (this.failure) throw this.failure;
  }

  /** Flushes, then disconnects. */
  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      await this.producer?.disconnect();
      this.producer = undefined;
    }
  }
}
