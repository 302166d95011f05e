/**
 * `trajstore replay`: trains a new run from the historical events of another run, with the
 * new config's hyperparameters. Deterministic for the same input: partitions are read one after
 * the other in partition order (a group's events all live in one partition, keyed by group id),
 * so the order of groups, and therefore every batch, does not depend on how fetches from
 * different partitions happened to interleave; on a CPU the engine is deterministic too, and
 * two replays of the same range end with the same adapter checksum.
 *
 * Staleness in a replay is measured against the newest behavior version seen so far in the log
 * (what the source run's trainer had published then): the new run's own versions never sampled
 * anything. Group timeouts run on log time only; at the end of each partition's range, groups
 * still open are closed (their remaining events lie outside the range).
 */
import { join, resolve } from 'node:path';
import { Partitioners } from 'kafkajs';
import type { TrajstoreConfig } from '../../config/index.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import type { Logger } from '../../util/logger.js';
import { listCheckpoints } from './checkpoints.js';
import { TrainerCore } from './core.js';
import { startEngine } from './engine-setup.js';
import { TrainerError, TrainerErrorCode } from './errors.js';
import { Progress } from './progress.js';
import { VersionPublisher } from './publisher.js';
import { LogReader, offsetsAtTime, topicWatermarks } from './source.js';

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
  if (!opts.dryRun && listCheckpoints(config.checkpoint.dir).length > 0) {
    throw new TrainerError(TrainerErrorCode.RUN_EXISTS, `replay run ${opts.runId} already has checkpoints in ${config.checkpoint.dir}`, {
      hint: 'choose another --run, or delete that directory to replay it again',
    });
  }
  const kafka = createKafka({ brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-replay` }, logger);
  await ensureTopics(kafka, topicSpecs(config));
  const marks = await topicWatermarks(kafka, topic);
  const partitions = [...marks.keys()].sort((a, b) => a - b);
  const start = opts.from ? await resolveBound(kafka, topic, opts.from, partitions) : new Map(partitions.map((p) => [p, marks.get(p)!.low]));
  const end = opts.to ? await resolveBound(kafka, topic, opts.to, partitions) : new Map(partitions.map((p) => [p, marks.get(p)!.high]));
  const ranges = partitions
    .map((p) => {
      const { low, high } = marks.get(p)!;
      const s = Math.max(low, start.get(p) ?? low);
      const e = Math.min(high, (end.get(p) ?? high) < 0 ? high : (end.get(p) ?? high));
      return { partition: p, start: s, end: e };
    })
    .filter((r) => r.end > r.start);
  const total = ranges.reduce((n, r) => n + r.end - r.start, 0);
  if (total === 0) {
    throw new TrainerError(TrainerErrorCode.REPLAY_RANGE, `the range selects no events in ${topic}`, { hint: 'check --from/--to and the topic (kafka.topics.trajectories)' });
  }

  const engine = opts.dryRun ? null : await startEngine(config, logger);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  const progress = new Progress(opts.progress === undefined ? process.stderr : opts.progress, total, 'replay');
  try {
    await producer.connect();
    const publisher = opts.dryRun ? null : new VersionPublisher({
      runId: opts.runId, baseModel: config.model.name, apiBases: opts.push ? config.inference.api_bases : [],
      window: config.inference.max_loaded_adapters, topic: config.kafka.topics.policy_versions, producer, logger,
      requestTimeoutMs: config.inference.request_timeout_s * 1000,
    });
    const core = new TrainerCore({ config, runId: opts.runId, sourceRunId: opts.sourceRunId, mode: 'replay', engine, producer, publisher, logger, dryRun: opts.dryRun });
    let records = 0;
    for (const range of ranges) {
      if (core.done) break;
      // Every other partition starts at its end: this reader hands out one partition's range only.
      const startMap = new Map(partitions.map((p) => [p, p === range.partition ? range.start : marks.get(p)!.high]));
      const reader = new LogReader(kafka, { topic, start: startMap, groupPrefix: `trajstore-replay-${opts.runId}`, logger });
      await reader.open();
      try {
        let at = range.start;
        let idlePolls = 0;
        while (at < range.end && !core.done) {
          const batch = (await reader.next(1000)).filter((r) => r.partition === range.partition && r.offset < range.end);
          if (batch.length === 0) {
            // Offsets without a record (transaction markers, compacted-away records) can leave the
            // end out of reach: after 10 s with nothing, this partition's range is over.
            if (++idlePolls >= 10) break;
            continue;
          }
          idlePolls = 0;
          at = batch.at(-1)!.offset + 1;
          records += batch.length;
          await core.ingest(batch, topic);
          await core.expire();
          progress.update(records, `step ${core.step}`);
        }
      } finally {
        await reader.close();
      }
      await core.finish({ closeOpen: true, flush: false });
    }
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
