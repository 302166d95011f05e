/**
 * The trainer's in-memory shapes: what the assembler builds from trajectory events, what the
 * filters turn into trainable sequences, and what a step hands to the engine.
 */
import type { EpisodeStatus, GroupStatus, ImageProcessing, PromptImage, Purpose } from '../../schemas/index.js';

/** Where a group's first event sits in the log: resume offsets are computed from these. */
export interface LogPosition {
  partition: number;
  offset: number;
}

/**
 * Token ids, logprobs or versions: the decoder's plain arrays, or typed arrays once a group has
 * crossed between threads (replay readers), where they copy as one block instead of item by item.
 */
export type NumberSeq = ArrayLike<number> & Iterable<number>;

/** One Turn event, reduced to what training needs (token ids, logprobs, versions). */
export interface AssembledTurn {
  turnIndex: number;
  promptTokenIds: NumberSeq;
  completionTokenIds: NumberSeq;
  completionLogprobs: NumberSeq;
  /** Per-token policy versions (interruptible generation), or null: all tokens `policyVersion`. */
  tokenPolicyVersions: NumberSeq | null;
  policyVersion: number;
  /** The prompt's images in prompt order (empty for text prompts; events before schema v3 have none). */
  promptImages: PromptImage[];
  /** The settings the server expanded them with; null for text prompts. */
  imageProcessing: ImageProcessing | null;
}

export interface AssembledEpisode {
  episodeId: string;
  index: number;
  turns: AssembledTurn[];
  /** The GRPO reward: the sum of the episode's outcome rewards (turn_index null). */
  reward: number;
  rewardCount: number;
  /** null until EpisodeFinished arrives. */
  status: EpisodeStatus | null;
}

/** A group of G episodes of one task, as assembled from the log. */
export interface AssembledGroup {
  groupId: string;
  runId: string;
  purpose: Purpose;
  taskId: string;
  groupSize: number;
  first: LogPosition;
  /** Episodes in the order their EpisodeStarted arrived. */
  episodes: AssembledEpisode[];
  /** GroupCompleted's status, or 'timeout' when the group was closed because its producer went silent. */
  closedBy: GroupStatus | 'timeout';
  /** Timestamp (ms) of the group's last event. */
  lastEventTs: number;
}

/** A packed training sequence: prompt and completions of one episode, as the server saw them. */
export interface TrainSequence {
  tokens: number[];
  /** 1 where the token was sampled by the policy (trained), 0 for prompt / observation tokens. */
  lossMask: number[];
  /** Behavior logprob per token (0 where lossMask is 0). */
  behaviorLogprobs: number[];
  /** Behavior policy version per token (the turn's version where lossMask is 0). */
  behaviorVersions: number[];
  advantage: number;
  /** SHA-256 of each image of the sequence's prompt, in prompt order (the last merged turn's); empty for text. */
  images: string[];
  /** The settings those images were expanded with; null for text sequences. */
  imageProcessing: ImageProcessing | null;
}

/** A group that passed the filters: its sequences carry group-relative advantages. */
export interface TrainGroup {
  groupId: string;
  first: LogPosition;
  sequences: TrainSequence[];
  rewards: number[];
  tokens: number;
  /** The oldest behavior version of the group, and how far behind the trainer it was. */
  behaviorVersion: number;
  versionsBehind: number;
  /** 1, or less when the staleness policy down-weights the group. */
  weight: number;
}

/** Why a group or an episode was not trained; each counted in the metrics' groups_dropped. */
export type DropReason =
  | 'equal_rewards'
  | 'stale'
  | 'too_few_episodes'
  | 'aborted'
  | 'timeout'
  | 'evicted'
  | 'eval'
  | 'invalid_batch'
  /** A turn's image placeholder tokens do not match its images under its image settings (image-tokens.ts). */
  | 'image_placeholder_mismatch'
  /** An image the group's prompts cite is not in the blob store (or its bytes do not match its hash). */
  | 'image_missing'
  /** A turn has images, but the run is not a vision run (inference.image_processing unset). */
  | 'image_unsupported';

export type EpisodeDropReason = 'error' | 'interrupted' | 'unfinished' | 'no_turns' | 'too_long' | 'no_reward';
