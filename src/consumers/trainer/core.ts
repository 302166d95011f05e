/**
 * The trainer's core, shared by streaming training and replay: events in, optimizer steps,
 * checkpoints and versions out. Everything runs on one logical thread (the driver awaits each
 * call), so the order of decisions is the order of the log and nothing needs a lock.
 *
 *   ingest(records) → decode → assemble groups → filters + advantages → batcher
 *                  → step: batch file → engine.trainStep → ledger line → metrics event
 *                  → every publish_every_steps / save_every_steps: checkpoint (engine save,
 *                    trainer state as metadata) → commit offsets → adapter store → policy.versions
 *                    → load on the policy servers
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Producer } from 'kafkajs';
import type { TrajstoreConfig } from '../../config/index.js';
import type { EngineClient } from '../../engine/client.js';
import { writeBatchFile } from '../../engine/batch-file.js';
import { EngineBatchError, EngineImageError } from '../../engine/errors.js';
import { buildDeadLetter, encodeTrainerStepMetrics } from '../../schemas/index.js';
import { s3OptionsOf } from '../../storage/s3.js';
import type { Logger } from '../../util/logger.js';
import { openAdapterStore, type AdapterStore, type StoredAdapter } from './adapter-store.js';
import { GroupAssembler, type AssemblerCounters } from './assembler.js';
import { StepBatcher, stepTensors } from './batcher.js';
import { checkpointDir, pruneCheckpoints, type ReplayPosition, type TrainerState } from './checkpoints.js';
import { imageTokenIdFor, isVisionRun } from './engine-setup.js';
import { prepareGroup, type FilterOptions } from './filters.js';
import { ImageBlobs } from './image-blobs.js';
import { Ledger } from './ledger.js';
import { OffsetTracker, type ResumeState } from './offsets.js';
import type { VersionPublisher } from './publisher.js';
import { decodeRecord, type LogRecord } from './source.js';
import { buildStepMetrics } from './step-metrics.js';
import type { AssembledGroup, DropReason, EpisodeDropReason, TrainGroup } from './types.js';

export interface CoreOptions {
  config: TrajstoreConfig;
  /** The run being trained (config.run.id, or replay's --run). */
  runId: string;
  /** The run whose events are read (replay: --source-run). */
  sourceRunId: string;
  /**
   * stream: staleness is measured against the versions this trainer published;
   * replay: against the newest behavior version seen in the log so far (the source run's trainer
   * at that time), since the new run's own versions never sampled anything.
   */
  mode: 'stream' | 'replay';
  /** null only for a dry run. */
  engine: EngineClient | null;
  producer: Producer;
  publisher: VersionPublisher | null;
  logger: Logger;
  /** Called after a checkpoint is durable, with its resume offsets (stream: commit them to the run's group). */
  onCheckpoint?: (offsets: Map<number, number>) => Promise<void>;
  resume?: TrainerState;
  /**
   * The clock group timeouts run on (ms). Streaming: time the trainer spent waiting for new
   * records, not time it spent training, so a backlog read after a long step does not look
   * like silent producers. Replay: none (only log time counts).
   */
  idleClock?: () => number;
  /** Dry run: assemble and filter, count, but never call the engine. */
  dryRun?: boolean;
  /** Where the log counters in step metrics come from when groups are assembled elsewhere (replay readers). */
  logCounters?: () => AssemblerCounters;
  /** Replay: the source run and ranges read, kept in each checkpoint for `replay --resume`. */
  replaySource?: Pick<ReplayPosition, 'source_run' | 'ranges'>;
}

/** A group waiting in the batcher: what it still counts when it is trained, and (replay) its place in the merge. */
interface PendingGroup {
  episodeDrops: Partial<Record<EpisodeDropReason, number>>;
  downweighted: boolean;
  seq?: number;
  logVersionBefore?: number;
}

