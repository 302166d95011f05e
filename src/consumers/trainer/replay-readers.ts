/**
 * Parallel reading for replay: the partition ranges are split over reader threads
 * (replay-reader-worker.ts), which fetch, decode and assemble; this side merges their groups
 * into one deterministic order and hands them to the trainer core.
 *
 * The order: each partition's groups leave its reader in log order, tagged with the partition's
 * log clock (newest source-run timestamp seen in it), which never goes back. The merge always
 * takes the group with the smallest (clock, partition) among the partitions' next groups, and
 * waits for a partition that has none yet unless its range is over. So groups come in the order
 * they completed in the source run, whatever the number of readers or the fetch timing: two
 * replays of the same range see the same sequence of groups, and staleness ("versions behind the
 * newest version seen so far") is measured as the source run's trainer saw it.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../util/logger.js';
import type { AssemblerCounters } from './assembler.js';
import type { AssembledItem, PartitionAssemblyOptions, UndecodableRecord } from './partition-assembly.js';
import type { LogRecord } from './source.js';
import type { AssembledGroup } from './types.js';

export interface PartitionRange {
  partition: number;
  /** First offset to read. */
  start: number;
  /** End offset, exclusive. */
  end: number;
}

/** What a reader thread is started with: its share of the ranges, the options resolved. */
export type ReaderWorkerData = Pick<ReplayReadersOptions, 'brokers' | 'clientId' | 'topic' | 'topicPartitions' | 'ranges' | 'groupPrefix' | 'assembly'> & {
  creditBytes: number;
  idleEndMs: number;
  logLevel: string;
};

/** Reader thread → main thread. */
export type FromReader =
  | { type: 'batch'; partition: number; items: AssembledItem[]; undecodable: UndecodableRecord[]; counters: Partial<AssemblerCounters>; records: number; bytes: number }
  | { type: 'end'; partition: number }
  | { type: 'failed'; message: string }
  | { type: 'closed' };

/** Main thread → reader thread. */
export type ToReader = { type: 'credit'; partition: number; bytes: number } | { type: 'stop' };

/** What the merge hands out, in order. */
export type ReplayInput =
  | { type: 'group'; group: AssembledGroup; evicted: boolean }
  | { type: 'undecodable'; record: LogRecord; reason: string };

export interface ReplayReadersOptions {
  brokers: string[];
  clientId: string;
  topic: string;
  /** Every partition of the topic (a reader pauses the ones it was not given). */
  topicPartitions: number[];
  ranges: PartitionRange[];
  groupPrefix: string;
  assembly: PartitionAssemblyOptions;
  /** Reader threads (default: one per CPU, at most one per range). */
  readers?: number;
  /** Bytes of events a partition may have posted and not yet merged before its reader pauses it (default 32 MiB). */
  creditBytes?: number;
  /** A partition that has not moved for this long (and is not paused) is over: trailing offsets without records (default 10 s). */
  idleEndMs?: number;
  logger: Logger;
}

interface QueuedItem {
  item: AssembledItem;
  /** Credit returned to the reader once this item is taken (the bytes of the batch it ended). */
  credit: number;
}

interface PartitionStream {
  reader: Worker;
  queue: QueuedItem[];
  head: number;
  ended: boolean;
}

