/**
 * The rollout worker behind `trajstore rollout`: follows the trainer through the log, starts
 * GRPO groups while pacing admits them, runs their episodes with bounded concurrency (p-queue),
 * runs held-out eval groups against each new policy version, and shuts down cleanly.
 *
 * Shutdown (`stop()`, wired to SIGTERM/SIGINT by the CLI): no new group starts; running episodes
 * get `graceMs` to finish; after that they are interrupted (status interrupted, their groups
 * aborted); then every event is flushed to Kafka and `run()` resolves.
 */
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import PQueue from 'p-queue';
import type { Kafka } from 'kafkajs';
import type { TrajstoreConfig } from '../config/index.js';
import { groupAdvantages } from '../consumers/trainer/filters.js';
import type { ChatCompletionResponse } from '../inference/vllm-api.js';
import type { Logger } from '../util/logger.js';
import type { EnvironmentFactory, TaskSpec } from './environment.js';
import { ProducerError } from './errors.js';
import { EventWriter } from './event-writer.js';
import { GroupRunner, type GroupOutcome } from './group-runner.js';
import { StalenessPacer } from './pacing.js';
import { PolicyClient, type SamplingOptions } from './policy-client.js';
import { TrainerProgress } from './trainer-progress.js';

export interface RolloutWorkerOptions {
  config: TrajstoreConfig;
  kafka: Kafka;
  environments: EnvironmentFactory;
  logger: Logger;
  /** Stop after this many train groups (default: run until stopped). */
  maxGroups?: number;
  /** Eval mode: run only the held-out eval groups for each new policy version, no train groups. */
  evalOnly?: boolean;
  /** Time running episodes get to finish after stop(). Default 30 s. */
  graceMs?: number;
  /** First train task index (tasks are (seed, split, index)); default: derived from the producer id. */
  taskOffset?: number;
  producerId?: string;
  /** Called with a progress snapshot every `progressEveryMs` and at the end. */
  onProgress?: (p: RolloutProgress) => void;
  progressEveryMs?: number;
  /** Sees every raw policy answer (auditing; tests compare events with it). */
  onPolicyResponse?: (response: ChatCompletionResponse) => void;
}

export interface EvalReport {
  version: number;
  episodes: number;
  successes: number;
  rewardMean: number;
}

export interface RolloutProgress {
  groupsDone: number;
  groupsRunning: number;
  episodesDone: number;
  episodesPerSecond: number;
  rewardMean: number;
  successRate: number;
  errors: number;
  policyVersion: number;
  /** Train groups pacing is holding back (0 when admitted or pacing is off). */
  pacingBlocked: boolean;
  evals: EvalReport[];
}

export function formatProgress(p: RolloutProgress): string {
  const last = p.evals.at(-1);
  const evalPart = last ? ` · eval v${last.version} ${(100 * last.successes / Math.max(1, last.episodes)).toFixed(0)}%` : '';
  return `groups ${p.groupsDone} done, ${p.groupsRunning} running · ${p.episodesPerSecond.toFixed(2)} episodes/s · reward ${p.rewardMean.toFixed(3)} · success ${(100 * p.successRate).toFixed(1)}% · errors ${p.errors} · policy v${p.policyVersion}${p.pacingBlocked ? ' · waiting for the trainer (staleness pacing)' : ''}${evalPart}`;
}