export class TrainerCore {
  step = 0;
  version = 0;
  private logVersion = 0;
  private logClock = 0;
  private published: StoredAdapter | null = null;
  private versionStep = 0;
  readonly assembler: GroupAssembler;
  readonly batcher: StepBatcher;
  readonly tracker: OffsetTracker;
  readonly ledger: Ledger;
  readonly totals: Record<string, number> = {};
  private droppedSinceStep: Record<string, number> = {};
  private pendingDrops: Record<string, string> = {};
  private readonly store: AdapterStore;
  private readonly filter: FilterOptions;
  /** Vision runs: where the engine reads the images of a batch (null for text runs). */
  private readonly images: ImageBlobs | null;
  private readonly outDir: string;
  private lastPublishMs: number | null = null;
  private readonly pendingGroups = new Map<string, PendingGroup>();
  /** Replay: groups the merge has handed over, and dead letters written, per partition. */
  private groupsRead = 0;
  private readonly deadLettered: Record<string, number> = {};
  /** Replay resumed from a checkpoint: what to skip of the range read again (see ReplayPosition). */
  private readonly replaySkip: { groupsRead: number; pending: Set<number>; deadLetters: Record<string, number> } | null = null;
  /** What a dry run would train: groups, tokens, and groups by versions behind (no sequences kept). */
  readonly dryRunPlan = { groups: 0, tokens: 0, staleness: {} as Record<string, number> };

  constructor(private readonly o: CoreOptions) {
    const c = o.config;
    this.outDir = resolve(c.training.output_dir);
    mkdirSync(join(this.outDir, 'batches'), { recursive: true });
    this.store = openAdapterStore({ adapters: c.storage.adapters, adapterCache: c.storage.adapter_cache, s3: s3OptionsOf(c.storage) });
    this.filter = {
      maxStaleness: c.training.max_staleness,
      stalePolicy: c.training.stale_policy,
      stdScaling: c.training.advantage_std_scaling,
      maxSeqLength: c.model.max_seq_length,
      imageTokenId: imageTokenIdFor(c),
    };
    this.images = isVisionRun(c) ? new ImageBlobs(c.storage, { logger: o.logger }) : null;
    const r = o.resume;
    this.tracker = new OffsetTracker(r?.resume);
    this.assembler = new GroupAssembler({
      runId: o.sourceRunId,
      timeoutMs: c.training.group_timeout_s * 1000,
      maxOpenGroups: c.training.max_open_groups,
      skip: OffsetTracker.skipSet(r?.resume),
    });
    this.batcher = new StepBatcher({ groupsPerStep: c.training.batch_size, maxTokensPerStep: c.training.max_tokens_per_step });
    this.ledger = new Ledger(join(this.outDir, 'ledger.jsonl'));
    if (r) {
      this.step = r.step;
      this.version = r.policy_version;
      this.logVersion = r.log_version ?? 0;
      this.versionStep = r.step;
      Object.assign(this.totals, r.totals);
      if (r.replay) {
        this.replaySkip = { groupsRead: r.replay.groups_read, pending: new Set(r.replay.pending), deadLetters: { ...r.replay.dead_lettered } };
        Object.assign(this.deadLettered, r.replay.dead_lettered);
        // Skipped groups raise the log version again as they pass, so start from where the first pending one was decided.
        if (r.replay.pending.length > 0) this.logVersion = r.replay.log_version_before_pending;
      }
      this.ledger.truncate(r.ledger_seq);
    } else {
      this.ledger.truncate(0);
    }
  }

  get done(): boolean {
    return this.step >= this.o.config.training.max_steps;
  }

  get resumeOffsets(): Map<number, number> {
    const { state } = this.tracker.snapshot(this.undecided());
    return new Map(Object.entries(state).map(([p, r]) => [Number(p), r.offset]));
  }

  /** Decodes and assembles records in log order; trains whenever a step is ready. */
  async ingest(records: LogRecord[], topic: string): Promise<void> {
    for (const rec of records) {
      if (this.done) return;
      this.tracker.read(rec.partition, rec.offset);
      let event;
      try {
        event = decodeRecord(rec);
      } catch (err) {
        await this.deadLetter(rec, topic, err);
        continue;
      }
      if (event.run_id === this.o.sourceRunId && event.timestamp > this.logClock) this.logClock = event.timestamp;
      const { completed, evicted } = this.assembler.accept(event, { partition: rec.partition, offset: rec.offset }, this.o.idleClock?.() ?? 0);
      if (evicted) await this.decide(evicted, 'evicted');
      if (completed) await this.decide(completed);
      await this.trainReadySteps(false);
    }
  }

  /**
   * A group assembled elsewhere (replay readers assemble partitions in their own threads), in
   * the order the caller decided; trains whenever a step is ready.
   */
  async acceptGroup(group: AssembledGroup, evicted: boolean): Promise<void> {
    if (this.done) return;
    const seq = this.groupsRead++;
    const skip = this.replaySkip;
    if (skip && seq < skip.groupsRead && !skip.pending.has(seq)) {
      this.raiseLogVersion(group); // decided before the checkpoint resumed from: only its versions still count
      return;
    }
    if (evicted) await this.decide(group, 'evicted');
    else await this.decide(group, undefined, seq);
    await this.trainReadySteps(false);
  }

