/**
 * The content-addressed blob store: local directory (the default) and S3, against the local
 * S3-compatible server that `services up --s3` starts, and against an endpoint that is down.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { ProducerError } from '../../src/producers/errors.js';
import { freePort } from '../../src/inference/cpu-policy-server.js';
import { createS3Client, parseS3Location } from '../../src/storage/s3.js';
import { testS3 } from '../support/services.js';
import { LocalBlobStore, openBlobStore, S3BlobStore, sha256Hex } from '../../src/storage/blob-store.js';

test('a blob is stored once under its SHA-256 and read back verified', async () => {
  const root = mkdtempSync(join(tmpdir(), 'blobs-'));
  const store = openBlobStore(root);
  assert.ok(store instanceof LocalBlobStore);
  const bytes = Buffer.from('a screenshot, really');
  const a = await store.put(bytes, 'image/png');
  const b = await store.put(bytes, 'image/png');
  assert.deepEqual(a, b);
  assert.equal(a.sha256, sha256Hex(bytes));
  assert.equal(a.byteSize, bytes.length);
  assert.deepEqual(await store.get(a.sha256), bytes);
  assert.equal(await store.has(a.sha256), true);
  assert.equal(await store.has('0'.repeat(64)), false);
  assert.deepEqual(readdirSync(join(root, 'sha256', a.sha256.slice(0, 2))), [a.sha256], 'one file, no leftovers');
  // The URI names the file; a corrupted file is an error, not bad data.
  writeFileSync(fileURLToPath(a.uri), 'tampered');
  await assert.rejects(store.get(a.sha256), (err: unknown) => err instanceof ProducerError && /corrupted/.test(err.message));
  await assert.rejects(store.get('not-a-hash'), /not a SHA-256/);
});

test('s3:// selects the S3 store; an unreachable endpoint is a TRAJ_E_BLOB_STORE error with what to check', async () => {
  const port = await freePort();
  const store = openBlobStore('s3://shots/run-1', { endpoint: `http://127.0.0.1:${port}`, forcePathStyle: true, region: 'us-east-1' });
  assert.ok(store instanceof S3BlobStore);
  const sha = sha256Hex(Buffer.from('x'));
  assert.equal(store.uriOf(sha), `s3://shots/run-1/sha256/${sha.slice(0, 2)}/${sha}`);
  process.env.AWS_ACCESS_KEY_ID ??= 'test';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'test';
  await assert.rejects(store.put(Buffer.from('x'), 'image/png'), (err: unknown) =>
    err instanceof ProducerError && err.code === 'TRAJ_E_BLOB_STORE' && /s3_endpoint/.test(err.hint!));
  assert.throws(() => openBlobStore('ftp://x/y'), /unsupported blob store location/);
});

test('an S3 store keeps a blob once under its hash and refuses one changed in the bucket', async () => {
  const s3 = testS3('blobs');
  const store = openBlobStore(s3.location, s3.options);
  const bytes = Buffer.from('a screenshot in a bucket');
  const sha = sha256Hex(bytes);
  assert.equal(await store.has(sha), false);
  const ref = await store.put(bytes, 'image/png');
  assert.deepEqual(ref, { sha256: sha, uri: store.uriOf(sha), byteSize: bytes.length, mediaType: 'image/png' });
  assert.deepEqual(await store.put(bytes, 'image/png'), ref, 'a second put is the same blob');
  assert.equal(await store.has(sha), true);
  assert.deepEqual(await store.get(sha), bytes);
  const { bucket } = parseS3Location(s3.location)!;
  await createS3Client(s3.options).send(new PutObjectCommand({ Bucket: bucket, Key: ref.uri.slice(`s3://${bucket}/`.length), Body: 'tampered' }));
  await assert.rejects(store.get(sha), (err: unknown) => err instanceof ProducerError && /corrupted/.test(err.message));
});
