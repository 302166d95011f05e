/**
 * `trajstore adapters list|pull`: what a run published to an S3 adapter store, and a verified
 * copy of a version in a directory, through the real CLI and the local S3-compatible server.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { adapterChecksum, LocalAdapterStore, S3AdapterStore } from '../../src/consumers/trainer/adapter-store.js';
import { ensureEngineVenv, ensureTinyModel, makeTestAdapter } from '../../src/inference/cpu-policy-server.js';
import { testS3 } from '../support/services.js';

test('adapters list shows what a run published; pull copies the newest or a chosen version, verified', { timeout: 180_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-adapters-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await ensureEngineVenv({ install: true });
  const modelDir = await ensureTinyModel();
  const s3 = testS3('cli');
  const store = new S3AdapterStore(s3.location, new LocalAdapterStore(join(dir, 'trainer-cache')), s3.options);
  const v1 = await store.publish('run', 1, makeTestAdapter(join(dir, 'a1'), { modelDir, seed: 1, rank: 4 }));
  const v2 = await store.publish('run', 2, makeTestAdapter(join(dir, 'a2'), { modelDir, seed: 2, rank: 4 }));

  const config = join(dir, 'config.yaml');
  writeFileSync(config, [
    'run: { id: cli }',
    'model: { name: tiny }',
    `storage: { adapters: "${s3.location}", adapter_cache: "${join(dir, 'host-cache')}", s3_endpoint: "${s3.options.endpoint}", s3_force_path_style: true }`,
    '',
  ].join('\n'));
  const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/trajstore.mjs', 'adapters', ...args, '-c', config], { encoding: 'utf8', env: process.env });

  const list = cli('list', '--run', 'run', '--json');
  assert.equal(list.status, 0, list.stderr);
  assert.deepEqual(JSON.parse(list.stdout), [v1, v2].map(({ version, checksum, uri }) => ({ version, checksum, uri })));

  const newest = cli('pull', '--run', 'run', '--to', join(dir, 'newest'));
  assert.equal(newest.status, 0, newest.stderr);
  assert.equal(JSON.parse(newest.stdout).version, 2);
  assert.equal(adapterChecksum(join(dir, 'newest')), v2.checksum);

  const first = cli('pull', '--run', 'run', '1', '--to', join(dir, 'first'));
  assert.equal(first.status, 0, first.stderr);
  assert.equal(adapterChecksum(join(dir, 'first')), v1.checksum);

  const missing = cli('pull', '--run', 'run', '7', '--to', join(dir, 'none'));
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /run run has no version 7 in s3:\/\/.*; it has v1, v2/);

  mkdirSync(join(dir, 'busy'));
  writeFileSync(join(dir, 'busy', 'x'), 'x');
  const busy = cli('pull', '--run', 'run', '--to', join(dir, 'busy'));
  assert.equal(busy.status, 2);
  assert.match(busy.stderr, /busy is not empty/);
});