  /** A record a replay reader could not decode: decoded again here for the codec's typed error, then dead-lettered. */
  async rejectRecord(rec: LogRecord, topic: string): Promise<void> {
    const p = String(rec.partition);
    const skip = this.replaySkip?.deadLetters;
    if (skip && (skip[p] ?? 0) > 0) {
      skip[p]!--; // dead-lettered before the checkpoint resumed from
      return;
    }
    try {
      decodeRecord(rec);
    } catch (err) {
      await this.deadLetter(rec, topic, err);
      this.deadLettered[p] = (this.deadLettered[p] ?? 0) + 1;
      return;
    }
    throw new Error(`internal: record ${rec.partition}:${rec.offset} was reported undecodable but decodes`);
  }

  /**
   * Closes groups silent past the timeout: by log time (the run's newest event timestamp: other
   * producers went on writing while this group said nothing) and, when streaming, by idle time.
   */
  async expire(): Promise<void> {
    const idle = this.o.idleClock?.();
    for (const g of this.assembler.expire({ logMs: this.logClock, ...(idle === undefined ? {} : { wallMs: idle }) })) await this.decide(g);
    await this.trainReadySteps(false);
  }

  /** End of input (replay range, or shutdown): trains what is pending unless `keepPending`, then checkpoints. */
  async finish(opts: { closeOpen: boolean; flush: boolean }): Promise<void> {
    if (opts.closeOpen) for (const g of this.assembler.closeAll()) await this.decide(g);
    if (opts.flush) await this.trainReadySteps(true);
    if (this.o.dryRun) return;
    if (Object.keys(this.pendingDrops).length > 0) this.ledger.append({ step: this.step, policy_version: this.version, trained: [], dropped: this.takeDrops() });
    // Nothing new since the last checkpoint (e.g. max_steps just saved): no second save.
    if (this.lastSaved === this.saveKey()) return;
    await this.checkpoint(false);
  }

  private lastSaved = '';

  private saveKey(): string {
    return JSON.stringify([this.step, this.ledger.lastSeq, this.tracker.snapshotPeek(this.undecided())]);
  }

  /** `seq`: the group's place in a replay's merge. */
  private async decide(group: AssembledGroup, forced?: DropReason, seq?: number): Promise<void> {
    const logVersionBefore = this.logVersion;
    if (this.o.mode === 'replay') this.raiseLogVersion(group);
    if (forced) return this.drop(group, forced);
    const current = this.o.mode === 'stream' ? this.version : this.logVersion;
    const res = prepareGroup(group, current, this.filter);
    if (!res.ok) {
      if (res.detail) this.o.logger.warn({ group: group.groupId, reason: res.reason, detail: res.detail }, 'group dropped');
      this.countEpisodeDrops(res.episodeDrops);
      return this.drop(group, res.reason);
    }
    // Vision: every image the sequences cite must be under the engine's blob root, verified.
    const images = res.group.sequences.flatMap((q) => q.images);
    if (images.length > 0 && this.images) {
      const { missing } = await this.images.ensure(images, { checkOnly: this.o.dryRun === true });
      if (missing.length > 0) {
        this.o.logger.warn({ group: group.groupId, missing: missing.slice(0, 5), count: missing.length }, 'group dropped: an image it cites is not in the blob store');
        this.countEpisodeDrops(res.episodeDrops);
        return this.drop(group, 'image_missing');
      }
    }
    // Counted when the group is trained: one waiting at a checkpoint is read and decided again after a resume.
    this.pendingGroups.set(res.group.groupId, { episodeDrops: res.episodeDrops, downweighted: res.group.weight < 1, ...(seq === undefined ? {} : { seq, logVersionBefore }) });
    this.batcher.add(res.group);
  }

  private raiseLogVersion(group: AssembledGroup): void {
    for (const ep of group.episodes) for (const t of ep.turns) if (t.policyVersion > this.logVersion) this.logVersion = t.policyVersion;
  }

  private countEpisodeDrops(drops: Partial<Record<EpisodeDropReason, number>>): void {
    for (const [k, n] of Object.entries(drops)) this.count(`episodes_dropped_${k}`, n);
  }

