/**
 * `trajstore replay`: trains a new run from the historical events of another run, with the
 * new config's hyperparameters.
 *
 * Reading: reader threads fetch, decode and assemble the partitions' ranges side by side (a
 * group's events all live in one partition, keyed by group id), and the groups are merged into
 * the order they completed in the source run, by each partition's log clock (replay-readers.ts).
 * That order depends only on the log, not on the number of readers or how fetches interleaved,
 * so every batch is the same in two replays of the same range; on a CPU the engine is
 * deterministic too, and the two end with the same adapter checksum.
 *
 * Staleness in a replay is measured against the newest behavior version seen so far in that
 * order (what the source run's trainer had published then): the new run's own versions never
 * sampled anything. Group timeouts run on each partition's log clock; at the end of a
 * partition's range, groups still open are closed (their remaining events lie outside it).
 *
 * Resuming (`--resume`): a checkpoint records the replay's range and its place in the merged
 * group stream (checkpoints.ts, ReplayPosition). The resumed replay loads the engine state, reads
 * the same range again and skips the groups the checkpoint already holds, handing over again
 * only those that were waiting for a step, so it trains every group once and ends with the
 * adapter an uninterrupted replay would have.
 */
import { join, resolve } from 'node:path';
import { Partitioners } from 'kafkajs';
import type { TrajstoreConfig } from '../../config/index.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import type { Logger } from '../../util/logger.js';
import { listCheckpoints, readTrainerState, type ReplayPosition, type TrainerState } from './checkpoints.js';
import { TrainerCore } from './core.js';
import { startEngine } from './engine-setup.js';
import { TrainerError, TrainerErrorCode } from './errors.js';
import { Progress } from './progress.js';
import { VersionPublisher } from './publisher.js';
import { ReplayReaders } from './replay-readers.js';
import { offsetsAtTime, topicWatermarks } from './source.js';

export interface ReplayOptions {
  /** The config of the new run; its run.id is replaced by `runId`. */
  config: TrajstoreConfig;
  sourceRunId: string;
  runId: string;
  from?: string;
  to?: string;
  dryRun?: boolean;
  /** Also load the new versions on the config's policy servers (off by default: a replay is usually offline). */
  push?: boolean;
  logger: Logger;
  /** Progress bar stream (default stderr). */
  progress?: NodeJS.WriteStream | null;
  /** Reader threads that fetch, decode and assemble side by side (default: one per CPU, at most one per partition). */
  readers?: number;
  /** Go on from the newest checkpoint of `runId` (its range: --from/--to must not be given). */
  resume?: boolean;
}

export interface ReplayResult {
  runId: string;
  steps: number;
  policyVersion: number;
  /** Checksum of the newest adapter in the store (null when none was published). */
  adapterChecksum: string | null;
  adapterDir: string | null;
  records: number;
  totals: Record<string, number>;
  /** Dry run: what would be trained. */
  plan?: { groups: number; tokens: number; steps: number; staleness: Record<string, number> };
}

/** Where a replay run keeps its outputs: beside the config's, under replay/<run>, so replays never collide. */
export function replayConfig(base: TrajstoreConfig, runId: string): TrajstoreConfig {
  return {
    ...base,
    run: { ...base.run, id: runId },
    training: { ...base.training, output_dir: join(resolve(base.training.output_dir), 'replay', runId) },
    checkpoint: { ...base.checkpoint, dir: join(resolve(base.checkpoint.dir), 'replay', runId) },
  };
}

/**
 * A range bound: `123` (that offset in every partition), `0:120,1:98` (per partition), or a time
 * (ISO 8601, or milliseconds since the epoch with a `ms` suffix, e.g. `1700000000000ms`).
 */
export async function resolveBound(kafka: Parameters<typeof offsetsAtTime>[0], topic: string, bound: string, partitions: number[]): Promise<Map<number, number>> {
  const b = bound.trim();
  if (/^\d+$/.test(b)) return new Map(partitions.map((p) => [p, Number(b)]));
  if (/^\d+:\d+(,\d+:\d+)*$/.test(b)) return new Map(b.split(',').map((x) => x.split(':').map(Number) as [number, number]));
  const ms = /^\d+ms$/.test(b) ? Number(b.slice(0, -2)) : Date.parse(b);
  if (!Number.isFinite(ms)) {
    throw new TrainerError(TrainerErrorCode.REPLAY_RANGE, `cannot read the range bound ${JSON.stringify(bound)}`, {
      hint: 'use an offset (123), offsets per partition (0:120,1:98), an ISO time (2026-11-23T10:00:00Z) or epoch milliseconds (1700000000000ms)',
    });
  }
  return offsetsAtTime(kafka, topic, ms);
}

