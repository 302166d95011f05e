/**
 * The adapter store, local and S3 (the local S3-compatible server that `services up --s3`
 * starts): versions are immutable and byte-identical wherever they are stored; a version in S3 is
 * whole or absent; a machine without the local copy gets it back from the bucket, verified; two
 * trainers racing on one version cannot both commit it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { adapterChecksum, LocalAdapterStore, openAdapterStore, S3AdapterStore, type AdapterStore } from '../../src/consumers/trainer/adapter-store.js';
import { ensureEngineVenv, ensureTinyModel, makeTestAdapter } from '../../src/inference/cpu-policy-server.js';
import { createS3Client, parseS3Location } from '../../src/storage/s3.js';
import { testS3 } from '../support/services.js';

const dir = mkdtempSync(join(tmpdir(), 'trajstore-adapter-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Two different adapters for the tiny model (PEFT files, as the engine writes them). */
let adapterA: string;
let adapterB: string;
before(async () => {
  await ensureEngineVenv({ install: true });
  const modelDir = await ensureTinyModel();
  adapterA = makeTestAdapter(join(dir, 'a'), { modelDir, seed: 1, rank: 4 });
  adapterB = makeTestAdapter(join(dir, 'b'), { modelDir, seed: 2, rank: 4 });
});

let n = 0;
function s3Store(location: string, options: ReturnType<typeof testS3>['options']): S3AdapterStore {
  return new S3AdapterStore(location, new LocalAdapterStore(join(dir, `cache-${++n}`)), options);
}

const kinds: Array<[string, () => AdapterStore]> = [
  ['local', () => openAdapterStore({ adapters: join(dir, `store-${++n}`), adapterCache: join(dir, 'unused') })],
  ['s3', () => {
    const s3 = testS3('adapters');
    return openAdapterStore({ adapters: s3.location, adapterCache: join(dir, `cache-${++n}`), s3: s3.options });
  }],
];

