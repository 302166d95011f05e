/**
 * The adapter store: one immutable directory per published version, `<root>/<run>/v<N>/`, in
 * PEFT format (adapter_config.json + adapter_model.safetensors) that vLLM and PEFT load as is.
 *
 * A version is written into a hidden temporary directory, fsynced and renamed, so a reader never
 * sees half an adapter; its files are made read-only. The checksum covers every file (name and
 * SHA-256, in name order), so two adapters with equal checksums are byte-identical: the replay
 * determinism test compares these. Publishing a version that exists is a no-op when the bytes
 * are the same (a resumed trainer republishing) and an error when they are not.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, fsyncSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { TrainerError, TrainerErrorCode } from './errors.js';

export interface StoredAdapter {
  version: number;
  dir: string;
  /** `sha256:` + 64 hex characters. */
  checksum: string;
  /** `file://` URI of `dir`. */
  uri: string;
}

export class LocalAdapterStore {
  readonly root: string;

  constructor(location: string) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location) && !location.startsWith('file://')) {
      throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `adapter store ${location}: only local directories are supported by the trainer so far`, {
        hint: 'set storage.adapters to a local directory (the policy servers must be able to read it, e.g. a shared volume)',
      });
    }
    this.root = resolve(location.replace(/^file:\/\//, ''));
  }

  versionDir(runId: string, version: number): string {
    return join(this.root, runId, `v${version}`);
  }

  /** Copies the PEFT files of `adapterDir` into the store as `version` of `runId`. */
  publish(runId: string, version: number, adapterDir: string): StoredAdapter {
    const final = this.versionDir(runId, version);
    const checksum = adapterChecksum(adapterDir);
    if (existsSync(final)) {
      const existing = adapterChecksum(final);
      if (existing !== checksum) {
        throw new TrainerError(TrainerErrorCode.VERSION_CONFLICT, `${final} exists with checksum ${existing}, the new adapter has ${checksum}`, {
          hint: 'versions are immutable: resume from the newest checkpoint, or train under a new run id',
        });
      }
      return { version, dir: final, checksum, uri: `file://${final}` };
    }
    mkdirSync(join(this.root, runId), { recursive: true });
    const tmp = join(this.root, runId, `.v${version}.tmp-${randomBytes(4).toString('hex')}`);
    mkdirSync(tmp);
    try {
      for (const name of adapterFiles(adapterDir)) {
        copyFileSync(join(adapterDir, name), join(tmp, name));
        fsyncPath(join(tmp, name));
        chmodSync(join(tmp, name), 0o444);
      }
      fsyncPath(tmp);
      renameSync(tmp, final);
      fsyncPath(join(this.root, runId));
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
    return { version, dir: final, checksum, uri: `file://${final}` };
  }
}

/** The files that make a PEFT adapter (what vLLM reads), in name order. */
function adapterFiles(dir: string): string[] {
  const names = readdirSync(dir).filter((n) => statSync(join(dir, n)).isFile() && !n.startsWith('.')).sort();
  if (!names.includes('adapter_config.json') || !names.includes('adapter_model.safetensors')) {
    throw new TrainerError(TrainerErrorCode.CHECKPOINT, `${dir} is not a PEFT adapter (adapter_config.json and adapter_model.safetensors expected)`);
  }
  return names;
}

/** `sha256:` of the lines `name sha256(file)` of every adapter file, in name order. */
export function adapterChecksum(dir: string): string {
  const outer = createHash('sha256');
  for (const name of adapterFiles(dir)) {
    const inner = createHash('sha256').update(readFileSync(join(dir, name))).digest('hex');
    outer.update(`${name} ${inner}\n`);
  }
  return `sha256:${outer.digest('hex')}`;
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