  /** A group leaves the batcher, trained or dropped: the counts it carried are taken now. */
  private settle(group: TrainGroup): void {
    const p = this.pendingGroups.get(group.groupId);
    this.pendingGroups.delete(group.groupId);
    if (!p) return;
    this.countEpisodeDrops(p.episodeDrops);
    if (p.downweighted) this.count('groups_downweighted', 1);
  }

  private drop(group: Pick<AssembledGroup, 'groupId' | 'first'>, reason: DropReason): void {
    this.pendingDrops[group.groupId] = reason;
    this.droppedSinceStep[reason] = (this.droppedSinceStep[reason] ?? 0) + 1;
    this.count(`groups_dropped_${reason}`, 1);
    this.tracker.decide(group.groupId, group.first);
  }

  private async trainReadySteps(flush: boolean): Promise<void> {
    for (;;) {
      if (this.done) return;
      const groups = this.batcher.take(flush);
      if (!groups) return;
      if (this.o.dryRun) {
        for (const g of groups) {
          this.settle(g);
          this.dryRunPlan.groups++;
          this.dryRunPlan.tokens += g.tokens;
          this.dryRunPlan.staleness[String(g.versionsBehind)] = (this.dryRunPlan.staleness[String(g.versionsBehind)] ?? 0) + 1;
          this.tracker.decide(g.groupId, g.first);
        }
        continue;
      }
      await this.trainStep(groups);
    }
  }

  private async trainStep(groups: TrainGroup[]): Promise<void> {
    const t0 = performance.now();
    const batchPath = join(this.outDir, 'batches', `step-${this.step + 1}.safetensors`);
    await writeBatchFile(batchPath, stepTensors(groups), { run_id: this.o.runId, step: String(this.step + 1) });
    let reply;
    try {
      reply = await this.engine().trainStep(batchPath, { policyVersion: this.currentVersion() });
    } catch (err) {
      if (err instanceof EngineImageError) {
        rmSync(batchPath, { force: true });
        return this.retryWithoutImageFault(groups, err);
      }
      // A batch the engine refuses (token ids outside the model's vocabulary: events from another
      // model) would be refused again after every restart: drop its groups, counted, and go on.
      if (!(err instanceof EngineBatchError)) throw err;
      this.o.logger.error({ err: err.message, groups: groups.map((g) => g.groupId) }, 'the engine refused the batch; its groups are dropped as invalid_batch');
      for (const g of groups) {
        this.settle(g);
        this.drop({ groupId: g.groupId, first: g.first }, 'invalid_batch');
      }
      return;
    } finally {
      rmSync(batchPath, { force: true });
    }
    this.step++;
    for (const g of groups) {
      this.settle(g);
      this.tracker.decide(g.groupId, g.first);
    }
    this.ledger.append({ step: this.step, policy_version: this.version, trained: groups.map((g) => g.groupId), dropped: this.takeDrops() });
    this.count('groups_trained', groups.length);
    this.count('tokens_trained', groups.reduce((n, g) => n + g.tokens, 0));
    const stepTimeMs = performance.now() - t0;

    const c = this.o.config;
    const publish = this.step % c.training.publish_every_steps === 0;
    const save = publish || this.step % c.checkpoint.save_every_steps === 0 || this.done;
    if (publish) {
      this.version++;
      this.versionStep = this.step;
    }
    const droppedSinceLastStep = this.droppedSinceStep;
    this.droppedSinceStep = {};
    const tTrained = performance.now();
    let ckpt: { dir: string; adapterDir: string } | null = null;
    if (save) ckpt = await this.checkpoint(publish);
    const tSaved = performance.now();
    if (publish && ckpt) await this.publishVersion(ckpt, reply.metrics, tTrained);
    else await this.o.publisher?.catchUp();
    const tPublished = performance.now();

    const metrics = buildStepMetrics({
      runId: this.o.runId,
      step: this.step,
      policyVersion: this.version,
      groups,
      engine: reply.metrics,
      stepTimeMs,
      droppedSinceLastStep,
      extra: {
        open_groups: this.assembler.openCount,
        versions_behind_servers: this.o.publisher?.behindCount ?? 0,
        ...(this.lastPublishMs !== null && publish ? { publish_load_ms: this.lastPublishMs } : {}),
        ...Object.fromEntries(Object.entries(this.o.logCounters?.() ?? this.assembler.counters).map(([k, v]) => [`log_${k}`, v])),
      },
    });
    await this.o.producer.send({ topic: c.kafka.topics.trainer_metrics, messages: [{ key: this.o.runId, value: encodeTrainerStepMetrics(metrics) }] });
    this.o.logger.info({ step: this.step, version: this.version, loss: round(metrics.loss), reward_mean: round(metrics.reward_mean),
      groups: groups.length, tokens: metrics.num_tokens, tokens_per_s: Math.round(metrics.tokens_per_second),
      mismatch: round(metrics.behavior_logprob_abs_diff_mean), step_ms: Math.round(stepTimeMs),
      save_ms: Math.round(tSaved - tTrained), publish_ms: Math.round(tPublished - tSaved), metrics_ms: Math.round(performance.now() - tPublished) }, 'step');
  }

