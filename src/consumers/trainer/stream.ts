/**
 * `trajstore train`: streaming training from the trajectory topic until training.max_steps,
 * or until stopped (SIGINT/SIGTERM: a final checkpoint, then exit).
 *
 * Start-up decides where to begin: `--resume-from DIR` loads that checkpoint; `--resume` the
 * newest under checkpoint.dir (a fresh start when there is none); neither, on a run that already
 * has checkpoints, is an error rather than a silent second training of the same groups.
 */
import { Partitioners } from 'kafkajs';
import type { TrajstoreConfig } from '../../config/index.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import type { Logger } from '../../util/logger.js';
import { listCheckpoints, readTrainerState, type TrainerState } from './checkpoints.js';
import { TrainerCore } from './core.js';
import { startEngine } from './engine-setup.js';
import { TrainerError, TrainerErrorCode } from './errors.js';
import { VersionPublisher } from './publisher.js';
import { LogReader, OffsetCommitter } from './source.js';

export interface StreamOptions {
  config: TrajstoreConfig;
  resume?: boolean;
  resumeFrom?: string;
  logger: Logger;
  signal?: AbortSignal;
  /** Stop (with a final checkpoint) once no record arrived for this long: drain a backlog, then exit. */
  stopWhenIdleMs?: number;
}

export interface StreamResult {
  steps: number;
  policyVersion: number;
  resumedFrom: string | null;
  totals: Record<string, number>;
}

/** The run's stable consumer group: offsets committed there only after a durable checkpoint. */
export function trainerGroupId(runId: string): string {
  return `trajstore-trainer-${runId}`;
}

/** The checkpoint to resume from, or null for a fresh start. */
export function chooseCheckpoint(config: TrajstoreConfig, opts: { resume?: boolean; resumeFrom?: string }): { dir: string; step: number; state: TrainerState } | null {
  const runId = config.run.id;
  let pick: { dir: string; step: number } | undefined;
  if (opts.resumeFrom) {
    const state = readTrainerState(opts.resumeFrom);
    pick = { dir: opts.resumeFrom, step: state.step };
  } else {
    const existing = listCheckpoints(config.checkpoint.dir);
    if (!opts.resume) {
      if (existing.length > 0) {
        throw new TrainerError(TrainerErrorCode.RUN_EXISTS, `run ${runId} already has ${existing.length} checkpoint(s) in ${config.checkpoint.dir} (newest: step ${existing[0]!.step})`, {
          hint: 'pass --resume to continue it (each group is still trained once), or set run.id and checkpoint.dir for a new run',
        });
      }
      return null;
    }
    pick = existing[0];
    if (!pick) return null;
  }
  const state = readTrainerState(pick.dir);
  if (state.run_id !== runId) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${pick.dir} belongs to run ${state.run_id}, the config trains run ${runId}`, {
      hint: 'set run.id to the checkpoint\'s run, or point --resume-from at a checkpoint of this run',
    });
  }
  if (state.topic !== config.kafka.topics.trajectories) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${pick.dir} read topic ${state.topic}, the config names ${config.kafka.topics.trajectories}`, {
      hint: 'its offsets mean nothing in another topic: resume with the same kafka.topics.trajectories',
    });
  }
  return { ...pick, state };
}

export async function runStreamingTrainer(opts: StreamOptions): Promise<StreamResult> {
  const { config, logger } = opts;
  const runId = config.run.id;
  const topic = config.kafka.topics.trajectories;
  const ckpt = chooseCheckpoint(config, opts);
  const kafka = createKafka({ brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-trainer` }, logger);
  await ensureTopics(kafka, topicSpecs(config));

  const engine = await startEngine(config, logger);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner });
  let reader: LogReader | null = null;
  let idleMs = 0;
  const committer = new OffsetCommitter(kafka, trainerGroupId(runId), topic, logger);
  try {
    if (ckpt) {
      await engine.load(ckpt.dir);
      logger.info({ checkpoint: ckpt.dir, step: ckpt.step, version: ckpt.state.policy_version }, 'resumed from checkpoint');
    }
    await producer.connect();
    const publisher = new VersionPublisher({
      runId,
      baseModel: config.model.name,
      apiBases: config.inference.api_bases,
      window: config.inference.max_loaded_adapters,
      topic: config.kafka.topics.policy_versions,
      producer,
      logger,
      requestTimeoutMs: config.inference.request_timeout_s * 1000,
    });
    const core = new TrainerCore({
      config, runId, sourceRunId: runId, mode: 'stream', engine, producer, publisher, logger,
      resume: ckpt?.state,
      idleClock: () => idleMs,
      onCheckpoint: async (offsets) => committer.commit(offsets),
    });
    if (ckpt) {
      await core.republishAfterResume(ckpt);
      // The killed run may not have committed this checkpoint's offsets; they are the truth now.
      committer.commit(new Map(Object.entries(ckpt.state.resume).map(([p, r]) => [Number(p), r.offset])));
    }

    reader = new LogReader(kafka, { topic, start: core.resumeOffsets, groupPrefix: `${trainerGroupId(runId)}-reader`, logger });
    await reader.open();
    logger.info({ run: runId, topic, step: core.step, max_steps: config.training.max_steps }, 'training from the log');
    let lastCatchUp = Date.now();
    let quietSince = Date.now();
    while (!core.done && !opts.signal?.aborted) {
      const t0 = Date.now();
      const records = await reader.next(500);
      if (records.length === 0) idleMs += Date.now() - t0;
      else quietSince = Date.now();
      if (opts.stopWhenIdleMs !== undefined && Date.now() - quietSince >= opts.stopWhenIdleMs) {
        logger.info({ idle_ms: Date.now() - quietSince }, 'no new records: stopping (--stop-when-idle)');
        break;
      }
      await core.ingest(records, topic);
      await core.expire();
      if (records.length === 0 && Date.now() - lastCatchUp > 5000) {
        await core.catchUpServers();
        lastCatchUp = Date.now();
      }
    }
    await reader.close();
    reader = null;
    await core.finish({ closeOpen: false, flush: false });
    await committer.flush();
    logger.info({ steps: core.step, version: core.version, totals: core.totals }, core.done ? 'max_steps reached' : 'stopped');
    return { steps: core.step, policyVersion: core.version, resumedFrom: ckpt?.dir ?? null, totals: core.totals };
  } finally {
    await reader?.close().catch(() => undefined);
    await producer.disconnect().catch(() => undefined);
    await engine.shutdown().catch(() => undefined);
  }
}
