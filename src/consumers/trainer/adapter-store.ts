/**
 * The adapter store: one immutable version per publish, `<root>/<run>/v<N>/`, in PEFT format
 * (adapter_config.json + adapter_model.safetensors) that vLLM and PEFT load as is. The root is a
 * local directory (default) or an S3-compatible bucket (`s3://bucket/prefix`).
 *
 * The checksum covers every file (name and SHA-256, in name order), so two adapters with equal
 * checksums are byte-identical, wherever they are stored: the replay determinism test compares
 * these. Publishing a version that exists is a no-op when the bytes are the same (a resumed
 * trainer republishing) and an error when they are not.
 *
 * Policy servers load adapters from a local path (vLLM's `load_lora_adapter` takes a directory),
 * so every stored version also has a local directory: the store itself when it is local, the
 * adapter cache (`storage.adapter_cache`) in front of S3.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, fsyncSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { parseStorageLocation } from '../../storage/location.js';
import { createS3Client, parseS3Location, S3_HINT, s3Status, type S3Options } from '../../storage/s3.js';
import { TrainerError, TrainerErrorCode } from './errors.js';

export interface StoredAdapter {
  version: number;
  /** A local directory holding the version: what policy servers are told to load. */
  dir: string;
  /** `sha256:` + 64 hex characters. */
  checksum: string;
  /** Where the version is stored for good: `file://` or `s3://` (the `policy.versions` event's adapter_uri). */
  uri: string;
}

/** A committed version as the store lists it. */
export interface VersionEntry {
  version: number;
  checksum: string;
  uri: string;
}

export interface AdapterStore {
  /** Where the store is (`storage.adapters`), for messages. */
  readonly location: string;
  /** Stores the PEFT files of `adapterDir` as `version` of `runId` (idempotent for the same bytes). */
  publish(runId: string, version: number, adapterDir: string): Promise<StoredAdapter>;
  /**
   * A stored version with a local directory, e.g. after a resume on a machine whose cache is
   * gone: fetched from the store when missing, and checked against `checksum`.
   */
  open(runId: string, version: number, checksum: string): Promise<StoredAdapter>;
  /** The run's committed versions, oldest first. */
  versions(runId: string): Promise<VersionEntry[]>;
}

export interface AdapterStoreLocations {
  /** `storage.adapters`: a directory, `file://` URI, or `s3://bucket/prefix`. */
  adapters: string;
  /** `storage.adapter_cache`: local copies in front of an s3:// store. */
  adapterCache: string;
  s3?: S3Options;
}

export function openAdapterStore(where: AdapterStoreLocations): AdapterStore {
  const store = parseStorageLocation(where.adapters);
  if (!store) {
    throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `adapter store ${where.adapters}: unsupported location`, {
      hint: 'set storage.adapters to a local directory, a file:// URI, or s3://bucket/prefix',
    });
  }
  return store.kind === 's3' ? new S3AdapterStore(store.uri, new LocalAdapterStore(where.adapterCache), where.s3 ?? {}) : new LocalAdapterStore(store.path);
}

/** Versions in a local directory (`location`: a path). */
export class LocalAdapterStore implements AdapterStore {
  readonly root: string;

  constructor(readonly location: string) {
    this.root = resolve(location);
  }

  versionDir(runId: string, version: number): string {
    return join(this.root, runId, `v${version}`);
  }

  /**
   * Copies the files into a hidden temporary directory, fsyncs and renames it, so a reader
   * never sees half an adapter; the files are made read-only.
   */
  async publish(runId: string, version: number, adapterDir: string): Promise<StoredAdapter> {
    const final = this.versionDir(runId, version);
    const checksum = adapterChecksum(adapterDir);
    const stored = { version, dir: final, checksum, uri: `file://${final}` };
    if (existsSync(final)) {
      checkSameVersion(final, adapterChecksum(final), checksum);
      return stored;
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
    return stored;
  }

  async open(runId: string, version: number, checksum: string): Promise<StoredAdapter> {
    const dir = this.versionDir(runId, version);
    if (!existsSync(dir)) {
      throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `version ${version} of run ${runId} is not in the adapter store (${dir} is missing)`, {
        hint: 'point storage.adapters at the store this run published to (the checkpoint names the version it expects)',
      });
    }
    checkSameVersion(dir, adapterChecksum(dir), checksum);
    return { version, dir, checksum, uri: `file://${dir}` };
  }

