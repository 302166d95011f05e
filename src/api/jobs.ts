/**
 * Replay jobs: `trajstore replay` run as a child process per job. A child, not an in-process
 * call, because a replay holds a training engine (its own Python child) for minutes to hours:
 * a child can be cancelled at any moment by signalling its process group (engine included),
 * cannot take the API down with it, and its log is a file a person can tail.
 *
 * Jobs live in memory (and their config and log under api.jobs_dir); an API restart forgets
 * them, and closing the API cancels the ones still running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { TrajstoreConfigSchema, type TrajstoreConfig } from '../config/index.js';
import type { Logger } from '../util/logger.js';
import { ApiError, ApiErrorCode } from './errors.js';
import type { ReplayJobRequestBody, ReplayJobView } from './schemas.js';

const BIN = fileURLToPath(new URL('../../bin/trajstore.mjs', import.meta.url));
/** Time a cancelled job gets to exit on SIGTERM before its process group is killed. */
const KILL_AFTER_MS = 5_000;

interface Job {
  view: ReplayJobView;
  child: ChildProcess | null;
  stdoutPath: string;
  cancelRequested: boolean;
  exited: Promise<void>;
}

export interface ReplayJobsOptions {
  /** The API's config: each job runs with it, its run id replaced and its training section overridden. */
  config: TrajstoreConfig | null;
  jobsDir: string;
  maxRunning: number;
  logger: Logger;
}

export class ReplayJobs {
  private readonly jobs = new Map<string, Job>();

  constructor(private readonly opts: ReplayJobsOptions) {}

  list(): ReplayJobView[] {
    return [...this.jobs.values()].map((j) => ({ ...j.view })).sort((a, b) => b.created_at_ms - a.created_at_ms);
  }

  get(id: string): ReplayJobView {
    return { ...this.job(id).view };
  }

  running(): number {
    return [...this.jobs.values()].filter((j) => j.view.state === 'running').length;
  }

  countByState(): Record<string, number> {
    const out: Record<string, number> = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
    for (const j of this.jobs.values()) out[j.view.state] = (out[j.view.state] ?? 0) + 1;
    return out;
  }

  start(request: ReplayJobRequestBody): ReplayJobView {
    const base = this.opts.config;
    if (!base) {
      throw new ApiError(409, ApiErrorCode.CONFLICT, 'replay jobs need a config: the API was started without one', {
        hint: 'start the API with `trajstore api -c FILE`; jobs replay with that file\'s model, topics and hyperparameters',
      });
    }
    if (this.running() >= this.opts.maxRunning) {
      throw new ApiError(409, ApiErrorCode.CONFLICT, `${this.running()} replay job(s) already running (api.max_replay_jobs is ${this.opts.maxRunning})`, {
        retriable: true,
        hint: 'wait for a job to finish (GET /replay-jobs) or cancel one (DELETE /replay-jobs/ID)',
      });
    }
    const config = jobConfig(base, request);
    const id = randomUUID();
    const dir = resolve(this.opts.jobsDir, id);
    mkdirSync(dir, { recursive: true });
    const configPath = join(dir, 'config.yaml');
    writeFileSync(configPath, stringify(config));
    const view: ReplayJobView = {
      id, state: 'queued', source_run: request.source_run, run: request.run, from: request.from ?? null, to: request.to ?? null,
      dry_run: request.dry_run ?? false, created_at_ms: Date.now(), started_at_ms: null, finished_at_ms: null, pid: null,
      exit_code: null, signal: null, result: null, error: null, log_path: join(dir, 'replay.log'),
    };
    const job: Job = { view, child: null, stdoutPath: join(dir, 'result.json'), cancelRequested: false, exited: Promise.resolve() };
    this.jobs.set(id, job);
    this.launch(job, configPath);
    return { ...view };
  }

