/**
 * Exactly-once bookkeeping: which part of the log a checkpoint has fully accounted for.
 *
 * A group's events may straddle many offsets and interleave with other groups, so "the last
 * offset read" is not a safe resume point. The resume offset of a partition is the first offset
 * of the oldest group not yet decided (open, or complete but waiting for its step), or the read
 * position when there is none. Groups decided (trained or dropped) at or after that offset are
 * listed in the checkpoint, so a resumed trainer that re-reads them skips them: every group is
 * decided exactly once in the lineage of the final adapter.
 */
import type { LogPosition } from './types.js';

export interface PartitionResume {
  /** Next offset to read after a resume. */
  offset: number;
  /** [group id, first offset] of groups decided at or after `offset`. */
  done: Array<[string, number]>;
}

/** Partition number (as a string, for JSON) → resume point. */
export type ResumeState = Record<string, PartitionResume>;

export class OffsetTracker {
  private readonly position = new Map<number, number>();
  private readonly decided = new Map<string, LogPosition>();

  constructor(resume?: ResumeState) {
    for (const [p, r] of Object.entries(resume ?? {})) {
      this.position.set(Number(p), r.offset);
      for (const [gid, offset] of r.done) this.decided.set(gid, { partition: Number(p), offset });
    }
  }

  /** Every message read, whatever it held, moves the partition's position past it. */
  read(partition: number, offset: number): void {
    const next = offset + 1;
    if ((this.position.get(partition) ?? -1) < next) this.position.set(partition, next);
  }

  decide(groupId: string, first: LogPosition): void {
    this.decided.set(groupId, first);
  }

  /**
   * The resume state given the groups not yet decided; forgets decided groups below the new
   * resume offsets (they will never be re-read) and returns their ids.
   */
  snapshot(undecided: LogPosition[]): { state: ResumeState; forgotten: string[] } {
    const state: ResumeState = {};
    for (const [p, offset] of this.snapshotPeek(undecided)) state[String(p)] = { offset, done: [] };
    const forgotten: string[] = [];
    for (const [gid, pos] of this.decided) {
      const r = state[String(pos.partition)];
      if (r && pos.offset >= r.offset) r.done.push([gid, pos.offset]);
      else {
        forgotten.push(gid);
        this.decided.delete(gid);
      }
    }
    return { state, forgotten };
  }

  /** The resume offsets the next snapshot would take, without forgetting anything. */
  snapshotPeek(undecided: LogPosition[]): Array<[number, number]> {
    const low = new Map(this.position);
    for (const pos of undecided) {
      const cur = low.get(pos.partition);
      if (cur === undefined || pos.offset < cur) low.set(pos.partition, pos.offset);
    }
    return [...low].sort((a, b) => a[0] - b[0]);
  }

  /** Group ids a resumed trainer must skip. */
  static skipSet(state: ResumeState | undefined): string[] {
    return Object.values(state ?? {}).flatMap((r) => r.done.map(([gid]) => gid));
  }
}
