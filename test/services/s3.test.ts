/**
 * The optional local S3-compatible store (s3proxy): started in a home and on a port of this
 * test's own, it checks AWS signatures like S3 does, and stopping it leaves no process.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { freePort } from '../../src/inference/cpu-policy-server.js';
import { servicesOptionsFromEnv } from '../../src/services/manager.js';
import { isPortFree } from '../../src/services/process.js';
import { LOCAL_S3_BUCKET, LOCAL_S3_CREDENTIALS, S3PROXY_VERSION, S3Service } from '../../src/services/s3.js';

test('the local S3 store starts, serves signed requests on its bucket, refuses wrong credentials, and stops', { timeout: 180_000 }, async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'trajstore-s3-'));
  const port = await freePort();
  const service = new S3Service({ home, cacheDir: servicesOptionsFromEnv().cacheDir, host: '127.0.0.1', port, version: S3PROXY_VERSION, heapMb: 128 });
  const log: string[] = [];
  t.after(async () => {
    await service.stop(() => undefined);
    rmSync(home, { recursive: true, force: true });
  });
  await service.install((line) => log.push(line));
  assert.equal(await service.start((line) => log.push(line)), true);
  assert.equal(await service.start((line) => log.push(line)), false, 'a second start finds it running');
  const status = await service.status();
  assert.deepEqual([status.state, status.address, status.version], ['running', `http://127.0.0.1:${port}`, S3PROXY_VERSION]);

  const client = (secretAccessKey: string) => new S3Client({
    region: 'us-east-1', endpoint: service.endpoint, forcePathStyle: true, credentials: { accessKeyId: LOCAL_S3_CREDENTIALS.accessKeyId, secretAccessKey },
  });
  await client(LOCAL_S3_CREDENTIALS.secretAccessKey).send(new PutObjectCommand({ Bucket: LOCAL_S3_BUCKET, Key: 'k', Body: 'v' }));
  const got = await client(LOCAL_S3_CREDENTIALS.secretAccessKey).send(new GetObjectCommand({ Bucket: LOCAL_S3_BUCKET, Key: 'k' }));
  assert.equal(await got.Body!.transformToString(), 'v');
  await assert.rejects(client('wrong').send(new GetObjectCommand({ Bucket: LOCAL_S3_BUCKET, Key: 'k' })), (err: { $metadata?: { httpStatusCode?: number } }) =>
    err.$metadata?.httpStatusCode === 403);

  assert.equal(await service.stop(() => undefined), true);
  assert.equal((await service.status()).state, 'stopped');
  assert.ok(await isPortFree('127.0.0.1', port), 'the port was released');
});

test('services down with an unknown service name says which names exist', () => {
  const result = spawnSync(process.execPath, ['bin/trajstore.mjs', 'services', 'down', 'minio'], { encoding: 'utf8' });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /unknown service minio; known: kafka, clickhouse, s3/);
});