  async versions(runId: string): Promise<VersionEntry[]> {
    const runDir = join(this.root, runId);
    if (!existsSync(runDir)) return [];
    return readdirSync(runDir)
      .filter((name) => /^v\d+$/.test(name))
      .map((name) => Number(name.slice(1)))
      .sort((a, b) => a - b)
      .map((version) => {
        const dir = this.versionDir(runId, version);
        return { version, checksum: adapterChecksum(dir), uri: `file://${dir}` };
      });
  }
}

/** What `manifest.json` says of a version in S3; written last, so its presence means the version is complete. */
interface S3Manifest {
  format: 'trajstore-adapter';
  run_id: string;
  version: number;
  checksum: string;
  files: Array<{ name: string; sha256: string; bytes: number }>;
}

const MANIFEST = 'manifest.json';

/**
 * Versions in an S3-compatible bucket, with a local copy of each in the adapter cache for the
 * policy servers. S3 has no rename, so a version is committed by `manifest.json`, written last
 * and only if absent (If-None-Match): `s3://bucket/prefix/<run>/v<N>/manifest.json` names the
 * version's checksum, and its files (a PEFT directory) lie under that checksum,
 * `.../v<N>/<checksum hex>/`, each uploaded with its SHA-256 so the server refuses a corrupted
 * upload. Two trainers racing on one version with different bytes (a zombie after a failover)
 * never overwrite each other's files, and only one commits: the other reads the winner's
 * manifest, removes its own files and fails with a version conflict.
 */