export class ReplayReaders {
  /** Records read so far (every offset with a record, whatever it held). */
  records = 0;
  /** Assembler counters summed over all partitions. */
  readonly counters: AssemblerCounters = { events: 0, other_run: 0, orphan_events: 0, late_events: 0, duplicate_events: 0, skipped_groups: 0 };
  private readonly streams = new Map<number, PartitionStream>();
  private readonly undecodable: UndecodableRecord[] = [];
  private readonly workers: Worker[] = [];
  /** Per worker: settles once it has left its consumer group (or exited). */
  private readonly closed: Array<Promise<void>> = [];
  private stopping = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly opts: ReplayReadersOptions) {}

  /** Starts the reader threads; ranges go to readers round-robin in partition order. */
  start(): void {
    const ranges = [...this.opts.ranges].sort((a, b) => a.partition - b.partition);
    const n = Math.max(1, Math.min(ranges.length, this.opts.readers ?? availableParallelism()));
    // The sources run through tsx (no build step); a worker thread registers its loader first.
    const tsxApi = import.meta.resolve('tsx/esm/api');
    const entry = new URL('./replay-reader-worker.ts', import.meta.url).href;
    const bootstrap = `import(${JSON.stringify(tsxApi)}).then(({ register }) => { register(); return import(${JSON.stringify(entry)}); });`;
    for (let w = 0; w < n; w++) {
      const mine = ranges.filter((_, i) => i % n === w);
      const data: ReaderWorkerData = {
        brokers: this.opts.brokers, clientId: `${this.opts.clientId}-${w}`, topic: this.opts.topic, topicPartitions: this.opts.topicPartitions,
        ranges: mine, groupPrefix: this.opts.groupPrefix, assembly: this.opts.assembly,
        creditBytes: this.opts.creditBytes ?? 32 * 1024 * 1024, idleEndMs: this.opts.idleEndMs ?? 10_000, logLevel: this.opts.logger.level,
      };
      const worker = new Worker(bootstrap, { eval: true, workerData: data });
      this.closed.push(new Promise<void>((resolve) => {
        worker.on('message', (m: FromReader) => m.type === 'closed' && resolve());
        worker.on('exit', () => resolve());
      }));
      worker.on('message', (m: FromReader) => this.onMessage(m));
      worker.on('error', (err) => this.fail(new Error(`replay reader ${w} failed: ${err.message}`)));
      worker.on('exit', (code) => {
        if (code !== 0 && !this.stopping) this.fail(new Error(`replay reader ${w} exited with code ${code}`));
      });
      this.workers.push(worker);
      for (const r of mine) this.streams.set(r.partition, { reader: worker, queue: [], head: 0, ended: false });
    }
  }

  /** Groups in merge order, undecodable records as soon as they are found. */
  async *inputs(): AsyncGenerator<ReplayInput> {
    for (;;) {
      if (this.failure) throw this.failure;
      const bad = this.undecodable.shift();
      if (bad) {
        yield { type: 'undecodable', ...bad };
        continue;
      }
      const next = this.pickNext();
      if (next === 'done') return;
      if (next === 'wait') {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = null;
        continue;
      }
      yield { type: 'group', group: next.group, evicted: next.evicted };
    }
  }

  /** Stops the readers (they leave their consumer groups); safe to call more than once. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    await Promise.all(this.workers.map(async (w, i) => {
      w.postMessage({ type: 'stop' } satisfies ToReader);
      await Promise.race([this.closed[i], new Promise((r) => setTimeout(r, 10_000).unref())]);
      await w.terminate();
    }));
  }

  /** The next group by (clock, partition), 'wait' when a partition with nothing queued is still being read. */
  private pickNext(): AssembledItem | 'wait' | 'done' {
    let best: { stream: PartitionStream; partition: number; q: QueuedItem } | null = null;
    for (const [partition, s] of this.streams) {
      const q = s.queue[s.head];
      if (!q) {
        if (!s.ended) return 'wait';
        continue;
      }
      if (!best || q.item.clock < best.q.item.clock || (q.item.clock === best.q.item.clock && partition < best.partition)) best = { stream: s, partition, q };
    }
    if (!best) return 'done';
    const s = best.stream;
    s.head++;
    if (s.head > 1024 && s.head * 2 > s.queue.length) {
      s.queue.splice(0, s.head);
      s.head = 0;
    }
    if (best.q.credit > 0) this.credit(s, best.partition, best.q.credit);
    return best.q.item;
  }

  private credit(s: PartitionStream, partition: number, bytes: number): void {
    s.reader.postMessage({ type: 'credit', partition, bytes } satisfies ToReader);
  }

  private onMessage(m: FromReader): void {
    if (m.type === 'failed') return this.fail(new Error(`replay reader failed: ${m.message}`));
    if (m.type === 'closed') return;
    const s = this.streams.get(m.partition);
    if (!s) return;
    if (m.type === 'end') {
      s.ended = true;
    } else {
      this.records += m.records;
      for (const [k, v] of Object.entries(m.counters)) this.counters[k as keyof AssemblerCounters] += v;
      for (const u of m.undecodable) this.undecodable.push({ reason: u.reason, record: { ...u.record, value: u.record.value && Buffer.from(u.record.value.buffer, u.record.value.byteOffset, u.record.value.byteLength) } });
      m.items.forEach((item, i) => s.queue.push({ item, credit: i === m.items.length - 1 ? m.bytes : 0 }));
      if (m.items.length === 0 && m.bytes > 0) this.credit(s, m.partition, m.bytes);
    }
    this.wake?.();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.wake?.();
  }
}
