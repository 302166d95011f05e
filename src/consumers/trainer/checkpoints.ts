/**
 * Trainer checkpoints: the engine writes each one atomically (adapter, optimizer, RNG, a
 * MANIFEST.json written last, see engine/trajstore_engine/checkpoint.py); the trainer's own state
 * (resume offsets, version, counters, ledger position) travels inside it as metadata, so the
 * adapter and the offsets it was trained on can never disagree.
 *
 *   <checkpoint.dir>/step-00000012/     one directory per save, zero-padded so names sort
 *   <checkpoint.dir>/step-00000012.1/   a later save at the same step (the final save at shutdown)
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { TrainerError, TrainerErrorCode } from './errors.js';
import type { ResumeState } from './offsets.js';

/** What the trainer stores in a checkpoint's metadata (engine `save` → trainer_state.json). */
export interface TrainerState {
  format: 'trajstore-trainer';
  run_id: string;
  step: number;
  /** Newest published version (0: none yet, the base model). */
  policy_version: number;
  /** Checksum and location of that version, so a resumed trainer can republish it. */
  published: { version: number; dir: string; checksum: string } | null;
  topic: string;
  resume: ResumeState;
  ledger_seq: number;
  /** Cumulative counts: dropped groups by reason, episodes left out, trained groups and tokens. */
  totals: Record<string, number>;
  /** For replay: the log-time policy version reached (see replay.ts). */
  log_version?: number;
  /** For replay: where in the merged group stream this checkpoint stands, so `replay --resume` goes on from it. */
  replay?: ReplayPosition;
}

/**
 * A replay's position. The merge hands groups over in an order that depends only on the range
 * (replay.ts), so a resumed replay reads the same range again and skips what this checkpoint
 * already holds: the first `groups_read` groups, except `pending` (decided but not yet trained
 * at the save, by their place in the merge), which are handed to the trainer again.
 */
export interface ReplayPosition {
  source_run: string;
  ranges: Array<{ partition: number; start: number; end: number }>;
  groups_read: number;
  pending: number[];
  /** The log-time version before the first pending group was decided (the checkpoint's own when none is pending). */
  log_version_before_pending: number;
  /** Undecodable records already dead-lettered, per partition (found in offset order, so the first N are skipped). */
  dead_lettered: Record<string, number>;
}

/** `step-00000012`, and `step-00000012.1`, `.2`, ... for later saves at the same step (never overwritten). */
const STEP_DIR = /^step-(\d{8,})(?:\.(\d+))?$/;

/** A new checkpoint directory for `step`: a save never replaces an existing checkpoint, so a crash mid-save cannot lose one. */
export function checkpointDir(root: string, step: number): string {
  const base = `step-${String(step).padStart(8, '0')}`;
  const same = listCheckpoints(root, true).filter((c) => c.step === step);
  const rev = same.length === 0 ? 0 : Math.max(...same.map((c) => c.rev)) + 1;
  return join(resolve(root), rev === 0 ? base : `${base}.${rev}`);
}

/** Complete checkpoints (with MANIFEST.json), newest first; with `all`, incomplete ones too. */
export function listCheckpoints(root: string, all = false): Array<{ step: number; rev: number; dir: string }> {
  const abs = resolve(root);
  if (!existsSync(abs)) return [];
  return readdirSync(abs)
    .map((name) => ({ name, m: STEP_DIR.exec(name) }))
    .filter((x) => x.m && (all || existsSync(join(abs, x.name, 'MANIFEST.json'))))
    .map((x) => ({ step: Number(x.m![1]), rev: Number(x.m![2] ?? 0), dir: join(abs, x.name) }))
    .sort((a, b) => b.step - a.step || b.rev - a.rev);
}

/** Reads the trainer state of a checkpoint without loading it into the engine. */
export function readTrainerState(dir: string): TrainerState {
  const file = join(dir, 'trainer_state.json');
  if (!existsSync(join(dir, 'MANIFEST.json')) || !existsSync(file)) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${dir} is not a complete checkpoint (no MANIFEST.json or trainer_state.json)`, {
      hint: 'pass a step-NNNNNNNN directory under checkpoint.dir; an incomplete one (a crash while saving) can be deleted',
    });
  }
  const meta = (JSON.parse(readFileSync(file, 'utf8')) as { metadata?: { trainer?: TrainerState } }).metadata?.trainer;
  if (!meta || meta.format !== 'trajstore-trainer') {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${dir} was not written by the trainer (no trainer state in its metadata)`, {
      hint: 'engine-only checkpoints cannot resume a Kafka run: they do not know the offsets',
    });
  }
  return meta;
}

/** Deletes all but the newest `keep` checkpoints, and leftovers of saves a crash interrupted. */
export function pruneCheckpoints(root: string, keep: number, protect: string[] = []): string[] {
  const abs = resolve(root);
  const removed: string[] = [];
  for (const c of listCheckpoints(abs).slice(keep)) {
    if (protect.includes(c.dir)) continue;
    rmSync(c.dir, { recursive: true, force: true });
    removed.push(c.dir);
  }
  if (existsSync(abs)) {
    for (const name of readdirSync(abs)) {
      if (name.startsWith('.step-') && name.includes('.tmp-')) rmSync(join(abs, name), { recursive: true, force: true });
    }
  }
  return removed;
}
