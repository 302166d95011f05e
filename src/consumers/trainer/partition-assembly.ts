/**
 * Assembly of one partition's events, as replay readers run it (in worker threads, one
 * partition range at a time or several side by side).
 *
 * Every event of a group lives in one partition (keyed by group id), so a partition can be
 * decoded and assembled on its own. Time in a partition is its log clock: the newest event
 * timestamp of the source run seen in it so far. Each group leaves with the clock at that moment,
 * and since the clock never goes back, merging partitions by (clock, partition) gives one order
 * of groups, the order they completed in the source run, that depends only on the log's content
 * (replay-readers.ts does that merge).
 *
 * Silent groups are closed by the same log clock after every event, so which groups time out
 * does not depend on how fetches happened to be batched either.
 */
import { GroupAssembler, type AssemblerCounters } from './assembler.js';
import { decodeRecord, type LogRecord } from './source.js';
import type { AssembledGroup } from './types.js';

export interface AssembledItem {
  group: AssembledGroup;
  /** Closed by eviction (open-group bound), not by its producer or the timeout. */
  evicted: boolean;
  /** The partition's log clock when the group left (ms). */
  clock: number;
}

export interface UndecodableRecord {
  record: LogRecord;
  reason: string;
}

export interface PartitionAssemblyOptions {
  sourceRunId: string;
  timeoutMs: number;
  maxOpenGroups: number;
  /** At least this many closed groups are remembered so their late events are ignored; older ones are forgotten (bounded memory). */
  rememberClosed?: number;
}

export class PartitionAssembly {
  private readonly assembler: GroupAssembler;
  private clock = 0;
  private items: AssembledItem[] = [];
  private undecodable: UndecodableRecord[] = [];
  private readonly closedOrder: string[] = [];
  private readonly rememberClosed: number;
  private reported: AssemblerCounters;

  constructor(private readonly opts: PartitionAssemblyOptions) {
    this.assembler = new GroupAssembler({ runId: opts.sourceRunId, timeoutMs: opts.timeoutMs, maxOpenGroups: opts.maxOpenGroups });
    this.rememberClosed = opts.rememberClosed ?? 100_000;
    this.reported = { ...this.assembler.counters };
  }

  /** Decodes and applies one record (records of this partition, in offset order). */
  push(rec: LogRecord): void {
    let event;
    try {
      event = decodeRecord(rec);
    } catch (err) {
      this.undecodable.push({ record: rec, reason: err instanceof Error ? err.message : String(err) });
      return;
    }
    if (event.run_id === this.opts.sourceRunId && event.timestamp > this.clock) this.clock = event.timestamp;
    const { completed, evicted } = this.assembler.accept(event, { partition: rec.partition, offset: rec.offset }, 0);
    if (evicted) this.emit(evicted, true);
    if (completed) this.emit(completed, false);
    for (const g of this.assembler.expireByLogTime(this.clock)) this.emit(g, false);
  }

  /** End of the partition's range: groups still open are closed (their remaining events lie outside it). */
  finish(): void {
    for (const g of this.assembler.closeAll()) this.emit(g, false);
  }

  /** Groups and undecodable records since the last call, and the assembler's counters since then. */
  take(): { items: AssembledItem[]; undecodable: UndecodableRecord[]; counters: Partial<AssemblerCounters> } {
    const out = { items: this.items, undecodable: this.undecodable, counters: this.counterDelta() };
    this.items = [];
    this.undecodable = [];
    return out;
  }

  private emit(group: AssembledGroup, evicted: boolean): void {
    this.items.push({ group, evicted, clock: this.clock });
    this.closedOrder.push(group.groupId);
    // In chunks, so forgetting costs O(1) per group: at least the newest `rememberClosed` are kept.
    if (this.closedOrder.length >= 2 * this.rememberClosed) this.assembler.forget(this.closedOrder.splice(0, this.rememberClosed));
  }

  private counterDelta(): Partial<AssemblerCounters> {
    const now = this.assembler.counters;
    const delta: Partial<AssemblerCounters> = {};
    for (const k of Object.keys(now) as Array<keyof AssemblerCounters>) if (now[k] !== this.reported[k]) delta[k] = now[k] - this.reported[k];
    this.reported = { ...now };
    return delta;
  }
}
