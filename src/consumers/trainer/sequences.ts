/**
 * Turns an episode's Turn events into training sequences, on exactly the tokens the inference
 * server saw and sampled: no re-tokenization. Consecutive turns whose prompt extends the previous
 * prompt + completion (the usual chat history) are merged into one sequence, so the shared
 * history is computed once; otherwise each turn is a sequence of its own.
 */
import type { AssembledTurn, NumberSeq, TrainSequence } from './types.js';

export function episodeSequences(turns: AssembledTurn[], advantage: number): TrainSequence[] {
  const ordered = [...turns].sort((a, b) => a.turnIndex - b.turnIndex);
  const out: TrainSequence[] = [];
  let cur: TrainSequence | null = null;
  for (const turn of ordered) {
    if (cur && extendsSequence(cur.tokens, turn.promptTokenIds)) {
      appendPrompt(cur, turn.promptTokenIds, cur.tokens.length, turn.policyVersion);
    } else {
      cur = { tokens: [], lossMask: [], behaviorLogprobs: [], behaviorVersions: [], advantage };
      out.push(cur);
      appendPrompt(cur, turn.promptTokenIds, 0, turn.policyVersion);
    }
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