  /**
   * The engine refused the step for an image (the trainer's own checks passed: a blob deleted
   * since, or a placeholder run the count check cannot see, e.g. pads split around an image).
   * The same batch would be refused after every restart, so the groups at fault are dropped
   * (image_missing / image_placeholder_mismatch, counted) and the step is tried again with the
   * others; when the engine names no sequence or image, every group of the step is dropped.
   */
  private async retryWithoutImageFault(groups: TrainGroup[], err: EngineImageError): Promise<void> {
    const reason: DropReason = err.code === 'TRAJ_E_ENGINE_IMAGE_MISSING' ? 'image_missing' : 'image_placeholder_mismatch';
    let faulty: TrainGroup[];
    if (err.sha256 !== null) {
      const sha = err.sha256;
      faulty = groups.filter((g) => g.sequences.some((q) => q.images.includes(sha)));
      this.images?.forget(sha);
    } else if (err.sequence !== null) {
      let left = err.sequence;
      faulty = groups.filter((g) => {
        const mine = left >= 0 && left < g.sequences.length;
        left -= g.sequences.length;
        return mine;
      });
    } else {
      faulty = [];
    }
    if (faulty.length === 0) faulty = groups;
    this.o.logger.error({ err: err.message, reason, groups: faulty.map((g) => g.groupId) }, 'the engine refused an image of the batch; the groups citing it are dropped');
    for (const g of faulty) {
      this.settle(g);
      this.drop({ groupId: g.groupId, first: g.first }, reason);
    }
    const rest = groups.filter((g) => !faulty.includes(g));
    if (rest.length > 0) await this.trainStep(rest);
  }

  private engine(): EngineClient {
    if (!this.o.engine) throw new Error('internal: a dry run reached the engine');
    return this.o.engine;
  }

  private currentVersion(): number {
    return this.o.mode === 'stream' ? this.version : this.logVersion;
  }

  /** Saves a checkpoint (durable when this returns), then commits its offsets and prunes old ones. */
  private async checkpoint(isVersion: boolean): Promise<{ dir: string; adapterDir: string }> {
    const c = this.o.config;
    const { state: resume, forgotten } = this.tracker.snapshot(this.undecided());
    this.assembler.forget(forgotten);
    const state: TrainerState = {
      format: 'trajstore-trainer',
      run_id: this.o.runId,
      step: this.step,
      policy_version: this.version,
      published: isVersion ? null : this.published && { version: this.published.version, dir: this.published.dir, checksum: this.published.checksum },
      topic: c.kafka.topics.trajectories,
      resume,
      ledger_seq: this.ledger.lastSeq,
      totals: { ...this.totals },
      log_version: this.logVersion,
      ...(this.o.replaySource ? { replay: this.replayPosition(this.o.replaySource) } : {}),
    };
    const dir = checkpointDir(c.checkpoint.dir, this.step);
    const saved = await this.engine().save(dir, { metadata: { trainer: state }, policyVersion: this.version });
    this.lastSaved = this.saveKey();
    const t0 = performance.now();
    await this.o.onCheckpoint?.(new Map(Object.entries(resume).map(([p, r]) => [Number(p), r.offset])));
    this.o.logger.debug({ step: this.step, engine_save_s: saved.metrics.elapsed_s, commit_ms: Math.round(performance.now() - t0) }, 'checkpoint durable, offsets committed');
    pruneCheckpoints(c.checkpoint.dir, c.checkpoint.keep_last, [dir]);
    return { dir, adapterDir: saved.result.adapter_path ?? join(dir, 'adapter') };
  }