for (const [kind, open] of kinds) {
  describe(`${kind} adapter store`, () => {
    it('stores a version under its checksum; the same bytes again are a no-op, other bytes a version conflict', async () => {
      const store = open();
      const first = await store.publish('run', 1, adapterA);
      assert.equal(first.checksum, adapterChecksum(adapterA));
      assert.equal(adapterChecksum(first.dir), first.checksum, 'the local copy has the same bytes');
      assert.match(first.uri, kind === 'local' ? /^file:\/\// : /^s3:\/\//);
      assert.deepEqual(await store.publish('run', 1, adapterA), first);
      await assert.rejects(store.publish('run', 1, adapterB), { code: 'TRAJ_E_TRAINER_VERSION_CONFLICT' });
      const second = await store.publish('run', 2, adapterB);
      assert.notEqual(second.checksum, first.checksum);
      assert.deepEqual(await store.open('run', 1, first.checksum), first);
    });

    it('lists the committed versions of a run, oldest first', async () => {
      const store = open();
      assert.deepEqual(await store.versions('run'), []);
      const v2 = await store.publish('run', 2, adapterB);
      const v1 = await store.publish('run', 1, adapterA);
      await store.publish('other', 1, adapterB);
      assert.deepEqual(await store.versions('run'), [v1, v2].map(({ version, checksum, uri }) => ({ version, checksum, uri })));
    });

    it('opening a version the store does not have says which and what to do', async () => {
      await assert.rejects(open().open('run', 7, adapterChecksum(adapterA)), (err: { code?: string; message: string; hint?: string }) =>
        err.code === 'TRAJ_E_TRAINER_ADAPTER_STORE' && /version 7 of run run is not in the adapter store/.test(err.message) && /storage\.adapters/.test(err.hint ?? ''));
    });
  });
}

describe('S3 adapter store', () => {
  it('puts the PEFT files under the checksum and commits the version with a manifest naming each file', async () => {
    const s3 = testS3('layout');
    const stored = await s3Store(s3.location, s3.options).publish('run', 1, adapterA);
    const hex = stored.checksum.slice('sha256:'.length);
    assert.equal(stored.uri, `${s3.location}/run/v1/${hex}/`);
    const { bucket, prefix } = parseS3Location(s3.location)!;
    const listed = await createS3Client(s3.options).send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/` }));
    // Every file PEFT wrote (adapter_config.json, adapter_model.safetensors, its README.md).
    const files = readdirSync(adapterA).sort();
    assert.ok(files.includes('adapter_model.safetensors'));
    assert.deepEqual(listed.Contents?.map((o) => o.Key!.slice(prefix.length + 1)).sort(), [...files.map((f) => `run/v1/${hex}/${f}`), 'run/v1/manifest.json']);
  });

  it('a version whose manifest was never written (a crash mid-upload) is not listed', async () => {
    const s3 = testS3('uncommitted');
    const store = s3Store(s3.location, s3.options);
    const v1 = await store.publish('run', 1, adapterA);
    const { bucket, prefix } = parseS3Location(s3.location)!;
    await createS3Client(s3.options).send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/run/v2/${'0'.repeat(64)}/adapter_config.json`, Body: '{}' }));
    assert.deepEqual((await store.versions('run')).map((v) => v.version), [v1.version]);
  });

  it('a trainer whose local copy is gone gets the version back from the bucket, verified', async () => {
    const s3 = testS3('restore');
    const published = await s3Store(s3.location, s3.options).publish('run', 1, adapterA);
    const elsewhere = s3Store(s3.location, s3.options);
    const restored = await elsewhere.open('run', 1, published.checksum);
    assert.notEqual(restored.dir, published.dir, 'a copy in the other cache');
    assert.equal(adapterChecksum(restored.dir), published.checksum);
    assert.equal(restored.uri, published.uri);
    // The checkpoint expects other bytes than the store has: refused, not loaded.
    await assert.rejects(s3Store(s3.location, s3.options).open('run', 1, adapterChecksum(adapterB)), { code: 'TRAJ_E_TRAINER_VERSION_CONFLICT' });
  });

  it('a file changed in the bucket after the commit is refused on download as corrupted', async () => {
    const s3 = testS3('corrupt');
    const published = await s3Store(s3.location, s3.options).publish('run', 1, adapterA);
    const { bucket, prefix } = parseS3Location(s3.location)!;
    const key = `${prefix}/run/v1/${published.checksum.slice('sha256:'.length)}/adapter_model.safetensors`;
    await createS3Client(s3.options).send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: Buffer.from('not an adapter') }));
    const elsewhere = s3Store(s3.location, s3.options);
    await assert.rejects(elsewhere.open('run', 1, published.checksum), (err: { code?: string; message: string }) =>
      err.code === 'TRAJ_E_TRAINER_ADAPTER_STORE' && /adapter_model\.safetensors does not match its SHA-256/.test(err.message));
  });

  it('two trainers publishing different bytes as one version: exactly one commits, the other gets a conflict', async () => {
    const s3 = testS3('race');
    const results = await Promise.allSettled([
      s3Store(s3.location, s3.options).publish('run', 1, adapterA),
      s3Store(s3.location, s3.options).publish('run', 1, adapterB),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(won.length, 1, JSON.stringify(results.map((r) => r.status)));
    assert.equal(lost[0]!.reason.code, 'TRAJ_E_TRAINER_VERSION_CONFLICT');
    const winner = (won[0] as PromiseFulfilledResult<{ checksum: string }>).value.checksum;
    const restored = await s3Store(s3.location, s3.options).open('run', 1, winner);
    assert.equal(adapterChecksum(restored.dir), winner, "the loser's upload did not touch the winner's files");
  });

  it('an unreachable endpoint is a TRAJ_E_TRAINER_ADAPTER_STORE error that says what to check', async () => {
    const s3 = testS3('down');
    const store = s3Store(s3.location, { ...s3.options, endpoint: 'http://127.0.0.1:9' });
    await assert.rejects(store.publish('run', 1, adapterA), (err: { code?: string; hint?: string }) =>
      err.code === 'TRAJ_E_TRAINER_ADAPTER_STORE' && /s3_endpoint/.test(err.hint ?? ''));
  });

  it('a location that is neither a directory nor s3:// is refused with the field to fix', () => {
    assert.throws(() => openAdapterStore({ adapters: 'gs://bucket/x', adapterCache: dir }), (err: { code?: string; hint?: string }) =>
      err.code === 'TRAJ_E_TRAINER_ADAPTER_STORE' && /storage\.adapters/.test(err.hint ?? ''));
    assert.ok(!existsSync(join(dir, 'gs:')));
  });
});
