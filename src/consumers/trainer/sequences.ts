/**
 * Turns an episode's Turn events into training sequences, on exactly the tokens the inference
 * server saw and sampled: no re-tokenization. Consecutive turns whose prompt extends the previous
 * prompt + completion (the usual chat history) are merged into one sequence, so the shared
 * history is computed once; otherwise each turn is a sequence of its own.
 *
 * Vision turns: a sequence carries the images of its prompt, which are the last merged turn's
 * prompt_images (a later prompt holds every image of the earlier ones, then its own). Turns are
 * merged only when the sequence's images so far are a prefix of the next turn's, under the same
 * image settings: a prompt that dropped an old screenshot (env_options.screenshots_in_prompt)
 * starts a new sequence, whatever its tokens say.
 */
import type { ImageProcessing } from '../../schemas/index.js';
import type { AssembledTurn, NumberSeq, TrainSequence } from './types.js';

export function episodeSequences(turns: AssembledTurn[], advantage: number): TrainSequence[] {
  const ordered = [...turns].sort((a, b) => a.turnIndex - b.turnIndex);
  const out: TrainSequence[] = [];
  let cur: TrainSequence | null = null;
  for (const turn of ordered) {
    const images = turn.promptImages.map((i) => i.sha256);
    if (cur && extendsSequence(cur.tokens, turn.promptTokenIds) && extendsImages(cur, images, turn.imageProcessing)) {
      appendPrompt(cur, turn.promptTokenIds, cur.tokens.length, turn.policyVersion);
    } else {
      cur = { tokens: [], lossMask: [], behaviorLogprobs: [], behaviorVersions: [], advantage, images: [], imageProcessing: null };
      out.push(cur);
      appendPrompt(cur, turn.promptTokenIds, 0, turn.policyVersion);
    }
    cur.images = images;
    if (images.length > 0) cur.imageProcessing = turn.imageProcessing;
    appendCompletion(cur, turn);
  }
  // The first token of a sequence has no earlier token to predict it from: never trained.
  for (const s of out) if (s.lossMask.length > 0) s.lossMask[0] = 0;
  return out.filter((s) => s.lossMask.some((m) => m === 1));
}

function extendsSequence(tokens: number[], prompt: NumberSeq): boolean {
  if (prompt.length < tokens.length) return false;
  for (let i = 0; i < tokens.length; i++) if (prompt[i] !== tokens[i]) return false;
  return true;
}

/** The sequence's images are a prefix of the next prompt's, expanded with the same settings. */
function extendsImages(seq: TrainSequence, next: string[], settings: ImageProcessing | null): boolean {
  if (seq.images.length > next.length) return false;
  for (let i = 0; i < seq.images.length; i++) if (seq.images[i] !== next[i]) return false;
  return seq.images.length === 0 || sameSettings(seq.imageProcessing, settings);
}

function sameSettings(a: ImageProcessing | null, b: ImageProcessing | null): boolean {
  if (a === null || b === null) return a === b;
  return a.processor === b.processor && a.processor_version === b.processor_version && a.min_pixels === b.min_pixels && a.max_pixels === b.max_pixels
    && a.patch_size === b.patch_size && a.merge_size === b.merge_size && a.temporal_patch_size === b.temporal_patch_size;
}

/** Appends `ids` from index `from` on (the part of a prompt the sequence does not hold yet). */
function appendPrompt(seq: TrainSequence, ids: NumberSeq, from: number, version: number): void {
  for (let i = from; i < ids.length; i++) {
    seq.tokens.push(ids[i]!);
    seq.lossMask.push(0);
    seq.behaviorLogprobs.push(0);
    seq.behaviorVersions.push(version);
  }
}

function appendCompletion(seq: TrainSequence, turn: AssembledTurn): void {
  const ids = turn.completionTokenIds;
  for (let i = 0; i < ids.length; i++) {
    seq.tokens.push(ids[i]!);
    seq.lossMask.push(1);
    seq.behaviorLogprobs.push(turn.completionLogprobs[i] ?? 0);
    seq.behaviorVersions.push(turn.tokenPolicyVersions?.[i] ?? turn.policyVersion);
  }
}
