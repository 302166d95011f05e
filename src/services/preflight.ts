import { ServiceError } from '../util/errors.js';
import { commandOutput, freeBytes, isPortFree } from './process.js';

/** Checks made before installing or starting a service, each failing with what to do. */

const MIN_FREE_BYTES = 1 << 30;

/** Fails with what to install when a required tool is not on PATH. */
export function requireTool(command: string, args: string[], code: string, hint: string): void {
  const result = commandOutput(command, args);
  if (result.missing || !result.ok) throw new ServiceError(command, code, `\`${command}\` is not installed or does not run`, { hint });
}

export function ensureDisk(service: string, dir: string): void {
  const free = freeBytes(dir);
  if (free < MIN_FREE_BYTES) {
    throw new ServiceError(service, 'TRAJ_E_SERVICE_DISK_FULL', `only ${(free / 2 ** 20).toFixed(0)} MiB free under ${dir}; at least 1 GiB is needed`, {
      hint: 'free disk space, or point TRAJSTORE_HOME at a larger disk',
    });
  }
}

export async function ensurePortFree(service: string, host: string, port: number, variable: string): Promise<void> {
  if (await isPortFree(host, port)) return;
  throw new ServiceError(service, 'TRAJ_E_SERVICE_PORT_IN_USE', `port ${port} on ${host} is taken by another process`, {
    hint: `stop that process (find it with \`ss -ltnp 'sport = :${port}'\`) or choose another port with ${variable}`,
  });
}