  /**
   * Copies the checkpoint's adapter into the store, loads it on the servers, writes
   * policy.versions. `stepDoneAt` (the optimizer step's end) starts the publish latency clock:
   * saving and storing count, since no server can load a version before they are done.
   */
  private async publishVersion(ckpt: { dir: string; adapterDir: string }, engineMetrics: Record<string, number | null>, stepDoneAt: number): Promise<void> {
    const adapter = await this.store.publish(this.o.runId, this.version, ckpt.adapterDir);
    const parent = this.published?.version ?? null;
    this.published = adapter;
    this.count('versions_published', 1);
    if (!this.o.publisher) return;
    const metrics: Record<string, number> = {};
    for (const k of ['loss', 'clip_fraction', 'mismatch_abs_mean', 'grad_norm']) {
      const v = engineMetrics[k];
      if (typeof v === 'number' && Number.isFinite(v)) metrics[k] = v;
    }
    const { loadMs } = await this.o.publisher.publish({ adapter, step: this.versionStep, parentVersion: parent, checkpointUri: `file://${ckpt.dir}`, metrics });
    this.lastPublishMs = performance.now() - stepDoneAt;
    this.o.logger.info({ version: adapter.version, checksum: adapter.checksum, servers_ms: loadMs.map((m) => (m === null ? null : Math.round(m))) }, 'version published');
  }

  /**
   * After a resume: makes sure the checkpoint's newest version is in the store, announced and on
   * the servers (the crash may have come between the save and any of those).
   */
  async republishAfterResume(checkpoint: { dir: string; step: number }): Promise<void> {
    if (this.version === 0) return;
    const atVersionStep = this.o.resume?.published === null;
    if (atVersionStep) {
      const adapter = await this.store.publish(this.o.runId, this.version, join(checkpoint.dir, 'adapter'));
      this.published = adapter;
      await this.o.publisher?.publish({ adapter, step: checkpoint.step, parentVersion: this.version > 1 ? this.version - 1 : null, checkpointUri: `file://${checkpoint.dir}`, metrics: {} });
    } else if (this.o.resume?.published) {
      const { version, checksum } = this.o.resume.published;
      this.published = await this.store.open(this.o.runId, version, checksum);
      this.o.publisher?.setLatest(this.published);
      await this.o.publisher?.catchUp();
    }
  }

  /** Publishes the current adapter as a version if steps were trained since the last one (end of a replay). */
  async publishFinal(): Promise<void> {
    if (this.step === 0 || this.versionStep === this.step) return;
    this.version++;
    this.versionStep = this.step;
    const stepDoneAt = performance.now();
    const ckpt = await this.checkpoint(true);
    await this.publishVersion(ckpt, {}, stepDoneAt);
  }

  /** The newest version in the adapter store (null before the first). */
  get publishedAdapter(): StoredAdapter | null {
    return this.published;
  }

  async catchUpServers(): Promise<void> {
    await this.o.publisher?.catchUp();
  }

  private replayPosition(source: Pick<ReplayPosition, 'source_run' | 'ranges'>): ReplayPosition {
    const pending = [...this.pendingGroups.values()].filter((p) => p.seq !== undefined).sort((a, b) => a.seq! - b.seq!);
    return {
      ...source,
      groups_read: this.groupsRead,
      pending: pending.map((p) => p.seq!),
      log_version_before_pending: pending[0]?.logVersionBefore ?? this.logVersion,
      dead_lettered: { ...this.deadLettered },
    };
  }

  private undecided() {
    return [...this.assembler.openFirstOffsets(), ...this.batcher.pendingGroups.map((g) => g.first)];
  }

  private takeDrops(): Record<string, string> {
    const d = this.pendingDrops;
    this.pendingDrops = {};
    return d;
  }

  private count(key: string, n: number): void {
    this.totals[key] = (this.totals[key] ?? 0) + n;
  }

  private async deadLetter(rec: LogRecord, topic: string, err: unknown): Promise<void> {
    this.count('dead_letters', 1);
    const dl = buildDeadLetter({ value: rec.value, error: err, source: { topic, partition: rec.partition, offset: rec.offset, timestamp: rec.timestamp }, rejectedBy: `trainer:${this.o.runId}` });
    await this.o.producer.send({ topic: this.o.config.kafka.topics.dead_letter, messages: [{ key: dl.key, value: dl.value, headers: dl.headers }] });
    this.o.logger.warn({ partition: rec.partition, offset: rec.offset, err: String(err) }, 'undecodable trajectory event sent to the dead-letter topic');
  }
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}
