/**
 * Runs GRPO groups: G episodes of one task, each a conversation between the policy and an
 * environment, every step written as an event. The event sequence of a group is
 *
 *   GroupStarted (group seq 0)
 *   per episode: EpisodeStarted (seq 0), Turn × n (seq 1..n), Reward (outcome; not for error or
 *                interrupted episodes), EpisodeFinished (last)
 *   GroupCompleted (group seq 1)
 *
 * Nothing fails silently: an environment or policy failure ends that episode with status error
 * and the failure's code and message; the deadline ends it with status timeout; shutdown past
 * its grace period ends it with status interrupted, and its group completes as aborted so the
 * trainer never trains on it. Every started group gets its GroupCompleted.
 */
import { randomUUID } from 'node:crypto';
import { newTrajectoryEvent, type EpisodeStatus, type GroupStatus, type ImageProcessing, type ObservationRef, type Purpose, type TrajectoryEvent, type TrajectoryEventPayload } from '../schemas/index.js';
import type { Logger } from '../util/logger.js';
import { Conversation } from './conversation.js';
import type { EnvironmentFactory, Observation, RewardResult, TaskSpec } from './environment.js';
import { describeFailure, ProducerError } from './errors.js';
import type { PolicyClient, SamplingOptions } from './policy-client.js';
import { hashSeed } from '../util/random.js';

export interface EventSink {
  append(event: TrajectoryEvent): Promise<void>;
}

export interface GroupRunnerOptions {
  runId: string;
  producerId: string;
  groupSize: number;
  maxTurns: number;
  episodeTimeoutMs: number;
  sampling: SamplingOptions;
  policy: PolicyClient;
  environments: EnvironmentFactory;
  sink: EventSink;
  /** Runs one episode when a slot is free (p-queue in the rollout loop); default: at once. */
  schedule?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** Aborts running episodes (they end as interrupted). */
  interrupt?: AbortSignal;
  tags?: Record<string, string>;
  logger?: Logger;
  /**
   * The image settings the policy server applies (inference.image_processing), recorded on every
   * Turn whose prompt carries images. Required when the environments send images.
   */
  imageProcessing?: ImageProcessing | null;
}

export interface EpisodeOutcome {
  episodeId: string;
  status: EpisodeStatus;
  reward: number | null;
  turns: number;
  errorCode: string | null;
}

export interface GroupOutcome {
  groupId: string;
  status: GroupStatus;
  episodes: EpisodeOutcome[];
  policyVersion: number;
  purpose: Purpose;
}

class Interrupted extends Error {}

export class GroupRunner {
  constructor(private readonly opts: GroupRunnerOptions) {
    if (opts.environments.sendsImages && !opts.imageProcessing) {
      throw new ProducerError('TRAJ_E_ENV_CONFIG', `the ${opts.environments.name} environment sends screenshots to the policy, but inference.image_processing is not set`, {
        hint: 'set inference.image_processing (processor, processor_version, min_pixels, max_pixels, patch_size, merge_size, temporal_patch_size: see configs/cua_grpo.yaml), or env_options.send_screenshots: false for a text-only policy',
      });
    }
  }

  async runGroup(task: TaskSpec, purpose: Purpose, sampling: SamplingOptions = this.opts.sampling, groupSize = this.opts.groupSize): Promise<GroupOutcome> {
    const o = this.opts;
    const groupId = randomUUID();
    const started = Date.now();
    const version = o.policy.currentPolicy().version;
    const emitGroup = (seq: number, payload: TrajectoryEventPayload) =>
      o.sink.append(this.event({ group_id: groupId, episode_id: null, seq, policy_version: o.policy.currentPolicy().version, purpose, payload }));
    await emitGroup(0, {
      GroupStarted: {
        task: { task_id: task.id, task_family: task.family, environment: task.environment, params_json: JSON.stringify(task.params), split: task.split },
        group_size: groupSize,
        sampling: { temperature: sampling.temperature, top_p: sampling.top_p, top_k: sampling.top_k ?? null, max_tokens: sampling.max_tokens, extra_json: null },
      },
    });
    const schedule = o.schedule ?? ((fn) => fn());
    const episodes = await Promise.all(
      Array.from({ length: groupSize }, (_, index) => schedule(() => this.runEpisode(task, groupId, index, purpose, sampling))),
    );
    const interrupted = episodes.some((e) => e.status === 'interrupted');
    const status: GroupStatus = interrupted ? 'aborted' : 'complete';
    await emitGroup(1, { GroupCompleted: { status, episode_ids: episodes.map((e) => e.episodeId), duration_ms: Date.now() - started } });
    return { groupId, status, episodes, policyVersion: version, purpose };
  }

  private event(fields: Omit<Parameters<typeof newTrajectoryEvent>[0], 'run_id' | 'producer_id' | 'tags'>): TrajectoryEvent {
    return newTrajectoryEvent({ ...fields, run_id: this.opts.runId, producer_id: this.opts.producerId, tags: this.opts.tags ?? {} });
  }

