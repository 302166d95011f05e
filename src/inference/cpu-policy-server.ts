/**
 * Starts the CPU policy server (`python -m trajstore_engine.policy_server`, engine/) as a child
 * process: the stand-in for vLLM on machines without a GPU. Producers, tests and the demo call
 *
 *   const server = await startCpuPolicyServer();           // tiny model, free port
 *   fetch(`${server.baseUrl}/v1/chat/completions`, ...)   // vLLM's OpenAI-compatible API
 *   await server.stop();
 *
 * The server speaks vLLM's API (chat completions with logprobs and token ids, runtime LoRA
 * loading), so code written against it runs against vLLM on GPU hosts unchanged.
 *
 * Without `modelDir`, the tiny deterministic Qwen3-style model is used; it is made once with the
 * engine's `make-tiny-model` and cached in `.trajstore/models/tiny` (git-ignored). For a vision
 * policy, `startCpuPolicyServer({ modelDir: await ensureTinyVlModel() })` serves the tiny
 * Qwen3-VL-style model (`make-tiny-vl-model`, cached in `.trajstore/models/tiny-vl-<hash>`), which
 * takes `image_url` parts.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import lockfile from 'proper-lockfile';
import { projectRoot } from '../services/paths.js';
import type { Logger } from '../util/logger.js';
import { PolicyServerError } from './errors.js';

export interface CpuPolicyServerOptions {
  /** A local Hugging Face model directory. Default: the tiny model (made and cached if missing). */
  modelDir?: string;
  /** The base model's name in the API (vLLM's --served-model-name). Default: `tiny` for the tiny model, else `modelDir`. */
  servedModelName?: string;
  host?: string;
  /** Default: a free port. */
  port?: number;
  /** Adapters kept in memory at once; more can be registered (LRU, reloaded on use). Default 4. */
  maxLoras?: number;
  /** Adapters of a higher rank are refused. Default 16 (vLLM's default). */
  maxLoraRank?: number;
  /** Sequences queued or running before requests get 503 (n counts n). Default 256; 0: unbounded. */
  maxQueue?: number;
  /** Sequences decoded together at most. Default 32. */
  maxBatchSeqs?: number;
  /** Seeds the sampling of requests that carry no seed. Default 0. */
  seed?: number;
  /** torch CPU threads. Default: 1 for the tiny model (its matrices are too small to split; more threads only contend), else torch's choice. */
  threads?: number;
  /** The interpreter. Default: `TRAJSTORE_ENGINE_PYTHON`, else engine/.venv/bin/python. */
  python?: string;
  /** How long to wait for `/health`. Default 120 s. */
  startupTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
}

