/**
 * One `trainer_step_metrics` event per optimizer step: the engine's numbers (loss, clipping,
 * importance weights, behavior-vs-trainer logprob mismatch, speed) beside the trainer's own
 * (rewards, staleness histogram, groups dropped since the previous step by reason).
 */
import type { StalenessBucket, TrainerStepMetrics } from '../../schemas/index.js';
import type { TrainGroup } from './types.js';

export interface StepFacts {
  runId: string;
  step: number;
  policyVersion: number;
  groups: TrainGroup[];
  engine: Record<string, number | null>;
  /** Wall time of the whole step on the trainer's side (batch file + engine), ms. */
  stepTimeMs: number;
  droppedSinceLastStep: Record<string, number>;
  extra: Record<string, number>;
}

export function buildStepMetrics(f: StepFacts): TrainerStepMetrics {
  const e = (k: string, d = 0): number => {
    const v = f.engine[k];
    return typeof v === 'number' && Number.isFinite(v) ? v : d;
  };
  const rewards = f.groups.flatMap((g) => g.rewards);
  const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : 0;
  const std = rewards.length ? Math.sqrt(rewards.reduce((a, r) => a + (r - mean) ** 2, 0) / rewards.length) : 0;
  const tokens = e('tokens', f.groups.reduce((n, g) => n + g.tokens, 0));
  const extra: Record<string, number> = { ...f.extra };
  for (const k of ['token_loss_mean', 'ratio_mean', 'ratio_max', 'importance_weight_capped_fraction', 'mismatch_kl_k1',
    'advantage_mean', 'staleness_mean', 'staleness_max', 'stale_dropped_tokens', 'trained_tokens', 'micro_batches', 'engine_step_time_s']) {
    const v = k === 'engine_step_time_s' ? f.engine.step_time_s : f.engine[k];
    if (typeof v === 'number' && Number.isFinite(v)) extra[k] = v;
  }
  return {
    run_id: f.runId,
    step: f.step,
    timestamp: Date.now(),
    policy_version: f.policyVersion,
    loss: e('loss'),
    kl_ref: typeof f.engine.kl_to_base === 'number' ? f.engine.kl_to_base : null,
    entropy: typeof f.engine.entropy === 'number' ? f.engine.entropy : null,
    clip_fraction: e('clip_fraction'),
    importance_weight_mean: e('importance_weight_mean', 1),
    importance_weight_max: e('importance_weight_max', 1),
    behavior_logprob_abs_diff_mean: e('mismatch_abs_mean'),
    behavior_logprob_abs_diff_max: e('mismatch_abs_max'),
    behavior_kl: e('mismatch_kl'),
    grad_norm: e('grad_norm'),
    learning_rate: e('lr'),
    tokens_per_second: f.stepTimeMs > 0 ? tokens / (f.stepTimeMs / 1000) : 0,
    step_time_ms: f.stepTimeMs,
    num_tokens: tokens,
    num_sequences: e('sequences', f.groups.reduce((n, g) => n + g.sequences.length, 0)),
    num_groups: f.groups.length,
    reward_mean: mean,
    reward_std: std,
    staleness_histogram: stalenessHistogram(f.groups),
    groups_dropped: { ...f.droppedSinceLastStep },
    extra,
  };
}

export function stalenessHistogram(groups: TrainGroup[]): StalenessBucket[] {
  const by = new Map<number, StalenessBucket>();
  for (const g of groups) {
    const b = by.get(g.versionsBehind) ?? { versions_behind: g.versionsBehind, groups: 0, tokens: 0 };
    b.groups++;
    b.tokens += g.tokens;
    by.set(g.versionsBehind, b);
  }
  return [...by.values()].sort((a, b) => a.versions_behind - b.versions_behind);
}
