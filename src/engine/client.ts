/**
 * The training engine as a child process (engine/PROTOCOL.md): spawn it, send commands as JSON
 * lines, get typed replies.
 *
 *   const engine = await EngineClient.start();                  // engine/.venv/bin/python -m trajstore_engine serve
 *   await engine.init({ model: { path: modelDir }, lora: { r: 16 } });
 *   const { metrics } = await engine.trainStep(batchPath, { policyVersion: 3 });
 *   await engine.save(`${dir}/step-3`, { metadata: { offsets } });
 *   await engine.shutdown();
 *
 * Commands run one at a time, in the order sent (the engine is single-threaded); calls made while
 * one runs wait their turn. An error reply rejects with an EngineError subclass (the engine is
 * still usable); a dead engine rejects every pending and later call with EngineProcessError
 * (`TRAJ_E_ENGINE_EXITED`) carrying the engine's stderr tail.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { projectRoot } from '../services/paths.js';
import type { Logger } from '../util/logger.js';
import { EngineProcessError, engineErrorFrom } from './errors.js';
import {
  PROTOCOL_VERSION,
  readyEventSchema,
  replySchema,
  type EngineCommand,
  type EngineCommandName,
  type EngineConfig,
  type EngineReply,
  type Metrics,
  type ReadyEvent,
  type TrainStepMetrics,
} from './protocol.js';

export interface EngineClientOptions {
  /** The interpreter. Default: `TRAJSTORE_ENGINE_PYTHON`, else engine/.venv/bin/python. */
  python?: string;
  /** > 1: FSDP across this many local GPUs (`python -m torch.distributed.run --nproc-per-node N`); rank 0 speaks. */
  nprocPerNode?: number;
  /** How long to wait for the ready line (imports torch, ~5-30 s). Default 120 s. */
  startupTimeoutMs?: number;
  /** Default timeout of every command; none by default (a step on a large model can take minutes). */
  commandTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  logger?: Logger;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Bytes of stderr kept for error messages. */
const STDERR_KEEP = 64 * 1024;
const STDERR_TAIL_LINES = 40;

/** engine/.venv/bin/python, or `TRAJSTORE_ENGINE_PYTHON`. */
export function defaultEnginePython(env: NodeJS.ProcessEnv = process.env): string {
  return env.TRAJSTORE_ENGINE_PYTHON ?? join(projectRoot(), 'engine', '.venv', 'bin', 'python');
}