  private async runEpisode(task: TaskSpec, groupId: string, index: number, purpose: Purpose, sampling: SamplingOptions): Promise<EpisodeOutcome> {
    const o = this.opts;
    const episodeId = randomUUID();
    const startedAt = Date.now();
    let seq = 0;
    const emit = (payload: TrajectoryEventPayload, policyVersion = o.policy.currentPolicy().version) =>
      o.sink.append(this.event({ group_id: groupId, episode_id: episodeId, seq: seq++, policy_version: policyVersion, purpose, payload }));

    // The deadline and shutdown both abort in-flight policy calls; which one fired decides the status.
    const deadline = AbortSignal.timeout(o.episodeTimeoutMs);
    const signal = o.interrupt ? AbortSignal.any([deadline, o.interrupt]) : deadline;
    const envSeed = hashSeed(task.id, index) % 2 ** 31;
    const totals = { turns: 0, promptTokens: 0, completionTokens: 0 };
    let finalObservation: ObservationRef | null = null;
    let status: EpisodeStatus;
    let reward: RewardResult | null = null;
    let failure: { code: string; message: string } | null = null;

    // Every episode of a group gets EpisodeStarted and EpisodeFinished, even one that never ran
    // (interrupted while queued, or its environment failed to start).
    let startEmitted = false;
    const emitStart = async (instanceId: string | null) => {
      startEmitted = true;
      await emit({ EpisodeStarted: { episode_index: index, env_seed: envSeed, env_instance_id: instanceId } });
    };
    const env = signal.aborted ? new Interrupted('not started') : await o.environments.create().catch((err: unknown) => err as Error);
    try {
      if (env instanceof Error) throw env;
      const reset = await race(env.reset(task, envSeed), signal);
      await emitStart(reset.instanceId ?? null);
      const conversation = new Conversation(o.environments.sendsImages ?? false, o.environments.imagesInPrompt ?? 1);
      conversation.add('system', reset.system);
      conversation.add('user', reset.observation.text, reset.observation);
      let observation = reset.observation;
      let shownUpTo = 0; // messages already stored in an earlier Turn
      let done = false;
      for (let turn = 0; turn < o.maxTurns && !done; turn++) {
        const promptImages = conversation.promptImages();
        const completion = await race(o.policy.complete(conversation.request(), sampling, signal), signal);
        const envStarted = Date.now();
        const step = await race(env.step(completion.text), signal);
        const envLatency = Date.now() - envStarted;
        await emit({
          Turn: {
            turn_index: turn,
            model: completion.model,
            prompt_token_ids: completion.promptTokenIds,
            completion_token_ids: completion.completionTokenIds,
            completion_logprobs: completion.completionLogprobs,
            token_policy_versions: null,
            // The full prompt is in prompt_token_ids; after the first turn store only what is new.
            prompt_format: turn === 0 ? 'messages_json' : 'messages_delta_json',
            prompt: conversation.stored(shownUpTo),
            completion_text: completion.text,
            action: step.action,
            action_parse_error: step.parseError,
            observation: observationRef(observation),
            latency_ms: Math.round(completion.latencyMs),
            env_latency_ms: envLatency,
            finish_reason: completion.finishReason,
            request_id: completion.requestId,
            // What the server expanded into image placeholder tokens, in prompt order, and how.
            prompt_images: promptImages,
            image_processing: promptImages.length > 0 ? o.imageProcessing! : null,
          },
        }, completion.policyVersion);
        shownUpTo = conversation.length;
        totals.turns++;
        totals.promptTokens += completion.promptTokenIds.length;
        totals.completionTokens += completion.completionTokenIds.length;
        conversation.add('assistant', completion.text);
        done = step.done;
        observation = step.observation;
        if (!done) conversation.add('user', feedback(step.parseError, step.observation), step.observation);
      }
      finalObservation = observationRef(observation);
      reward = await race(env.reward(), signal);
      status = done ? (reward.success ? 'success' : 'failure') : 'timeout';
      if (!done) failure = { code: 'TRAJ_E_MAX_TURNS', message: `no final answer within ${o.maxTurns} turns` };
    } catch (err) {
      if (o.interrupt?.aborted && !deadline.aborted) {
        status = 'interrupted';
        failure = { code: 'TRAJ_E_INTERRUPTED', message: 'the producer was shut down while the episode ran' };
      } else if (deadline.aborted) {
        status = 'timeout';
        failure = { code: 'TRAJ_E_EPISODE_DEADLINE', message: `the episode ran past rollout.episode_timeout_s (${o.episodeTimeoutMs} ms)` };
        // What the agent achieved before the deadline still counts: the environment judges it.
        if (!(env instanceof Error)) reward = await env.reward().catch(() => null);
      } else {
        status = 'error';
        failure = describeFailure(err);
        o.logger?.warn({ groupId, episodeId, code: failure.code, reason: failure.message }, 'episode failed');
      }
    } finally {
      if (!(env instanceof Error)) await env.close().catch((err: unknown) => o.logger?.warn({ err: (err as Error).message }, 'closing the environment failed'));
    }
    if (!startEmitted) await emitStart(null);
    if (reward && status !== 'error' && status !== 'interrupted') {
      await emit({ Reward: { value: reward.value, components: reward.components, source: reward.source, turn_index: null } });
    }
    await emit({
      EpisodeFinished: {
        status,
        num_turns: totals.turns,
        prompt_tokens: totals.promptTokens,
        completion_tokens: totals.completionTokens,
        duration_ms: Date.now() - startedAt,
        error_code: failure?.code ?? null,
        error_message: failure?.message ?? null,
        final_observation: finalObservation,
      },
    });
    return { episodeId, status, reward: reward && status !== 'error' && status !== 'interrupted' ? reward.value : null, turns: totals.turns, errorCode: failure?.code ?? null };
  }
}

/** What the model reads after a step: the parse error first (so it can correct itself), then the observation. */
function feedback(parseError: string | null, observation: Observation): string {
  return parseError ? `Your last reply was not a valid action: ${parseError}\n${observation.text}` : observation.text;
}

function observationRef(o: Observation): ObservationRef | null {
  if (!o.image) return null;
  return { sha256: o.image.sha256, uri: o.image.uri, media_type: o.image.mediaType, byte_size: o.image.byteSize, width: o.image.width, height: o.image.height };
}

/** Rejects as soon as `signal` aborts, even if `work` ignores signals (a hung page). */
function race<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new Interrupted('aborted'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Interrupted('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

