/**
 * Batching: an optimizer step takes up to `groupsPerStep` groups (the seeds' batch_size), fewer
 * when the next group would pass `maxTokensPerStep`. A group is never split across steps (its
 * advantages are relative to each other). A group larger than the budget gets a step of its
 * own. The engine then packs the step into micro-batches of its own token budget.
 */
import type { ImageProcessing } from '../../schemas/index.js';
import type { TrainGroup } from './types.js';

export interface BatcherOptions {
  groupsPerStep: number;
  /** 0: no token budget per step, only `groupsPerStep`. */
  maxTokensPerStep: number;
}

export class StepBatcher {
  private readonly pending: TrainGroup[] = [];

  constructor(private readonly opts: BatcherOptions) {}

  add(group: TrainGroup): void {
    this.pending.push(group);
  }

  get pendingGroups(): readonly TrainGroup[] {
    return this.pending;
  }

  /** The next step's groups when a full step is ready; with `flush`, whatever is pending. */
  take(flush = false): TrainGroup[] | null {
    if (this.pending.length === 0) return null;
    const budget = this.opts.maxTokensPerStep;
    let n = 0;
    let tokens = 0;
    while (n < this.pending.length && n < this.opts.groupsPerStep) {
      const next = this.pending[n]!.tokens;
      if (budget > 0 && n > 0 && tokens + next > budget) break;
      tokens += next;
      n++;
    }
    const full = n === this.opts.groupsPerStep || n < this.pending.length;
    if (!full && !flush) return null;
    return this.pending.splice(0, n);
  }
}

/** A step's sequences flattened into the engine's batch tensors (engine/PROTOCOL.md). */
export interface StepTensors {
  inputIds: Int32Array;
  cuSeqlens: Int32Array;
  lossMask: Uint8Array;
  /** One per sequence (the engine broadcasts them over the sequence's tokens). */
  advantages: Float32Array;
  behaviorLogprobs: Float32Array;
  behaviorVersions: Int32Array;
  numTokens: number;
  numSequences: number;
  trainedTokens: number;
  /** Per sequence: its prompt images (SHA-256, prompt order; [] for text) and their settings (batch metadata). */
  images: string[][];
  imageProcessing: (ImageProcessing | null)[];
}

export function stepTensors(groups: TrainGroup[]): StepTensors {
  const seqs = groups.flatMap((g) => g.sequences);
  const total = seqs.reduce((n, s) => n + s.tokens.length, 0);
  const t: StepTensors = {
    inputIds: new Int32Array(total),
    cuSeqlens: new Int32Array(seqs.length + 1),
    lossMask: new Uint8Array(total),
    advantages: new Float32Array(seqs.length),
    behaviorLogprobs: new Float32Array(total),
    behaviorVersions: new Int32Array(total),
    numTokens: total,
    numSequences: seqs.length,
    trainedTokens: 0,
    images: seqs.map((s) => s.images),
    imageProcessing: seqs.map((s) => (s.images.length > 0 ? s.imageProcessing : null)),
  };
  let at = 0;
  seqs.forEach((s, i) => {
    t.inputIds.set(s.tokens, at);
    t.lossMask.set(s.lossMask, at);
    t.behaviorLogprobs.set(s.behaviorLogprobs, at);
    t.behaviorVersions.set(s.behaviorVersions, at);
    t.advantages[i] = s.advantage;
    at += s.tokens.length;
    t.cuSeqlens[i + 1] = at;
    for (const m of s.lossMask) t.trainedTokens += m;
  });
  return t;
}
