/**
 * The demo's child processes: each `trajstore` role runs as its own process (as it would on a
 * cluster), its stdout and stderr appended to `<run dir>/logs/<name>.log`. Warnings and errors
 * from the JSON logs are echoed to the terminal with the child's name, so trouble is seen live
 * while the status view stays readable.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { projectRoot } from '../services/paths.js';

export interface Child {
  readonly name: string;
  readonly logFile: string;
  readonly process: ChildProcess;
  /** Resolves with the exit code (or 128 + signal number) once the process is gone. */
  readonly exited: Promise<number>;
  /** Whether it exited before we asked it to stop. */
  readonly crashed: () => boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs: number): Promise<number>;
}

const SIGNALS: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** `node bin/trajstore.mjs <args>` as a child named `name`. */
export function spawnTrajstore(name: string, args: string[], logDir: string, onLine: (name: string, line: string) => void, env: NodeJS.ProcessEnv = process.env): Child {
  const root = projectRoot();
  return spawnLogged(name, process.execPath, [join(root, 'bin', 'trajstore.mjs'), ...args], logDir, onLine, env);
}

export function spawnLogged(name: string, command: string, args: string[], logDir: string, onLine: (name: string, line: string) => void, env: NodeJS.ProcessEnv): Child {
  const logFile = join(logDir, `${name}.log`);
  const log: WriteStream = createWriteStream(logFile, { flags: 'a' });
  // A process group of its own: Ctrl-C at the terminal reaches the demo only, which then
  // stops the children in order (producers first) instead of all at once.
  const child = spawn(command, args, { cwd: projectRoot(), env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  for (const stream of [child.stdout!, child.stderr!]) {
    stream.pipe(log, { end: false });
    createInterface({ input: stream }).on('line', (line) => onLine(name, line));
  }
  let stopping = false;
  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => {
      log.end();
      resolve(code ?? 128 + (SIGNALS[signal ?? ''] ?? 0));
    });
    child.once('error', (err) => {
      log.write(`spawn failed: ${err.message}\n`);
      resolve(127);
    });
  });
  return {
    name, logFile, process: child, exited,
    crashed: () => !stopping && child.exitCode !== null,
    async stop(graceMs: number) {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A JSON log line worth showing on the terminal (pino level warn = 40 and above), as text. */
export function noteworthy(line: string): string | undefined {
  if (!line.startsWith('{')) return /error|Error|Traceback/.test(line) ? line : undefined;
  try {
    const rec = JSON.parse(line) as { level?: number; msg?: string; code?: string; err?: unknown; hint?: string };
    if ((rec.level ?? 0) < 40) return undefined;
    const extra = [rec.code, typeof rec.err === 'string' ? rec.err : undefined, rec.hint].filter(Boolean).join(' · ');
    return `${rec.level! >= 50 ? 'ERROR' : 'warn'} ${rec.msg ?? ''}${extra ? ` (${extra})` : ''}`;
  } catch {
    return undefined;
  }
}
