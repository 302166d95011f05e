/**
 * Filters and group-relative advantages (GRPO). Order matters and is fixed:
 * 1. the group: eval purpose, aborted, closed by timeout or eviction → dropped;
 * 2. episodes: error / interrupted / unfinished / without turns or outcome reward / longer than
 *    the model's context → left out (counted);
 * 3. images: a kept turn with images in a run that is not a vision run → 'image_unsupported';
 *    a kept turn whose image placeholder tokens do not match its images (image-tokens.ts) →
 *    'image_placeholder_mismatch' (the engine could not reproduce what was sampled; never
 *    trained on without its images);
 * 4. fewer than 2 episodes left → 'too_few_episodes'; all rewards equal → 'equal_rewards';
 * 5. staleness: the oldest behavior version of the group against the trainer's version; past
 *    `maxStaleness` the group is dropped or down-weighted (policy `stale_policy`).
 * Advantage = reward − group mean, divided by the group's (population) std when `stdScaling`.
 */
import { placeholderMismatch } from './image-tokens.js';
import { episodeSequences } from './sequences.js';
import type { AssembledGroup, DropReason, EpisodeDropReason, TrainGroup, TrainSequence } from './types.js';

export interface FilterOptions {
  maxStaleness: number;
  stalePolicy: 'drop' | 'downweight';
  stdScaling: boolean;
  maxSeqLength: number;
  /**
   * A vision run: the id of the image placeholder token, counted in every kept turn's prompt.
   * null (or absent): a text run, where turns with images cannot be trained.
   */
  imageTokenId?: number | null;
}

export type PrepareResult =
  | { ok: true; group: TrainGroup; episodeDrops: Partial<Record<EpisodeDropReason, number>> }
  | { ok: false; reason: DropReason; episodeDrops: Partial<Record<EpisodeDropReason, number>>; versionsBehind?: number; detail?: string };

/** Std below this counts as "all rewards equal" (float noise in summed reward components). */
const EQUAL_EPS = 1e-6;

export function prepareGroup(group: AssembledGroup, currentVersion: number, opts: FilterOptions): PrepareResult {
  const episodeDrops: Partial<Record<EpisodeDropReason, number>> = {};
  const groupDrop = groupLevelDrop(group);
  if (groupDrop) return { ok: false, reason: groupDrop, episodeDrops };

  const kept = [];
  for (const ep of [...group.episodes].sort((a, b) => a.index - b.index)) {
    const why = episodeDrop(ep, opts.maxSeqLength);
    if (why) episodeDrops[why] = (episodeDrops[why] ?? 0) + 1;
    else kept.push(ep);
  }
  const imageDrop = imageLevelDrop(kept, opts.imageTokenId ?? null);
  if (imageDrop) return { ok: false, reason: imageDrop.reason, detail: imageDrop.detail, episodeDrops };
  if (kept.length < 2) return { ok: false, reason: 'too_few_episodes', episodeDrops };
  const rewards = kept.map((e) => e.reward);
  const advantages = groupAdvantages(rewards, opts.stdScaling);
  if (!advantages) return { ok: false, reason: 'equal_rewards', episodeDrops };

  const behaviorVersion = Math.min(...kept.flatMap((e) => e.turns.map((t) => minTurnVersion(t))));
  const versionsBehind = Math.max(0, currentVersion - behaviorVersion);
  const weight = stalenessWeight(versionsBehind, opts);
  if (weight === 0) return { ok: false, reason: 'stale', episodeDrops, versionsBehind };

  const sequences: TrainSequence[] = [];
  kept.forEach((ep, i) => sequences.push(...episodeSequences(ep.turns, advantages[i]! * weight)));
  const tokens = sequences.reduce((n, s) => n + s.tokens.length, 0);
  return {
    ok: true,
    episodeDrops,
    group: { groupId: group.groupId, first: group.first, sequences, rewards, tokens, behaviorVersion, versionsBehind, weight },
  };
}

/** Mean-centred rewards (optionally std-scaled); null when every reward is the same. */
export function groupAdvantages(rewards: number[], stdScaling: boolean): number[] | null {
  const mean = rewards.reduce((a, b) => a + b, 0) / rewards.length;
  const std = Math.sqrt(rewards.reduce((a, r) => a + (r - mean) ** 2, 0) / rewards.length);
  if (std < EQUAL_EPS) return null;
  return rewards.map((r) => (stdScaling ? (r - mean) / std : r - mean));
}

/**
 * 1 within the bound; past it 0 (drop) or 1 / (1 + versions past the bound) (down-weight): an
 * old group still counts, less the older it is.
 */
export function stalenessWeight(versionsBehind: number, opts: Pick<FilterOptions, 'maxStaleness' | 'stalePolicy'>): number {
  const past = versionsBehind - opts.maxStaleness;
  if (past <= 0) return 1;
  return opts.stalePolicy === 'drop' ? 0 : 1 / (1 + past);
}

function groupLevelDrop(group: AssembledGroup): DropReason | null {
  if (group.purpose === 'eval') return 'eval';
  if (group.closedBy === 'aborted') return 'aborted';
  if (group.closedBy === 'timeout') return 'timeout';
  return null;
}

/** Whether the kept turns' images can be trained on: a vision run, and placeholders that match. */
function imageLevelDrop(kept: AssembledGroup['episodes'], imageTokenId: number | null): { reason: DropReason; detail: string } | null {
  for (const ep of kept) {
    for (const t of ep.turns) {
      const where = `episode ${ep.episodeId} turn ${t.turnIndex}`;
      if (imageTokenId === null) {
        if (t.promptImages.length > 0) return { reason: 'image_unsupported', detail: `${where} has ${t.promptImages.length} images; inference.image_processing is not set` };
        continue;
      }
      const why = placeholderMismatch(t, imageTokenId);
      if (why !== null) return { reason: 'image_placeholder_mismatch', detail: `${where}: ${why}` };
    }
  }
  return null;
}

function episodeDrop(ep: AssembledGroup['episodes'][number], maxSeqLength: number): EpisodeDropReason | null {
  if (ep.status === null) return 'unfinished';
  if (ep.status === 'error') return 'error';
  if (ep.status === 'interrupted') return 'interrupted';
  if (ep.turns.length === 0) return 'no_turns';
  if (ep.rewardCount === 0) return 'no_reward';
  const longest = Math.max(...ep.turns.map((t) => t.promptTokenIds.length + t.completionTokenIds.length));
  if (longest > maxSeqLength) return 'too_long';
  return null;
}

function minTurnVersion(t: AssembledGroup['episodes'][number]['turns'][number]): number {
  if (!t.tokenPolicyVersions || t.tokenPolicyVersions.length === 0) return t.policyVersion;
  let m = t.policyVersion;
  for (const v of t.tokenPolicyVersions) if (v < m) m = v;
  return m;
}
