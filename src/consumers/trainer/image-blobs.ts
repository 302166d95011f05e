/**
 * The images a vision batch cites, where the engine reads them: a local directory in the blob
 * store's layout (`<root>/sha256/<2 hex>/<hex>`), passed to the engine as `vision.blob_root`.
 *
 * - A local blob store (storage.blobs a directory): the engine reads the store itself.
 * - An S3 blob store: each image is downloaded once into storage.blob_cache, checked against its
 *   hash (S3BlobStore.get verifies), and the engine reads the cache.
 *
 * `ensure` runs when a group is decided, before it can reach a batch: an image that is missing,
 * or whose bytes do not match its hash, drops the group (`image_missing`, counted), so the
 * trainer never crashes on it and never trains a prompt without its image. The engine checks
 * every hash again when it loads the bytes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { TrajstoreConfig } from '../../config/index.js';
import { LocalBlobStore, S3BlobStore } from '../../storage/blob-store.js';
import { parseStorageLocation } from '../../storage/location.js';
import { s3OptionsOf, s3Status } from '../../storage/s3.js';
import type { Logger } from '../../util/logger.js';

export interface EnsureResult {
  /** Hashes that could not be made available under `root`, each with why. */
  missing: Array<{ sha256: string; reason: string }>;
}

export interface ImageBlobsOptions {
  /** Attempts for a remote read that fails for a reason other than "not found" (network, 5xx). */
  attempts?: number;
  backoffMs?: number;
  logger?: Logger;
}

/** Hashes verified under root that are remembered (bounded: older ones are checked again). */
const VERIFIED_CAP = 100_000;

export class ImageBlobs {
  /** The directory the engine reads (vision.blob_root). */
  readonly root: string;
  private readonly local: LocalBlobStore;
  private readonly remote: S3BlobStore | null;
  private readonly verified = new Set<string>();
  private readonly attempts: number;
  private readonly backoffMs: number;

  constructor(storage: TrajstoreConfig['storage'], private readonly opts: ImageBlobsOptions = {}) {
    const where = parseStorageLocation(storage.blobs);
    if (!where) throw new Error(`unsupported blob store location ${storage.blobs}`);
    if (where.kind === 's3') {
      this.remote = new S3BlobStore(where.uri, s3OptionsOf(storage));
      this.local = new LocalBlobStore(storage.blob_cache);
    } else {
      this.remote = null;
      this.local = new LocalBlobStore(where.path);
    }
    this.root = this.local.root;
    this.attempts = opts.attempts ?? 4;
    this.backoffMs = opts.backoffMs ?? 500;
  }

  /**
   * Makes every image available and verified under `root`. `checkOnly` (dry runs): only asks
   * whether each exists, downloading and hashing nothing.
   */
  async ensure(hashes: Iterable<string>, options: { checkOnly?: boolean } = {}): Promise<EnsureResult> {
    const missing: EnsureResult['missing'] = [];
    for (const sha256 of new Set(hashes)) {
      if (this.verified.has(sha256)) continue;
      const reason = options.checkOnly ? await this.check(sha256) : await this.fetch(sha256);
      if (reason === null) {
        if (!options.checkOnly) this.remember(sha256);
      } else {
        missing.push({ sha256, reason });
      }
    }
    return { missing };
  }

  private async check(sha256: string): Promise<string | null> {
    try {
      if (await this.local.has(sha256)) return null;
      if (this.remote && (await this.remote.has(sha256))) return null;
      return `not in ${this.remote ? this.remote.uriOf(sha256) : this.local.root}`;
    } catch (err) {
      return (err as Error).message;
    }
  }

  /** null when the verified bytes are under root; else why not. */
  private async fetch(sha256: string): Promise<string | null> {
    let localProblem: string;
    try {
      await this.local.get(sha256); // reads and checks the hash
      return null;
    } catch (err) {
      localProblem = (err as Error).message;
    }
    if (!this.remote) return localProblem;
    // A corrupted cached copy would block the fresh one (put keeps what is there).
    if (/hash mismatch/.test(localProblem)) await this.local.remove(sha256);
    for (let attempt = 1; ; attempt++) {
      try {
        const bytes = await this.remote.get(sha256); // verified against the hash
        await this.local.put(bytes, 'application/octet-stream');
        return null;
      } catch (err) {
        const status = s3Status((err as { cause?: unknown }).cause);
        const message = (err as Error).message;
        // Not found and corrupted bytes stay so; anything else may be the network.
        const permanent = status === 404 || status === 403 || /hash mismatch|not a SHA-256/.test(message);
        if (permanent || attempt >= this.attempts) return message;
        this.opts.logger?.warn({ sha256, attempt, reason: message }, 'image download failed; retrying');
        await sleep(this.backoffMs * 2 ** (attempt - 1));
      }
    }
  }

  /** Checks this image again next time (the engine found it missing or corrupted after all). */
  forget(sha256: string): void {
    this.verified.delete(sha256);
  }

  private remember(sha256: string): void {
    if (this.verified.size >= VERIFIED_CAP) {
      const oldest = this.verified.values().next();
      if (!oldest.done) this.verified.delete(oldest.value);
    }
    this.verified.add(sha256);
  }
}
