/**
 * Content-addressed blob store for screenshots and other large observations. Blobs never go
 * into Kafka: events carry an ObservationRef (SHA-256, URI, media type, size) and the bytes live
 * here, at an address derived from their hash, so the same screenshot is stored once and a
 * reference can be checked against the bytes it names.
 *
 *   const store = openBlobStore('.trajstore/blobs');          // or 's3://bucket/prefix'
 *   const ref = await store.put(png, 'image/png');             // { sha256, uri, byteSize }
 *   const bytes = await store.get(ref.sha256);
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ProducerError } from '../producers/errors.js';
import { parseStorageLocation } from './location.js';
import { createS3Client, parseS3Location, S3_HINT, s3Status, type S3Options } from './s3.js';

export interface StoredBlob {
  /** Lower-case hex SHA-256 of the bytes. */
  sha256: string;
  /** Where the bytes can be fetched: file:// or s3://. */
  uri: string;
  byteSize: number;
  mediaType: string;
}

export interface BlobStore {
  /** Stores the bytes (once: a blob already present is not written again) and returns its address. */
  put(bytes: Uint8Array, mediaType: string): Promise<StoredBlob>;
  /** The bytes of a blob; the hash is verified, so a corrupted blob is an error, not bad data. */
  get(sha256: string): Promise<Buffer>;
  has(sha256: string): Promise<boolean>;
  /** The URI a blob with this hash has (or would have). */
  uriOf(sha256: string): string;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** A local directory by default; `s3://bucket/prefix` selects an S3-compatible bucket. */
export function openBlobStore(location: string, s3: S3Options = {}): BlobStore {
  const where = parseStorageLocation(location);
  if (!where) {
    throw new ProducerError('TRAJ_E_BLOB_STORE', `unsupported blob store location ${location}`, {
      hint: 'use a local directory, a file:// URI, or s3://bucket/prefix (storage.blobs)',
    });
  }
  return where.kind === 's3' ? new S3BlobStore(where.uri, s3) : new LocalBlobStore(where.path);
}

const HEX64 = /^[0-9a-f]{64}$/;

function checkHash(sha256: string): void {
  if (!HEX64.test(sha256)) throw new ProducerError('TRAJ_E_BLOB_STORE', `${JSON.stringify(sha256)} is not a SHA-256 hex digest`);
}

/** Two-level fan-out (`ab/abcdef...`) keeps directories small with millions of screenshots. */
function relativeKey(sha256: string): string {
  return `sha256/${sha256.slice(0, 2)}/${sha256}`;
}

export class LocalBlobStore implements BlobStore {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  private pathOf(sha256: string): string {
    return join(this.root, relativeKey(sha256));
  }

  uriOf(sha256: string): string {
    return pathToFileURL(this.pathOf(sha256)).href;
  }

  async put(bytes: Uint8Array, mediaType: string): Promise<StoredBlob> {
    const sha256 = sha256Hex(bytes);
    const path = this.pathOf(sha256);
    if (!(await this.has(sha256))) {
      try {
        await mkdir(join(this.root, 'sha256', sha256.slice(0, 2)), { recursive: true });
        // Write then rename: a reader never sees a half-written blob under its final name.
        const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
        await writeFile(tmp, bytes);
        await rename(tmp, path);
      } catch (err) {
        throw new ProducerError('TRAJ_E_BLOB_STORE', `could not write blob ${sha256} under ${this.root}: ${(err as Error).message}`, {
          cause: err,
          retriable: true,
          hint: 'check that storage.blobs is a writable directory with free space',
        });
      }
    }
    return { sha256, uri: this.uriOf(sha256), byteSize: bytes.byteLength, mediaType };
  }

  async get(sha256: string): Promise<Buffer> {
    checkHash(sha256);
    let bytes: Buffer;
    try {
      bytes = await readFile(this.pathOf(sha256));
    } catch (err) {
      throw new ProducerError('TRAJ_E_BLOB_STORE', `blob ${sha256} is not in ${this.root}`, { cause: err });
    }
    if (sha256Hex(bytes) !== sha256) throw new ProducerError('TRAJ_E_BLOB_STORE', `blob ${sha256} in ${this.root} is corrupted (hash mismatch)`);
    return bytes;
  }

  /** Deletes a blob (a corrupted copy in a cache, before it is fetched again); absent is fine. */
  async remove(sha256: string): Promise<void> {
    checkHash(sha256);
    await rm(this.pathOf(sha256), { force: true });
  }

  async has(sha256: string): Promise<boolean> {
    checkHash(sha256);
    try {
      await stat(this.pathOf(sha256));
      return true;
    } catch {
      return false;
    }
  }
}

/** An S3 bucket (or S3-compatible server: MinIO, R2, Ceph) through the AWS SDK v3. */
export class S3BlobStore implements BlobStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;

  constructor(location: string, options: S3Options = {}) {
    const where = parseS3Location(location);
    if (!where) throw new ProducerError('TRAJ_E_BLOB_STORE', `no bucket in ${location}`, { hint: 'write s3://BUCKET/optional/prefix' });
    this.bucket = where.bucket;
    this.prefix = where.prefix;
    this.client = createS3Client(options);
  }

  private keyOf(sha256: string): string {
    return this.prefix ? `${this.prefix}/${relativeKey(sha256)}` : relativeKey(sha256);
  }

  uriOf(sha256: string): string {
    return `s3://${this.bucket}/${this.keyOf(sha256)}`;
  }

  async put(bytes: Uint8Array, mediaType: string): Promise<StoredBlob> {
    const sha256 = sha256Hex(bytes);
    if (!(await this.has(sha256))) {
      await this.wrap(`write blob ${sha256}`, () =>
        this.client.send(new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.keyOf(sha256),
          Body: bytes,
          ContentType: mediaType,
          // S3 checks the upload against this digest, so a corrupted upload is refused.
          ChecksumSHA256: Buffer.from(sha256, 'hex').toString('base64'),
        })));
    }
    return { sha256, uri: this.uriOf(sha256), byteSize: bytes.byteLength, mediaType };
  }

  async get(sha256: string): Promise<Buffer> {
    checkHash(sha256);
    const out = await this.wrap(`read blob ${sha256}`, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keyOf(sha256) })));
    const bytes = Buffer.from(await out.Body!.transformToByteArray());
    if (sha256Hex(bytes) !== sha256) throw new ProducerError('TRAJ_E_BLOB_STORE', `blob ${this.uriOf(sha256)} is corrupted (hash mismatch)`);
    return bytes;
  }

  async has(sha256: string): Promise<boolean> {
    checkHash(sha256);
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(sha256) }));
      return true;
    } catch (err) {
      if (s3Status(err) === 404) return false;
      throw new ProducerError('TRAJ_E_BLOB_STORE', `could not reach ${this.uriOf(sha256)}: ${(err as Error).message}`, {
        cause: err,
        retriable: true,
        hint: S3_HINT,
      });
    }
  }

  private async wrap<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw new ProducerError('TRAJ_E_BLOB_STORE', `could not ${what} in s3://${this.bucket}: ${(err as Error).message}`, {
        cause: err,
        retriable: true,
        hint: S3_HINT,
      });
    }
  }
}