  /** Cancels a running job: SIGTERM to its process group, SIGKILL after a grace period. */
  async cancel(id: string): Promise<ReplayJobView> {
    const job = this.job(id);
    if (job.view.state !== 'running' && job.view.state !== 'queued') {
      throw new ApiError(409, ApiErrorCode.CONFLICT, `replay job ${id} is already ${job.view.state}`, { hint: 'only queued or running jobs can be cancelled' });
    }
    job.cancelRequested = true;
    signalGroup(job.child, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(job.child, 'SIGKILL'), KILL_AFTER_MS);
    await job.exited;
    clearTimeout(timer);
    return { ...job.view };
  }

  /** Cancels every job still running (the API is closing). */
  async close(): Promise<void> {
    await Promise.all([...this.jobs.values()].filter((j) => j.view.state === 'running').map((j) => this.cancel(j.view.id).catch(() => undefined)));
  }

  private job(id: string): Job {
    const job = this.jobs.get(id);
    if (!job) throw new ApiError(404, ApiErrorCode.NOT_FOUND, `no replay job ${id}`, { hint: 'GET /replay-jobs lists the jobs this API process started' });
    return job;
  }

  private launch(job: Job, configPath: string): void {
    const { view } = job;
    const args = [BIN, 'replay', '--source-run', view.source_run, '--run', view.run, '-c', configPath];
    if (view.from) args.push('--from', view.from);
    if (view.to) args.push('--to', view.to);
    if (view.dry_run) args.push('--dry-run');
    const out = openSync(job.stdoutPath, 'w');
    const log = openSync(view.log_path, 'w');
    // detached: the child leads its own process group, so a cancel reaches the engine it starts.
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', out, log],
      detached: true,
      env: { ...process.env, TRAJSTORE_LOG_FORMAT: 'json' },
    });
    closeSync(out);
    closeSync(log);
    job.child = child;
    view.state = 'running';
    view.started_at_ms = Date.now();
    view.pid = child.pid ?? null;
    this.opts.logger.info({ job: view.id, pid: child.pid, args: args.slice(1) }, 'replay job started');
    job.exited = new Promise((done) => {
      child.once('error', (err) => {
        this.finish(job, null, null, `could not start the replay process: ${err.message}`);
        done();
      });
      child.once('exit', (code, signal) => {
        this.finish(job, code, signal, null);
        done();
      });
    });
  }

  private finish(job: Job, code: number | null, signal: NodeJS.Signals | null, error: string | null): void {
    const { view } = job;
    if (view.finished_at_ms !== null) return;
    view.finished_at_ms = Date.now();
    view.exit_code = code;
    view.signal = signal;
    if (job.cancelRequested) view.state = 'cancelled';
    else if (code === 0 && error === null) {
      view.state = 'succeeded';
      view.result = readResult(job.stdoutPath);
    } else {
      view.state = 'failed';
      view.error = error ?? logTail(view.log_path);
    }
    this.opts.logger.info({ job: view.id, state: view.state, code, signal }, 'replay job finished');
  }
}

/** The job's config: the API's, with the request's training overrides validated like a config file. */
function jobConfig(base: TrajstoreConfig, request: ReplayJobRequestBody): TrajstoreConfig {
  const parsed = TrajstoreConfigSchema.safeParse({ ...base, training: { ...base.training, ...(request.training ?? {}) } });
  if (!parsed.success) {
    const fields = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new ApiError(400, ApiErrorCode.VALIDATION, `invalid training overrides: ${fields}`, { hint: 'configs/cua_grpo.yaml lists every training field' });
  }
  return parsed.data;
}

function signalGroup(child: ChildProcess | null, signal: NodeJS.Signals): void {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // The group is gone already: nothing to stop.
  }
}

/** `trajstore replay` prints its result as JSON on stdout (indented for a dry run). */
function readResult(path: string): Record<string, unknown> | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
  for (const candidate of [text, text.split('\n').at(-1) ?? '']) {
    try {
      const value = JSON.parse(candidate) as unknown;
      if (typeof value === 'object' && value !== null) return value as Record<string, unknown>;
    } catch {
      // not this form; try the next
    }
  }
  return null;
}

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-10).join('\n') || 'the replay exited without a log line';
  } catch {
    return 'the replay exited and its log could not be read';
  }
}
