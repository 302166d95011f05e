/**
 * The training ledger, `<output_dir>/ledger.jsonl`: one line per decision batch (a step's
 * trained groups, plus groups dropped since the previous line, with the reason). Lines carry a
 * sequence number that checkpoints record; a resumed trainer cuts the lines its checkpoint does
 * not cover, so the ledger always describes the lineage of the current adapter: every group
 * appears at most once, and the crash tests check that it appears exactly once.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';

export interface LedgerLine {
  seq: number;
  /** The optimizer step these groups were trained in (0 for lines before the first step). */
  step: number;
  policy_version: number;
  trained: string[];
  /** Group id → drop reason. */
  dropped: Record<string, string>;
}

export class Ledger {
  private seq = 0;

  constructor(readonly path: string) {}

  /** Keeps the lines with seq <= `upTo` (the checkpoint's), rewriting the file atomically. */
  truncate(upTo: number): void {
    this.seq = upTo;
    if (!existsSync(this.path)) return;
    const kept = readLedger(this.path).filter((l) => l.seq <= upTo);
    const tmp = `${this.path}.tmp`;
    writeFileSync(tmp, kept.map((l) => JSON.stringify(l) + '\n').join(''));
    fsyncFile(tmp);
    renameSync(tmp, this.path);
  }

  get lastSeq(): number {
    return this.seq;
  }

  /** Appends and fsyncs a line: it is durable before the checkpoint that counts it. */
  append(line: Omit<LedgerLine, 'seq'>): number {
    const full: LedgerLine = { seq: ++this.seq, ...line };
    const fd = openSync(this.path, 'a');
    try {
      writeSync(fd, JSON.stringify(full) + '\n');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return full.seq;
  }
}

export function readLedger(path: string): LedgerLine[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l.trim().length > 0)
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as LedgerLine];
      } catch {
        return []; // a line cut by a crash mid-write: never covered by a checkpoint
      }
    });
}

function fsyncFile(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