export class RolloutWorker {
  readonly producerId: string;
  readonly progress: TrainerProgress;
  readonly writer: EventWriter;
  readonly pacer: StalenessPacer;
  private readonly policy: PolicyClient;
  private readonly runner: GroupRunner;
  private readonly episodes: PQueue;
  private readonly stopController = new AbortController();
  private readonly interruptController = new AbortController();
  private readonly active = new Set<Promise<void>>();
  private readonly evalQueue: Array<{ task: TaskSpec; version: number }> = [];
  private readonly evalResults = new Map<number, EvalReport & { groupsLeft: number; rewardSum: number }>();
  private readonly sampling: SamplingOptions;
  private readonly evalSampling: SamplingOptions;
  private stats = { groupsDone: 0, episodesDone: 0, rewardSum: 0, rewarded: 0, successes: 0, errors: 0, trainStarted: 0 };
  private startedAt = Date.now();
  private blocked = false;
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: RolloutWorkerOptions) {
    const { config } = opts;
    this.producerId = opts.producerId ?? `${hostname()}/${process.pid}`;
    const r = config.rollout;
    this.progress = new TrainerProgress({
      kafka: opts.kafka,
      runId: config.run.id,
      baseModel: config.model.name,
      policyVersionsTopic: config.kafka.topics.policy_versions,
      trainerMetricsTopic: config.kafka.topics.trainer_metrics,
      logger: opts.logger,
    });
    this.policy = new PolicyClient({
      apiBases: config.inference.api_bases,
      apiKey: config.inference.api_key,
      policy: this.progress,
      timeoutMs: config.inference.request_timeout_s * 1000,
      maxRetries: config.inference.max_retries,
      logger: opts.logger,
      onResponse: opts.onPolicyResponse,
      ...(config.inference.image_processing
        ? { mmProcessorKwargs: { min_pixels: config.inference.image_processing.min_pixels, max_pixels: config.inference.image_processing.max_pixels } }
        : {}),
    });
    this.writer = new EventWriter({ kafka: opts.kafka, topic: config.kafka.topics.trajectories, compression: r.compression, logger: opts.logger });
    this.pacer = new StalenessPacer({
      enabled: r.staleness_pacing,
      maxStaleness: config.training.max_staleness,
      batchSize: config.training.batch_size,
      publishEverySteps: config.training.publish_every_steps,
      producers: r.num_producers,
    }, this.progress);
    this.episodes = new PQueue({ concurrency: r.concurrency });
    this.sampling = { temperature: r.temperature, top_p: r.top_p, max_tokens: r.max_tokens };
    this.evalSampling = { temperature: r.eval_temperature, top_p: r.eval_temperature === 0 ? 1 : r.top_p, max_tokens: r.max_tokens, seed: config.run.seed };
    this.runner = new GroupRunner({
      runId: config.run.id,
      producerId: this.producerId,
      groupSize: r.num_rollouts,
      maxTurns: r.max_turns,
      episodeTimeoutMs: r.episode_timeout_s * 1000,
      sampling: this.sampling,
      policy: this.policy,
      environments: opts.environments,
      sink: this.writer,
      schedule: (fn) => this.episodes.add(fn),
      interrupt: this.interruptController.signal,
      logger: opts.logger,
      imageProcessing: config.inference.image_processing ?? null,
    });
  }

  /** Stop taking groups; interrupt what still runs after the grace period. Idempotent. */
  stop(reason = 'stop requested'): void {
    if (this.stopController.signal.aborted) return;
    this.opts.logger.info({ reason, graceMs: this.opts.graceMs ?? 30_000, running: this.active.size }, 'stopping: no new groups; running episodes get the grace period');
    this.stopController.abort();
    this.graceTimer = setTimeout(() => this.interruptController.abort(), this.opts.graceMs ?? 30_000);
    this.graceTimer.unref();
  }

  get stopping(): boolean {
    return this.stopController.signal.aborted;
  }

  snapshot(): RolloutProgress {
    const seconds = Math.max(1e-3, (Date.now() - this.startedAt) / 1000);
    return {
      groupsDone: this.stats.groupsDone,
      groupsRunning: this.active.size,
      episodesDone: this.stats.episodesDone,
      episodesPerSecond: this.stats.episodesDone / seconds,
      rewardMean: this.stats.rewarded ? this.stats.rewardSum / this.stats.rewarded : 0,
      successRate: this.stats.episodesDone ? this.stats.successes / this.stats.episodesDone : 0,
      errors: this.stats.errors,
      policyVersion: this.progress.latestVersion(),
      pacingBlocked: this.blocked,
      evals: [...this.evalResults.values()].filter((e) => e.groupsLeft === 0).map(({ version, episodes, successes, rewardMean }) => ({ version, episodes, successes, rewardMean })),
    };
  }

  /** Runs until maxGroups train groups completed or stop(); always flushes. */
  async run(): Promise<RolloutProgress> {
    const { config, logger } = this.opts;
    await this.writer.connect();
    await this.progress.start();
    this.startedAt = Date.now();
    if (this.opts.evalOnly && config.rollout.eval_tasks === 0) {
      throw new ProducerError('TRAJ_E_ENV_CONFIG', 'eval mode needs held-out tasks, but rollout.eval_tasks is 0', { hint: 'set rollout.eval_tasks to the number of held-out tasks per policy version' });
    }
    if (config.rollout.eval_tasks > 0) {
      this.progress.on('version', (pv) => this.scheduleEval(pv.version));
      this.scheduleEval(this.progress.latestVersion());
    }
    const ticker = this.opts.onProgress ? setInterval(() => this.opts.onProgress!(this.snapshot()), this.opts.progressEveryMs ?? 5_000) : undefined;
    ticker?.unref();
    logger.info({ producerId: this.producerId, policy: this.policy.currentPolicy(), run: config.run.id }, 'rollout started');
    try {
      await this.loop();
      await Promise.all(this.active);
    } finally {
      if (ticker) clearInterval(ticker);
      if (this.graceTimer) clearTimeout(this.graceTimer);
      await this.writer.close().finally(() => this.progress.stop());
    }
    const final = this.snapshot();
    this.opts.onProgress?.(final);
    logger.info({ ...final, evals: undefined, acked: this.writer.acked }, 'rollout finished');
    return final;
  }

  private async loop(): Promise<void> {
    const { config } = this.opts;
    const g = config.rollout.num_rollouts;
    // Enough groups in flight to keep every episode slot busy, and one more ready to go.
    const maxActive = Math.ceil(config.rollout.concurrency / g) + 1;
    const offset = this.opts.taskOffset ?? 0;
    const stop = this.stopController.signal;
    while (!stop.aborted) {
      if (this.active.size >= maxActive) {
        await Promise.race([...this.active, aborted(stop)]);
        continue;
      }
      const pendingEval = this.evalQueue.shift();
      if (pendingEval) {
        this.launch(pendingEval.task, 'eval', pendingEval.version);
        continue;
      }
      if (this.opts.evalOnly) {
        await sleep(200, undefined, { signal: stop }).catch(() => undefined);
        continue;
      }
      if (this.opts.maxGroups !== undefined && this.stats.trainStarted >= this.opts.maxGroups) break;
      if (!this.pacer.canStart()) {
        this.blocked = true;
        // Poll: a new version (admission may open) or an eval to run come from the log.
        await sleep(200, undefined, { signal: stop }).catch(() => undefined);
        this.blocked = false;
        continue;
      }
      this.pacer.onStarted();
      const index = offset + this.stats.trainStarted++;
      this.launch(this.opts.environments.task('train', index), 'train');
    }
  }

  private launch(task: TaskSpec, purpose: 'train' | 'eval', evalVersion?: number): void {
    const sampling = purpose === 'eval' ? this.evalSampling : this.sampling;
    // A greedy eval gives the same answer G times: one episode per task is enough then.
    const size = purpose === 'eval' && sampling.temperature === 0 ? 1 : undefined;
    const run = this.runner.runGroup(task, purpose, sampling, size).then(
      (outcome) => this.record(outcome, evalVersion),
      (err: unknown) => {
        // Only the event writer can fail a whole group (episode failures are caught inside):
        // Kafka is gone, so nothing more can be recorded. Stop.
        this.opts.logger.error({ err: (err as Error).message, task: task.id }, 'a group could not be written; stopping');
        this.stop('producing failed');
        this.interruptController.abort();
      },
    );
    const tracked = run.finally(() => this.active.delete(tracked));
    this.active.add(tracked);
  }

  private record(outcome: GroupOutcome, evalVersion: number | undefined): void {
    const s = this.stats;
    if (outcome.purpose === 'train') {
      s.groupsDone++;
      if (!trainable(outcome)) this.pacer.onUntrainable();
      for (const e of outcome.episodes) {
        s.episodesDone++;
        if (e.reward !== null) {
          s.rewardSum += e.reward;
          s.rewarded++;
        }
        if (e.status === 'success') s.successes++;
        if (e.status === 'error') s.errors++;
      }
      return;
    }
    const report = this.evalResults.get(evalVersion!);
    if (!report) return;
    for (const e of outcome.episodes) {
      report.episodes++;
      if (e.status === 'success') report.successes++;
      report.rewardSum += e.reward ?? 0;
    }
    report.rewardMean = report.rewardSum / Math.max(1, report.episodes);
    if (--report.groupsLeft === 0) {
      this.opts.logger.info({ version: report.version, episodes: report.episodes, successRate: report.successes / Math.max(1, report.episodes), rewardMean: report.rewardMean }, 'eval finished for policy version');
    }
  }

  private scheduleEval(version: number): void {
    const n = this.opts.config.rollout.eval_tasks;
    if (this.evalResults.has(version) || this.stopping) return;
    this.evalResults.set(version, { version, episodes: 0, successes: 0, rewardMean: 0, groupsLeft: n, rewardSum: 0 });
    for (let i = 0; i < n; i++) this.evalQueue.push({ task: this.opts.environments.task('eval', i), version });
  }
}

/**
 * Whether the trainer can train this group: complete, at least two rewarded episodes that did not
 * error, and rewards that differ (the trainer's own filter, `groupAdvantages`, decides).
 */
function trainable(outcome: GroupOutcome): boolean {
  if (outcome.status !== 'complete') return false;
  const rewards = outcome.episodes.filter((e) => e.status !== 'error' && e.status !== 'interrupted' && e.reward !== null).map((e) => e.reward!);
  return rewards.length >= 2 && groupAdvantages(rewards, false) !== null;
}

function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((done) => {
    if (signal.aborted) done();
    else signal.addEventListener('abort', () => done(), { once: true });
  });
}
