/**
 * The environment interface every rollout environment implements (text tasks, the browser,
 * GBox), in the shape of the seeds' GBoxAReaLEnv: reset to a task, step with the model's reply,
 * reward at the end, close. The group runner owns the conversation and the events; an
 * environment only turns replies into new observations and judges the outcome.
 */
import type { StoredBlob } from '../storage/blob-store.js';
import { ProducerError } from './errors.js';

export type Split = 'train' | 'eval';

/** One task: what every episode of a group attempts. `params` must be plain JSON. */
export interface TaskSpec {
  id: string;
  family: string;
  environment: string;
  split: Split;
  params: Record<string, unknown>;
}

/** What the policy is shown: text, plus a screenshot in the blob store for visual environments. */
export interface Observation {
  text: string;
  /** `bytes` are kept only until the next observation, for vision models' prompts. */
  image?: StoredBlob & { width: number; height: number; bytes?: Buffer };
}

export interface ResetResult {
  /** The system prompt: the rules of the environment and its action language. */
  system: string;
  observation: Observation;
  /** Browser context, GBox box id, ... (EpisodeStarted.env_instance_id). */
  instanceId?: string;
}

export interface StepResult {
  /** The parsed action, when the reply parsed. */
  action: { type: string; args_json: string } | null;
  /** Why the reply did not parse into an action (it was not executed). */
  parseError: string | null;
  /** What the policy sees next (ignored when done). */
  observation: Observation;
  /** The episode is over: the task was answered, finished or failed for good. */
  done: boolean;
}

export interface RewardResult {
  value: number;
  /** Named parts (correct, format, ...) for analytics. */
  components: Record<string, number>;
  /** The task was accomplished (EpisodeFinished success vs failure). */
  success: boolean;
  /** What computed it, e.g. 'rule:exact_match', 'page'. */
  source: string;
}

export interface Environment {
  reset(task: TaskSpec, seed: number): Promise<ResetResult>;
  step(reply: string): Promise<StepResult>;
  /** The outcome reward; called once, after the last step. */
  reward(): Promise<RewardResult>;
  /** Releases what reset acquired (browser context, box). Safe to call more than once. */
  close(): Promise<void>;
}

/** Makes environments and the tasks they run. One per rollout process. */
export interface EnvironmentFactory {
  readonly name: string;
  /** Screenshots go into the prompt (vision models); otherwise only the observation text does. */
  readonly sendsImages?: boolean;
  /** With sendsImages: how many of the newest screenshots a prompt carries (default 1). */
  readonly imagesInPrompt?: number;
  /** The index-th task of a split; the same (seed, split, index) always gives the same task. */
  task(split: Split, index: number): TaskSpec;
  create(): Promise<Environment>;
  /** Releases shared resources (the browser process). */
  close(): Promise<void>;
}

/**
 * `env_options.screenshots_in_prompt` of a visual environment: how many of the newest screenshots
 * each request carries (older ones become a placeholder). Default 1. Keeping every screenshot of
 * an episode (>= max_turns) makes each prompt extend the previous one, so the trainer computes
 * the shared history once; fewer bound the request.
 */
export function screenshotsInPrompt(raw: Record<string, unknown>): number {
  const value = raw.screenshots_in_prompt ?? 1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ProducerError('TRAJ_E_ENV_CONFIG', `rollout.env_options.screenshots_in_prompt must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}