export class S3AdapterStore implements AdapterStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;

  constructor(readonly location: string, private readonly cache: LocalAdapterStore, options: S3Options) {
    const where = parseS3Location(location);
    if (!where) throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `no bucket in ${location}`, { hint: 'write s3://BUCKET/optional/prefix' });
    this.bucket = where.bucket;
    this.prefix = where.prefix;
    this.client = createS3Client(options);
  }

  /** The PEFT directory of a version with this checksum: the `adapter_uri` of its version event. */
  uriOf(runId: string, version: number, checksum: string): string {
    return `s3://${this.bucket}/${this.filesPrefix(runId, version, checksum)}`;
  }

  async publish(runId: string, version: number, adapterDir: string): Promise<StoredAdapter> {
    const local = await this.cache.publish(runId, version, adapterDir);
    const stored = { ...local, uri: this.uriOf(runId, version, local.checksum) };
    const existing = await this.readManifest(runId, version);
    if (existing) {
      checkSameVersion(this.manifestUri(runId, version), existing.checksum, local.checksum);
      return stored;
    }
    const files = adapterFiles(local.dir).map((name) => {
      const bytes = readFileSync(join(local.dir, name));
      return { name, bytes, sha256: createHash('sha256').update(bytes).digest() };
    });
    const filesPrefix = this.filesPrefix(runId, version, local.checksum);
    for (const f of files) {
      await this.call(`upload ${stored.uri}${f.name}`, () => this.client.send(new PutObjectCommand({
        Bucket: this.bucket, Key: filesPrefix + f.name, Body: f.bytes, ChecksumSHA256: f.sha256.toString('base64'),
      })));
    }
    const manifest: S3Manifest = {
      format: 'trajstore-adapter', run_id: runId, version, checksum: local.checksum,
      files: files.map((f) => ({ name: f.name, sha256: f.sha256.toString('hex'), bytes: f.bytes.length })),
    };
    try {
      await this.client.send(new PutObjectCommand({
        Bucket: this.bucket, Key: this.keyOf(runId, version, MANIFEST), Body: JSON.stringify(manifest, null, 2), ContentType: 'application/json', IfNoneMatch: '*',
      }));
    } catch (err) {
      if (s3Status(err) !== 412) throw this.error(`commit ${this.manifestUri(runId, version)}`, err);
      // Another trainer committed this version between our read and our write.
      const winner = await this.readManifest(runId, version);
      if (winner?.checksum !== local.checksum) {
        await Promise.all(files.map((f) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: filesPrefix + f.name })).catch(() => undefined)));
      }
      checkSameVersion(this.manifestUri(runId, version), winner?.checksum ?? 'unknown', local.checksum);
    }
    return stored;
  }

  async open(runId: string, version: number, checksum: string): Promise<StoredAdapter> {
    const uri = this.uriOf(runId, version, checksum);
    if (existsSync(this.cache.versionDir(runId, version))) return { ...(await this.cache.open(runId, version, checksum)), uri };
    const manifest = await this.readManifest(runId, version);
    if (!manifest) {
      throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `version ${version} of run ${runId} is not in the adapter store (${this.manifestUri(runId, version)} is missing)`, {
        hint: 'point storage.adapters at the store this run published to (the checkpoint names the version it expects)',
      });
    }
    checkSameVersion(this.manifestUri(runId, version), manifest.checksum, checksum);
    const staging = join(this.cache.root, `.download-${randomBytes(4).toString('hex')}`);
    mkdirSync(staging, { recursive: true });
    try {
      for (const f of manifest.files) {
        const out = await this.call(`download ${uri}${f.name}`, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.filesPrefix(runId, version, checksum) + f.name })));
        const bytes = Buffer.from(await out.Body!.transformToByteArray());
        if (createHash('sha256').update(bytes).digest('hex') !== f.sha256) {
          throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `${uri}${f.name} does not match its SHA-256 in ${MANIFEST}: the stored version is corrupted`, {
            hint: 'publish the version again from its checkpoint under a new run id; the store never overwrites a committed version',
          });
        }
        writeFileSync(join(staging, f.name), bytes);
      }
      return { ...(await this.cache.publish(runId, version, staging)), uri };
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
  }

  async versions(runId: string): Promise<VersionEntry[]> {
    const runPrefix = this.runPrefix(runId);
    const committed: number[] = [];
    let token: string | undefined;
    do {
      const page = await this.call(`list s3://${this.bucket}/${runPrefix}`, () => this.client.send(new ListObjectsV2Command({
        Bucket: this.bucket, Prefix: runPrefix, ...(token ? { ContinuationToken: token } : {}),
      })));
      for (const o of page.Contents ?? []) {
        const m = /^v(\d+)\/manifest\.json$/.exec(o.Key!.slice(runPrefix.length));
        if (m) committed.push(Number(m[1]));
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    const entries: VersionEntry[] = [];
    for (const version of committed.sort((a, b) => a - b)) {
      const manifest = await this.readManifest(runId, version);
      if (manifest) entries.push({ version, checksum: manifest.checksum, uri: this.uriOf(runId, version, manifest.checksum) });
    }
    return entries;
  }

  private runPrefix(runId: string): string {
    return this.prefix ? `${this.prefix}/${runId}/` : `${runId}/`;
  }

  private keyOf(runId: string, version: number, name: string): string {
    return `${this.runPrefix(runId)}v${version}/${name}`;
  }

  private filesPrefix(runId: string, version: number, checksum: string): string {
    return this.keyOf(runId, version, `${checksum.replace(/^sha256:/, '')}/`);
  }

  private manifestUri(runId: string, version: number): string {
    return `s3://${this.bucket}/${this.keyOf(runId, version, MANIFEST)}`;
  }

  private async readManifest(runId: string, version: number): Promise<S3Manifest | null> {
    let out;
    try {
      out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keyOf(runId, version, MANIFEST) }));
    } catch (err) {
      if (s3Status(err) === 404) return null;
      throw this.error(`read ${this.manifestUri(runId, version)}`, err);
    }
    return JSON.parse(Buffer.from(await out.Body!.transformToByteArray()).toString('utf8')) as S3Manifest;
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.error(what, err);
    }
  }

  private error(what: string, err: unknown): TrainerError {
    return new TrainerError(TrainerErrorCode.ADAPTER_STORE, `could not ${what}: ${(err as Error).message}`, { cause: err, retriable: true, hint: S3_HINT });
  }
}

/**
 * Copies a stored version's files into `dest` (absent or empty) and checks the copy's checksum:
 * a version handed to a policy host or an evaluation elsewhere (`trajstore adapters pull`).
 */
export function copyVersion(stored: StoredAdapter, dest: string): void {
  if (existsSync(dest) && readdirSync(dest).length > 0) {
    throw new TrainerError(TrainerErrorCode.ADAPTER_STORE, `${dest} is not empty`, { hint: 'pull into a new or empty directory' });
  }
  mkdirSync(dest, { recursive: true });
  for (const name of adapterFiles(stored.dir)) copyFileSync(join(stored.dir, name), join(dest, name));
  checkSameVersion(dest, adapterChecksum(dest), stored.checksum);
}

function checkSameVersion(where: string, existing: string, checksum: string): void {
  if (existing === checksum) return;
  throw new TrainerError(TrainerErrorCode.VERSION_CONFLICT, `${where} exists with checksum ${existing}, the new adapter has ${checksum}`, {
    hint: 'versions are immutable: resume from the newest checkpoint, or train under a new run id',
  });
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