export interface CpuPolicyServer {
  /** `http://host:port`, without `/v1` (vLLM's routes: `${baseUrl}/v1/chat/completions`, `${baseUrl}/health`). */
  readonly baseUrl: string;
  /** The base model's name, for requests' `model` field. */
  readonly model: string;
  readonly modelDir: string;
  readonly pid: number;
  /** The last lines the server wrote to stderr. */
  stderrTail(): string;
  /** SIGTERM, then SIGKILL after `graceMs` (default 10 s). Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

const STDERR_KEEP = 64 * 1024;

/** engine/.venv's python, or `TRAJSTORE_ENGINE_PYTHON`. */
export function enginePython(env: NodeJS.ProcessEnv = process.env): string {
  return env.TRAJSTORE_ENGINE_PYTHON ?? join(projectRoot(), 'engine', '.venv', 'bin', 'python');
}

/** `.trajstore/models/tiny` (or under `TRAJSTORE_HOME`). */
export function defaultTinyModelDir(env: NodeJS.ProcessEnv = process.env): string {
  return join(modelsHome(env), 'tiny');
}

/**
 * `.trajstore/models/tiny-vl-<hash>` (or under `TRAJSTORE_HOME`), the hash that of the engine's
 * tiny-model sources (tiny.py, tiny_vl.py): a directory made by an older generator is never
 * served as the current one.
 */
export function defaultTinyVlModelDir(env: NodeJS.ProcessEnv = process.env): string {
  const hash = createHash('sha256');
  for (const f of ['tiny.py', 'tiny_vl.py']) hash.update(readFileSync(join(projectRoot(), 'engine', 'trajstore_engine', f)));
  return join(modelsHome(env), `tiny-vl-${hash.digest('hex').slice(0, 12)}`);
}

function modelsHome(env: NodeJS.ProcessEnv): string {
  return join(resolve(env.TRAJSTORE_HOME ?? join(projectRoot(), '.trajstore')), 'models');
}

/**
 * Checks that the engine's virtualenv can run the server. With `install`, runs
 * `bash engine/setup.sh` (idempotent: seconds when up to date) when it cannot, under a lock so
 * parallel test files do not install twice.
 */
export async function ensureEngineVenv(options: { install?: boolean; python?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const env = options.env ?? process.env;
  const python = options.python ?? enginePython(env);
  const ok = () => existsSync(python) && spawnSync(python, ['-c', 'import trajstore_engine.policy_server.app'], { env, encoding: 'utf8' }).status === 0;
  if (ok()) return python;
  if (!options.install) {
    throw new PolicyServerError('TRAJ_E_POLICY_SERVER_PYTHON_MISSING', `${python} cannot run the policy server (missing, or without its packages)`, {
      hint: 'run `bash engine/setup.sh` (creates engine/.venv with the pinned packages), or set TRAJSTORE_ENGINE_PYTHON',
    });
  }
  const root = projectRoot();
  await withLock(join(root, '.trajstore', 'engine-setup'), async () => {
    if (ok()) return;
    const run = spawnSync('bash', [join(root, 'engine', 'setup.sh')], { env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (run.status !== 0 || !ok()) {
      throw new PolicyServerError('TRAJ_E_POLICY_SERVER_PYTHON_MISSING', `bash engine/setup.sh failed (exit ${run.status})`, {
        stderr: tail(`${run.stdout ?? ''}${run.stderr ?? ''}`, 40),
        hint: 'run `bash engine/setup.sh` by hand and read its output',
      });
    }
  });
  return python;
}

/** The tiny model directory, made with the engine's `make-tiny-model DIR --seed 0` when missing. */
export async function ensureTinyModel(options: { dir?: string; python?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return ensureMadeModel('make-tiny-model', options.dir ?? defaultTinyModelDir(options.env ?? process.env), options);
}

/**
 * The tiny Qwen3-VL-style model directory (vision tower, image processor: 4..64 image tokens a
 * screenshot), made with the engine's `make-tiny-vl-model DIR --seed 0` when missing.
 */
export async function ensureTinyVlModel(options: { dir?: string; python?: string; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return ensureMadeModel('make-tiny-vl-model', options.dir ?? defaultTinyVlModelDir(options.env ?? process.env), options);
}

async function ensureMadeModel(command: 'make-tiny-model' | 'make-tiny-vl-model', where: string, options: { python?: string; env?: NodeJS.ProcessEnv }): Promise<string> {
  const env = options.env ?? process.env;
  const dir = resolve(where);
  if (existsSync(join(dir, 'config.json'))) return dir;
  const python = options.python ?? enginePython(env);
  await withLock(dir, async () => {
    if (existsSync(join(dir, 'config.json'))) return;
    const run = spawnSync(python, ['-m', 'trajstore_engine', command, dir, '--seed', '0'], { env, encoding: 'utf8' });
    if (run.status !== 0) {
      throw new PolicyServerError('TRAJ_E_POLICY_SERVER_MODEL', `could not make the tiny model in ${dir} (${command}, exit ${run.status})`, {
        stderr: tail(run.stderr ?? '', 30),
        hint: existsSync(python) ? 'read the error above' : 'run `bash engine/setup.sh` first',
      });
    }
  });
  return dir;
}

/**
 * Writes a PEFT LoRA adapter with random (non-zero) weights for `modelDir`, for tests:
 * `python -m trajstore_engine.policy_server.make_test_adapter`. Same seed, same bytes.
 */
export function makeTestAdapter(outDir: string, options: { modelDir: string; seed?: number; rank?: number; python?: string; env?: NodeJS.ProcessEnv }): string {
  const env = options.env ?? process.env;
  const python = options.python ?? enginePython(env);
  const args = ['-m', 'trajstore_engine.policy_server.make_test_adapter', outDir, '--model', options.modelDir,
    '--seed', String(options.seed ?? 1), '--rank', String(options.rank ?? 8)];
  const run = spawnSync(python, args, { env, encoding: 'utf8' });
  if (run.status !== 0) {
    throw new PolicyServerError('TRAJ_E_POLICY_SERVER_ADAPTER', `could not write a test adapter to ${outDir} (exit ${run.status})`, {
      stderr: tail(run.stderr ?? '', 30),
    });
  }
  return outDir;
}

/** Starts the server and resolves once `GET /health` answers 200. */
export async function startCpuPolicyServer(options: CpuPolicyServerOptions = {}): Promise<CpuPolicyServer> {
  const env = { ...(options.env ?? process.env) };
  const python = options.python ?? enginePython(env);
  if (!existsSync(python)) {
    throw new PolicyServerError('TRAJ_E_POLICY_SERVER_PYTHON_MISSING', `the engine's python is missing: ${python}`, {
      hint: 'run `bash engine/setup.sh` (creates engine/.venv), or set TRAJSTORE_ENGINE_PYTHON',
    });
  }
  const tinyModel = options.modelDir === undefined;
  const modelDir = tinyModel ? await ensureTinyModel({ python, env }) : resolve(options.modelDir as string);
  if (!existsSync(join(modelDir, 'config.json'))) {
    throw new PolicyServerError('TRAJ_E_POLICY_SERVER_MODEL', `${modelDir} is not a Hugging Face model directory (no config.json)`, {
      hint: 'pass modelDir pointing at a local model, or leave it out for the tiny test model',
    });
  }
  const model = options.servedModelName ?? (tinyModel ? 'tiny' : modelDir);
  const host = options.host ?? '127.0.0.1';
  const timeoutMs = options.startupTimeoutMs ?? 120_000;

  // A free port can be taken between our probe and the server's bind: one retry on a fresh port.
  for (let attempt = 0; ; attempt++) {
    const port = options.port ?? (await freePort(host));
    try {
      const threads = options.threads ?? (tinyModel ? 1 : undefined);
      return await launch({ ...options, threads, python, modelDir, model, host, port, timeoutMs, env });
    } catch (err) {
      const portTaken = err instanceof PolicyServerError && err.code === 'TRAJ_E_POLICY_SERVER_START' && /address already in use/i.test(err.stderr ?? '');
      if (!portTaken || options.port !== undefined || attempt >= 1) throw err;
    }
  }
}

interface LaunchSpec extends CpuPolicyServerOptions {
  python: string;
  modelDir: string;
  model: string;
  host: string;
  port: number;
  timeoutMs: number;
  env: NodeJS.ProcessEnv;
}

async function launch(spec: LaunchSpec): Promise<CpuPolicyServer> {
  const args = ['-m', 'trajstore_engine.policy_server', '--model', spec.modelDir, '--served-model-name', spec.model,
    '--host', spec.host, '--port', String(spec.port), '--parent-pid', String(process.pid), '--log-level', 'warning'];
  const flag = (name: string, value: number | undefined) => {
    if (value !== undefined) args.push(name, String(value));
  };
  flag('--max-loras', spec.maxLoras);
  flag('--max-lora-rank', spec.maxLoraRank);
  flag('--max-queue', spec.maxQueue);
  flag('--max-batch-seqs', spec.maxBatchSeqs);
  flag('--seed', spec.seed);
  flag('--threads', spec.threads);

  const child = spawn(spec.python, args, {
    cwd: projectRoot(),
    env: { ...spec.env, PYTHONUNBUFFERED: '1', TOKENIZERS_PARALLELISM: 'false' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  const keep = (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-STDERR_KEEP);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((done) => child.once('exit', (code, signal) => {
    exited = { code, signal };
    done();
  }));
  child.once('error', (err) => keep(Buffer.from(`\nspawn error: ${err.message}\n`)));
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const baseUrl = `http://${spec.host}:${spec.port}`;
  const started = Date.now();
  spec.logger?.info({ baseUrl, model: spec.model, modelDir: spec.modelDir, pid: child.pid }, 'starting the CPU policy server');
  while (true) {
    if (exited) {
      process.removeListener('exit', killOnExit);
      throw new PolicyServerError('TRAJ_E_POLICY_SERVER_START',
        `the CPU policy server exited before it was ready (${exited.signal ? `signal ${exited.signal}` : `exit ${exited.code}`})`, {
          stderr: tail(stderr, 40),
          hint: 'read the server output above; run the same command by hand: python -m trajstore_engine.policy_server --model DIR',
        });
    }
    if (await healthy(baseUrl)) break;
    if (Date.now() - started > spec.timeoutMs) {
      await stopChild(child, exitPromise, () => exited !== undefined, 5_000);
      process.removeListener('exit', killOnExit);
      throw new PolicyServerError('TRAJ_E_POLICY_SERVER_UNHEALTHY', `the CPU policy server did not answer ${baseUrl}/health within ${spec.timeoutMs} ms`, {
        stderr: tail(stderr, 40),
        retriable: true,
        hint: 'the machine may be busy (model loading takes seconds); raise startupTimeoutMs or read the output above',
        });
    }
    await sleep(150);
  }
  spec.logger?.info({ baseUrl, ms: Date.now() - started }, 'CPU policy server ready');

  let stopping: Promise<void> | undefined;
  return {
    baseUrl,
    model: spec.model,
    modelDir: spec.modelDir,
    pid: child.pid ?? -1,
    stderrTail: () => tail(stderr, 40),
    stop(graceMs = 10_000) {
      stopping ??= stopChild(child, exitPromise, () => exited !== undefined, graceMs).finally(() => {
        process.removeListener('exit', killOnExit);
      });
      return stopping;
    },
  };
}

async function stopChild(child: ChildProcess, exitPromise: Promise<void>, isExited: () => boolean, graceMs: number): Promise<void> {
  if (isExited()) return;
  child.kill('SIGTERM');
  const timer = sleep(graceMs, undefined, { ref: false }).then(() => 'timeout' as const);
  if ((await Promise.race([exitPromise.then(() => 'exited' as const), timer])) === 'timeout' && !isExited()) {
    child.kill('SIGKILL');
    await exitPromise;
  }
}

async function healthy(baseUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2_000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** A port nothing listens on now (bind 0, read it, close). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(dirname(path), { recursive: true });
  const target = `${path}.lockfile`;
  if (!existsSync(target)) writeFileSync(target, '');
  const release = await lockfile.lock(target, { retries: { retries: 600, minTimeout: 500, maxTimeout: 1_000 }, stale: 30 * 60_000 });
  try {
    return await fn();
  } finally {
    await release();
  }
}

function tail(text: string, lines: number): string {
  return text.split('\n').filter((l) => !/^(Loading weights|Writing model shards)/.test(l)).slice(-lines - 1).join('\n').trimEnd();
}