/** Writes the tiny deterministic Qwen3-style model (+ tokenizer) to `outDir`, for tests and the CPU demo. */
export function makeTinyModel(outDir: string, options: { seed?: number; python?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const env = options.env ?? process.env;
  const python = options.python ?? defaultEnginePython(env);
  const run = spawnSync(python, ['-m', 'trajstore_engine', 'make-tiny-model', outDir, '--seed', String(options.seed ?? 0)], {
    env: engineEnv(env),
    encoding: 'utf8',
  });
  if (run.status !== 0) {
    throw new EngineProcessError('TRAJ_E_ENGINE_START', `make-tiny-model ${outDir} failed (exit ${run.status ?? run.signal})`, {
      stderr: tailLines(run.stderr ?? String(run.error ?? ''), STDERR_TAIL_LINES),
      hint: existsSync(python) ? 'read the error above' : 'run `bash engine/setup.sh` (creates engine/.venv)',
    });
  }
  return outDir;
}

interface Pending {
  id: number;
  cmd: EngineCommandName;
  resolve: (reply: { result: Record<string, unknown>; metrics: Metrics }) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export class EngineClient {
  readonly pid: number;
  /** The engine's ready line: protocol and engine versions, world size, torch version, CUDA. */
  readonly ready: ReadyEvent;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;

  private readonly child: ChildProcess;
  private readonly logger: Logger | undefined;
  private readonly commandTimeoutMs: number | undefined;
  private stderr = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Set once the process is gone (or must be treated as gone): every later call rejects with it. */
  private dead: EngineProcessError | undefined;
  private exitInfo: ExitInfo | undefined;
  private stopping = false;

  private constructor(child: ChildProcess, ready: ReadyEvent, exited: Promise<ExitInfo>, state: StartState, options: EngineClientOptions) {
    this.child = child;
    this.pid = child.pid!;
    this.ready = ready;
    this.exited = exited;
    this.logger = options.logger;
    this.commandTimeoutMs = options.commandTimeoutMs;
    this.stderr = state.stderr;
    state.onStderr = (text) => {
      this.stderr = keepTail(this.stderr + text);
    };
    state.onLine = (line) => this.onLine(line);
    void exited.then((info) => this.onExit(info));
  }

  /** Spawns the engine and resolves once it wrote its ready line. */
  static async start(options: EngineClientOptions = {}): Promise<EngineClient> {
    const env = engineEnv(options.env ?? process.env);
    const python = options.python ?? defaultEnginePython(env);
    if (!existsSync(python)) {
      throw new EngineProcessError('TRAJ_E_ENGINE_START', `the engine's python is missing: ${python}`, {
        hint: 'run `bash engine/setup.sh` (creates engine/.venv), or set TRAJSTORE_ENGINE_PYTHON',
      });
    }
    const nproc = options.nprocPerNode ?? 1;
    const args = nproc > 1
      ? ['-m', 'torch.distributed.run', '--standalone', `--nproc-per-node=${nproc}`, '-m', 'trajstore_engine', 'serve']
      : ['-m', 'trajstore_engine', 'serve'];
    const child = spawn(python, args, { env, cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    const state: StartState = { stderr: '', onStderr: undefined, onLine: undefined };
    const exited = new Promise<ExitInfo>((resolve) => {
      // 'close' comes after the last stdout line was read (a reply written just before exiting is
      // not lost); torchrun's workers may hold the pipes open after a kill, hence the 1 s cap.
      child.once('exit', (code, signal) => {
        const done = () => resolve({ code, signal });
        child.once('close', done);
        setTimeout(done, 1_000).unref();
      });
      child.once('error', (err) => {
        state.stderr = keepTail(`${state.stderr}${String(err)}\n`);
        resolve({ code: null, signal: null });
      });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      if (state.onStderr) state.onStderr(text);
      else state.stderr = keepTail(state.stderr + text);
    });
    // EPIPE when the engine died mid-write: the exit handler reports it, with the stderr tail.
    child.stdin!.on('error', () => undefined);
    const lines = createInterface({ input: child.stdout!, crlfDelay: Infinity });
    const firstLine = new Promise<string | undefined>((resolve) => {
      state.onLine = (line) => resolve(line);
      lines.once('close', () => resolve(undefined));
    });
    lines.on('line', (line) => state.onLine?.(line));

    const timeoutMs = options.startupTimeoutMs ?? 120_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const failed = (code: 'TRAJ_E_ENGINE_START' | 'TRAJ_E_ENGINE_PROTOCOL', message: string, info?: ExitInfo, hint?: string) =>
      new EngineProcessError(code, message, {
        stderr: tailLines(state.stderr, STDERR_TAIL_LINES),
        exitCode: info?.code ?? null,
        signal: info?.signal ?? null,
        hint: hint ?? 'read the engine stderr above; `bash engine/setup.sh` repairs a broken engine/.venv',
      });
    try {
      const first = await Promise.race([firstLine, timedOut, exited.then(() => undefined)]);
      if (first === 'timeout') {
        throw failed('TRAJ_E_ENGINE_START', `the engine wrote no ready line within ${timeoutMs} ms`, undefined,
          'raise startupTimeoutMs on a slow machine, or read the engine stderr above');
      }
      if (first === undefined) {
        const info = await exited;
        throw failed('TRAJ_E_ENGINE_START', `the engine exited before it was ready (${describeExit(info)})`, info);
      }
      const ready = readyEventSchema.safeParse(parseJson(first));
      if (!ready.success) throw failed('TRAJ_E_ENGINE_PROTOCOL', `the engine's first line is not its ready line: ${first.slice(0, 300)}`);
      if (ready.data.protocol !== PROTOCOL_VERSION) {
        throw failed('TRAJ_E_ENGINE_PROTOCOL', `the engine speaks protocol ${ready.data.protocol}, this client ${PROTOCOL_VERSION}`, undefined,
          'the engine and the TypeScript side come from different versions of trajstore: update both');
      }
      options.logger?.info(ready.data, 'engine ready');
      return new EngineClient(child, ready.data, exited, state, options);
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  // ------------------------------------------------------------------------------ commands

  /** Loads the model, adds a fresh LoRA adapter, builds the optimizer. Once per process. */
  init(config: EngineConfig, options: { timeoutMs?: number } = {}): Promise<EngineReply<'init'>> {
    return this.send({ cmd: 'init', config }, options.timeoutMs);
  }

  /** One training step on a batch file (writeBatchFile); `policyVersion` is the version this step produces. */
  trainStep(batchPath: string, options: { policyVersion?: number; timeoutMs?: number } = {}): Promise<EngineReply<'train_step', TrainStepMetrics>> {
    return this.send({ cmd: 'train_step', batch: batchPath, ...(options.policyVersion === undefined ? {} : { policy_version: options.policyVersion }) },
      options.timeoutMs) as Promise<EngineReply<'train_step', TrainStepMetrics>>;
  }

  /** The policy's logprobs of every token of a batch, written to `outPath` (readLogprobsFile); metrics hold the mismatch to the behavior logprobs. */
  computeLogprobs(batchPath: string, outPath: string, options: { adapter?: boolean; timeoutMs?: number } = {}): Promise<EngineReply<'compute_logprobs'>> {
    return this.send({ cmd: 'compute_logprobs', batch: batchPath, out: outPath, ...(options.adapter === undefined ? {} : { adapter: options.adapter }) },
      options.timeoutMs);
  }

  /** Writes a checkpoint directory atomically: PEFT adapter, optimizer, RNG, step, `metadata`. */
  save(path: string, options: { metadata?: Record<string, unknown>; overwrite?: boolean; policyVersion?: number; timeoutMs?: number } = {}): Promise<EngineReply<'save'>> {
    const cmd: EngineCommand = { cmd: 'save', path };
    if (options.metadata !== undefined) cmd.metadata = options.metadata;
    if (options.overwrite !== undefined) cmd.overwrite = options.overwrite;
    if (options.policyVersion !== undefined) cmd.policy_version = options.policyVersion;
    return this.send(cmd, options.timeoutMs);
  }

  /** Restores a checkpoint written by `save` (checksums verified); returns its step, policy version and metadata. */
  load(path: string, options: { timeoutMs?: number } = {}): Promise<EngineReply<'load'>> {
    return this.send({ cmd: 'load', path }, options.timeoutMs);
  }

  status(options: { timeoutMs?: number } = {}): Promise<EngineReply<'status'>> {
    return this.send({ cmd: 'status' }, options.timeoutMs);
  }

  /**
   * Asks the engine to exit and waits for it; SIGTERM after `graceMs` (default 30 s), SIGKILL
   * 5 s later. Idempotent; a dead engine resolves at once.
   */
  async shutdown(graceMs = 30_000): Promise<ExitInfo> {
    if (!this.exitInfo && !this.stopping) {
      this.stopping = true;
      this.send({ cmd: 'shutdown' }).catch(() => undefined);
      this.child.stdin!.end();
    }
    return this.waitOrKill(graceMs);
  }

  /** Kills the engine at once (SIGKILL by default) and waits for it to exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<ExitInfo> {
    this.stopping = true;
    if (!this.exitInfo) this.child.kill(signal);
    return this.exited;
  }

  /** The last lines the engine wrote to stderr (its logs). */
  stderrTail(lines = STDERR_TAIL_LINES): string {
    return tailLines(this.stderr, lines);
  }

  /** Whether the process is still running. */
  get alive(): boolean {
    return this.exitInfo === undefined;
  }

  // ------------------------------------------------------------------------------ plumbing

  private send<C extends EngineCommandName>(command: EngineCommand & { cmd: C }, timeoutMs = this.commandTimeoutMs): Promise<EngineReply<C>> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.stopping && command.cmd !== 'shutdown') {
      return Promise.reject(new EngineProcessError('TRAJ_E_ENGINE_EXITED', `'${command.cmd}' sent after shutdown`, {
        hint: 'start a new EngineClient',
      }));
    }
    const id = this.nextId++;
    return new Promise<EngineReply<C>>((resolve, reject) => {
      const entry: Pending = { id, cmd: command.cmd, resolve: resolve as unknown as Pending['resolve'], reject, timer: undefined };
      if (timeoutMs !== undefined) {
        entry.timer = setTimeout(() => this.onTimeout(entry, timeoutMs), timeoutMs);
      }
      this.pending.set(id, entry);
      this.logger?.debug({ id, cmd: command.cmd }, 'engine command');
      this.child.stdin!.write(`${JSON.stringify({ id, ...command })}\n`);
    });
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    const parsed = replySchema.safeParse(parseJson(line));
    if (!parsed.success) {
      this.fail(new EngineProcessError('TRAJ_E_ENGINE_PROTOCOL', `the engine wrote a line that is not a reply: ${line.slice(0, 300)}`, {
        stderr: this.stderrTail(),
        hint: 'a library printed to the protocol stream; the engine was stopped. This is a bug: report it with the line above',
      }));
      return;
    }
    const reply = parsed.data;
    const entry = typeof reply.id === 'number' ? this.pending.get(reply.id) : undefined;
    if (!entry) {
      // id null: the engine could not parse our line (it never sends unsolicited replies).
      this.logger?.warn({ reply }, 'engine reply matches no pending command');
      return;
    }
    this.pending.delete(entry.id);
    clearTimeout(entry.timer);
    if (reply.ok) entry.resolve({ result: reply.result, metrics: reply.metrics });
    else entry.reject(engineErrorFrom(entry.cmd, reply.error));
  }

  private onTimeout(entry: Pending, timeoutMs: number): void {
    // The engine cannot abandon a command midway: kill it, so the caller restarts from a checkpoint.
    this.fail(new EngineProcessError('TRAJ_E_ENGINE_TIMEOUT', `'${entry.cmd}' got no reply within ${timeoutMs} ms; the engine was killed`, {
      stderr: this.stderrTail(),
      hint: 'raise the timeout, or lower training.micro_batch_tokens; restart the engine and load the last checkpoint',
    }));
  }

  private onExit(info: ExitInfo): void {
    this.exitInfo = info;
    const expected = this.stopping && this.pending.size === 0;
    if (!expected) this.logger?.error({ pid: this.pid, ...info }, 'engine exited');
    this.fail(new EngineProcessError('TRAJ_E_ENGINE_EXITED', `the engine (pid ${this.pid}) exited: ${describeExit(info)}`, {
      stderr: this.stderrTail(),
      exitCode: info.code,
      signal: info.signal,
      hint: info.signal === 'SIGKILL'
        ? 'killed, perhaps by the kernel for lack of memory (see dmesg); restart the engine and load the last checkpoint'
        : 'read the engine stderr above; restart the engine and load the last checkpoint',
    }));
  }

  /** Rejects every pending command with `err`, marks the client dead and kills the process if it still runs. */
  private fail(err: EngineProcessError): void {
    // The first failure is the cause (a timeout, then the exit it caused): later calls see it.
    this.dead ??= err;
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      if (entry.cmd === 'shutdown' && err.code === 'TRAJ_E_ENGINE_EXITED' && this.stopping) {
        entry.resolve({ result: { bye: true }, metrics: {} });
      } else {
        entry.reject(err);
      }
    }
    this.pending.clear();
    if (!this.exitInfo) this.child.kill('SIGKILL');
  }

  private async waitOrKill(graceMs: number): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    const within = (ms: number) => Promise.race([this.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), ms).unref())]);
    if (await within(graceMs)) return this.exited;
    this.child.kill('SIGTERM');
    if (await within(5_000)) return this.exited;
    this.child.kill('SIGKILL');
    return this.exited;
  }
}

interface StartState {
  stderr: string;
  onStderr: ((text: string) => void) | undefined;
  onLine: ((line: string) => void) | undefined;
}

/** The engine's environment: unbuffered Python (stderr tails arrive before a crash), no hub access. */
function engineEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { PYTHONUNBUFFERED: '1', HF_HUB_OFFLINE: '1', ...env };
}

function parseJson(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

function keepTail(text: string): string {
  return text.length > STDERR_KEEP ? text.slice(-STDERR_KEEP) : text;
}

function tailLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

function describeExit(info: ExitInfo): string {
  return info.signal ? `killed by ${info.signal}` : `exit code ${info.code}`;
}