export async function runReplay(opts: ReplayOptions): Promise<ReplayResult> {
  const config = replayConfig(opts.config, opts.runId);
  const { logger } = opts;
  const topic = config.kafka.topics.trajectories;
  const resumed = opts.resume ? resumePoint(config, opts) : null;
  if (!opts.resume && !opts.dryRun && listCheckpoints(config.checkpoint.dir).length > 0) {
    throw new TrainerError(TrainerErrorCode.RUN_EXISTS, `replay run ${opts.runId} already has checkpoints in ${config.checkpoint.dir}`, {
      hint: 'pass --resume to go on from the newest one, choose another --run, or delete that directory to replay it again',
    });
  }
  const kafka = createKafka({ brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-replay` }, logger);
  await ensureTopics(kafka, topicSpecs(config));
  const marks = await topicWatermarks(kafka, topic);
  const partitions = [...marks.keys()].sort((a, b) => a - b);
  const ranges = resumed?.state.replay!.ranges ?? await replayRanges(kafka, topic, marks, partitions, opts);
  const total = ranges.reduce((n, r) => n + r.end - r.start, 0);
  if (total === 0) {
    throw new TrainerError(TrainerErrorCode.REPLAY_RANGE, `the range selects no events in ${topic}`, { hint: 'check --from/--to and the topic (kafka.topics.trajectories)' });
  }

  const engine = opts.dryRun ? null : await startEngine(config, logger);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  const progress = new Progress(opts.progress === undefined ? process.stderr : opts.progress, total, 'replay');
  try {
    if (resumed) {
      await engine!.load(resumed.dir);
      logger.info({ checkpoint: resumed.dir, step: resumed.state.step, groups_read: resumed.state.replay!.groups_read }, 'replay resumed from checkpoint');
    }
    await producer.connect();
    const publisher = opts.dryRun ? null : new VersionPublisher({
      runId: opts.runId, baseModel: config.model.name, apiBases: opts.push ? config.inference.api_bases : [],
      window: config.inference.max_loaded_adapters, topic: config.kafka.topics.policy_versions, producer, logger,
      requestTimeoutMs: config.inference.request_timeout_s * 1000,
    });
    const readers = new ReplayReaders({
      brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-replay`, topic, topicPartitions: partitions, ranges,
      groupPrefix: `trajstore-replay-${opts.runId}`, readers: opts.readers, logger,
      assembly: {
        sourceRunId: opts.sourceRunId,
        timeoutMs: config.training.group_timeout_s * 1000,
        // The open-group bound is the config's, shared out over the partitions read side by side.
        maxOpenGroups: Math.max(1, Math.ceil(config.training.max_open_groups / ranges.length)),
      },
    });
    const core = new TrainerCore({
      config, runId: opts.runId, sourceRunId: opts.sourceRunId, mode: 'replay', engine, producer, publisher, logger, dryRun: opts.dryRun,
      logCounters: () => readers.counters, resume: resumed?.state, replaySource: { source_run: opts.sourceRunId, ranges },
    });
    if (resumed) await core.republishAfterResume(resumed);
    readers.start();
    try {
      for await (const input of readers.inputs()) {
        if (input.type === 'undecodable') await core.rejectRecord(input.record, topic);
        else await core.acceptGroup(input.group, input.evicted);
        progress.update(readers.records, `step ${core.step}`);
        if (core.done) break;
      }
    } finally {
      await readers.stop();
    }
    const records = readers.records;
    await core.finish({ closeOpen: true, flush: true });
    if (!opts.dryRun) await core.publishFinal();
    progress.done(records, `step ${core.step}`);
    const adapter = core.publishedAdapter;
    const result: ReplayResult = {
      runId: opts.runId, steps: core.step, policyVersion: core.version, adapterChecksum: adapter?.checksum ?? null,
      adapterDir: adapter?.dir ?? null, records, totals: core.totals,
    };
    if (opts.dryRun) result.plan = { ...core.dryRunPlan, steps: Math.ceil(core.dryRunPlan.groups / config.training.batch_size) };
    return result;
  } finally {
    progress.stop();
    await producer.disconnect().catch(() => undefined);
    await engine?.shutdown().catch(() => undefined);
  }
}

/** The ranges a new replay reads: --from/--to resolved against the topic as it is now. */
async function replayRanges(
  kafka: Parameters<typeof offsetsAtTime>[0], topic: string, marks: Awaited<ReturnType<typeof topicWatermarks>>, partitions: number[], opts: ReplayOptions,
): Promise<ReplayPosition['ranges']> {
  const start = opts.from ? await resolveBound(kafka, topic, opts.from, partitions) : new Map(partitions.map((p) => [p, marks.get(p)!.low]));
  const end = opts.to ? await resolveBound(kafka, topic, opts.to, partitions) : new Map(partitions.map((p) => [p, marks.get(p)!.high]));
  return partitions
    .map((p) => {
      const { low, high } = marks.get(p)!;
      const s = Math.max(low, start.get(p) ?? low);
      const e = Math.min(high, (end.get(p) ?? high) < 0 ? high : (end.get(p) ?? high));
      return { partition: p, start: s, end: e };
    })
    .filter((r) => r.end > r.start);
}

/** The newest checkpoint of a replay run, checked against this invocation. */
function resumePoint(config: TrajstoreConfig, opts: ReplayOptions): { dir: string; step: number; state: TrainerState } {
  if (opts.dryRun || opts.from || opts.to) {
    throw new TrainerError(TrainerErrorCode.REPLAY_RANGE, '--resume reads the range the replay started with; it takes no --from, --to or --dry-run', {
      hint: 'drop those options, or start a new replay under another --run',
    });
  }
  const newest = listCheckpoints(config.checkpoint.dir)[0];
  if (!newest) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `replay run ${opts.runId} has no checkpoint in ${config.checkpoint.dir} to resume from`, {
      hint: 'run the replay without --resume (it starts from the beginning of its range)',
    });
  }
  const state = readTrainerState(newest.dir);
  if (!state.replay || state.run_id !== opts.runId) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${newest.dir} is not a checkpoint of replay run ${opts.runId}`, {
      hint: 'resume with the --run that wrote it; checkpoints written before replays could resume cannot be resumed',
    });
  }
  if (state.replay.source_run !== opts.sourceRunId) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `replay run ${opts.runId} was replaying source run ${state.replay.source_run}, not ${opts.sourceRunId}`, {
      hint: `pass --source-run ${state.replay.source_run}`,
    });
  }
  return { ...newest, state };
}
