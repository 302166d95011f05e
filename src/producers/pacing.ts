/**
 * Staleness-aware pacing: admission control for new groups, as AReaL does with its η
 * (max_head_offpolicyness). A group started under policy version v is trained at some later
 * version; if that is more than `max_staleness` versions ahead of v the trainer drops (or
 * down-weights) it. Producing such groups wastes inference, and since slow, hard groups are the
 * ones that finish late, dropping them biases training toward easy tasks. So producers do not
 * start them in the first place.
 *
 * The trainer consumes groups in order, `batch_size` per step and `batch_size × publish_every_steps`
 * per version (G_v). The k-th group of the run (from 0) is trained around version ⌊k / G_v⌋, so
 * it may start under version v only if ⌊k / G_v⌋ − v ≤ η, i.e.
 *
 *     k < (v + η + 1) · G_v            (AReaL's rule: started samples ≤ (version + η + 1) · batch)
 *
 * v and the trainer's step come from the log (TrainerProgress). k is estimated as the groups the
 * trainer had already consumed when this producer started (its step × batch_size) plus the train
 * groups started since, times the number of producers sharing the run. Eval groups are never
 * trained and are not counted, and neither are finished groups the trainer will drop without a
 * step (all rewards equal, fewer than two rewarded episodes, aborted: `onUntrainable`): versions
 * advance only on trained groups, so counting those would make the producer wait for a version
 * the trainer never reaches, while the trainer waits for groups (a deadlock on any task the policy
 * mostly fails or mostly solves).
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface PacingOptions {
  enabled: boolean;
  /** η: how many versions behind a group may be when trained (training.max_staleness). */
  maxStaleness: number;
  /** Groups per optimizer step (training.batch_size). */
  batchSize: number;
  publishEverySteps: number;
  /** Producer processes sharing the run (rollout.num_producers). */
  producers: number;
}

export interface ProgressView {
  latestVersion(): number;
  latestStep(): number;
}

export class StalenessPacer {
  private started = 0;
  private baseline: number | undefined;
  private readonly groupsPerVersion: number;

  constructor(private readonly opts: PacingOptions, private readonly progress: ProgressView) {
    this.groupsPerVersion = opts.batchSize * opts.publishEverySteps;
  }

  /** The run-wide index the next group would get (see the module comment). */
  nextIndex(): number {
    // Fixed at the first call: after a restart, groups the trainer already consumed count as started.
    this.baseline ??= this.progress.latestStep() * this.opts.batchSize;
    return this.baseline + this.started * this.opts.producers;
  }

  /** How many more groups may start now (Infinity when pacing is off). */
  budget(): number {
    if (!this.opts.enabled) return Number.POSITIVE_INFINITY;
    const limit = (this.progress.latestVersion() + this.opts.maxStaleness + 1) * this.groupsPerVersion;
    return Math.max(0, Math.floor((limit - this.nextIndex()) / this.opts.producers));
  }

  canStart(): boolean {
    return this.budget() > 0;
  }

  /** Call when a train group starts. */
  onStarted(): void {
    this.nextIndex();
    this.started++;
  }

  /** Call when a started train group finished in a shape the trainer drops: it frees its slot. */
  onUntrainable(): void {
    this.started = Math.max(0, this.started - 1);
  }

  /**
   * Resolves once a group may start, polling the progress the log feeds in; resolves false if
   * `signal` aborts first (shutdown).
   */
  async waitForAdmission(signal: AbortSignal, pollMs = 200): Promise<boolean> {
    while (!signal.aborted) {
      if (this.canStart()) return true;
      try {
        await sleep(pollMs, undefined, { signal });
      } catch {
        return false;
      }
    }
    return false;
  }
}
