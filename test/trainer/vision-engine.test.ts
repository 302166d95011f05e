/**
 * A vision step end to end through the real engine: encoded Qwen3-VL-style Turn events (image
 * placeholder runs in the prompt ids, screenshots in an S3-compatible blob store) → the trainer's
 * filters and placeholder check → images copied into storage.blob_cache, verified → a batch file
 * naming each sequence's images → the engine (the tiny Qwen3-VL model made from a seed, its
 * `vision.blob_root` the cache) trains one step on them. A group citing an image that is not in
 * the store is dropped before the engine sees it. Kafka is not needed (the core is fed records);
 * the S3 store is the local s3proxy (`services up --s3`).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Producer } from 'kafkajs';
import { TrajstoreConfigSchema } from '../../src/config/index.js';
import { TrainerCore } from '../../src/consumers/trainer/core.js';
import { engineConfigFor, startEngine } from '../../src/consumers/trainer/engine-setup.js';
import { ensureEngineVenv, ensureTinyVlModel } from '../../src/inference/cpu-policy-server.js';
import { encodeTrajectoryEvent, type PromptImage } from '../../src/schemas/index.js';
import { S3BlobStore, sha256Hex } from '../../src/storage/blob-store.js';
import { createLogger } from '../../src/util/logger.js';
import { solidPng } from '../producers/fake-gbox-api.js';
import { testS3 } from '../support/services.js';
import { pngPromptImage, TINY_VL_IMAGE_PROCESSING as TINY, visionGroupEvents as group, visionTokenIds } from './fixtures.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

test('vision groups train through the real engine: images from S3, copied and verified into the blob cache, placeholders checked on both sides', { timeout: 600_000 }, async (t) => {
  await ensureEngineVenv({ install: true });
  const dir = mkdtempSync(join(tmpdir(), 'vision-engine-'));
  const modelDir = await ensureTinyVlModel();
  const model = { dir: modelDir, ids: visionTokenIds(modelDir) };
  const s3 = testS3('vision-engine');
  const store = new S3BlobStore(s3.location, s3.options);
  const pngs = [solidPng(36, 64, [200, 30, 30]), solidPng(64, 36, [30, 200, 30]), solidPng(48, 48, [30, 30, 200])];
  const shots: PromptImage[] = [];
  for (const png of pngs) shots.push(pngPromptImage(png, (await store.put(png, 'image/png')).sha256));
  const absent = solidPng(40, 40, [1, 2, 3]); // never uploaded
  const lost: PromptImage = { sha256: sha256Hex(absent), media_type: 'image/png', byte_size: absent.length, width: 40, height: 40 };

  const cache = join(dir, 'blob-cache');
  const config = TrajstoreConfigSchema.parse({
    run: { id: 'vision-e2e' },
    // No image_token_id: it is read from the model directory's config.json.
    model: { name: 'tiny-vl', path: model.dir, max_seq_length: 4096, dtype: 'float32' },
    lora: { r: 4, alpha: 8, dropout: 0 },
    training: { batch_size: 2, max_steps: 100, publish_every_steps: 100, max_tokens_per_microbatch: 4096, learning_rate: 1e-3, output_dir: join(dir, 'out') },
    checkpoint: { dir: join(dir, 'ckpt'), save_every_steps: 100 },
    inference: { image_processing: TINY },
    storage: { blobs: s3.location, blob_cache: cache, adapters: join(dir, 'adapters'), s3_endpoint: s3.options.endpoint, s3_force_path_style: true },
  });
  assert.deepEqual(engineConfigFor(config).vision, { blob_root: cache });
  const engine = await startEngine(config, logger);
  t.after(() => engine.shutdown());
  const sent: unknown[] = [];
  const producer = { send: async (m: unknown) => sent.push(m) } as unknown as Producer;
  const core = new TrainerCore({ config, runId: 'vision-e2e', sourceRunId: 'vision-e2e', mode: 'stream', engine, producer, publisher: null, logger });

  const events = [
    group('vision-e2e', 'g1', [[shots[0]!, shots[1]!], [shots[1]!, shots[2]!]], model.ids),
    group('vision-e2e', 'g-lost', [[shots[0]!, lost], [shots[2]!, shots[0]!]], model.ids),
    group('vision-e2e', 'g2', [[shots[2]!, shots[0]!], [shots[0]!, shots[1]!]], model.ids),
  ].flat();
  let offset = 0;
  await core.ingest(events.map((e) => ({ partition: 0, offset: offset++, timestamp: e.timestamp, value: encodeTrajectoryEvent(e) })), 'topic');

  assert.equal(core.step, 1, 'one optimizer step on the two groups with all their images');
  assert.equal(core.totals.groups_trained, 2);
  assert.equal(core.totals.groups_dropped_image_missing, 1);
  assert.equal(core.totals.groups_dropped_invalid_batch ?? 0, 0, 'the engine accepted the batch: images found, hashes and placeholder runs right');
  for (const s of shots) {
    assert.ok(readFileSync(join(cache, 'sha256', s.sha256.slice(0, 2), s.sha256)).equals(pngs[shots.indexOf(s)]!), 'each image was copied into the cache');
  }
  assert.equal(sent.length, 1, 'one step metrics event');

  // The engine's own checks, for what the trainer cannot see: an image deleted from the cache
  // after it was verified, and pads split into two runs for one image. The groups at fault are
  // dropped, counted; the rest of the step trains.
  const third = shots[2]!;
  rmSync(join(cache, 'sha256', third.sha256.slice(0, 2), third.sha256));
  const more = [
    group('vision-e2e', 'g3', [[shots[0]!, third], [shots[1]!, shots[0]!]], model.ids),
    group('vision-e2e', 'g4', [[shots[0]!, shots[1]!], [shots[1]!, shots[0]!]], model.ids),
    group('vision-e2e', 'g5', [[shots[0]!, shots[1]!], [shots[1]!, shots[0]!]], model.ids, { splitPads: true }),
    group('vision-e2e', 'g6', [[shots[1]!, shots[0]!], [shots[0]!, shots[1]!]], model.ids),
    // Cites the image the engine found missing: fetched again from the store, and trained.
    group('vision-e2e', 'g7', [[third, shots[0]!], [shots[1]!, third]], model.ids),
    group('vision-e2e', 'g8', [[shots[1]!], [shots[0]!]], model.ids),
  ].flat();
  await core.ingest(more.map((e) => ({ partition: 0, offset: offset++, timestamp: e.timestamp, value: encodeTrajectoryEvent(e) })), 'topic');
  assert.equal(core.totals.groups_dropped_image_missing, 2, 'g-lost before the engine, g3 by the engine');
  assert.equal(core.totals.groups_dropped_image_placeholder_mismatch, 1, 'g5 by the engine');
  assert.equal(core.totals.groups_trained, 6, 'g1 + g2, then g4, g6, g7 + g8');
  const ledger = readFileSync(join(dir, 'out', 'ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { trained: string[]; dropped: Record<string, string> });
  assert.deepEqual(ledger.map((l) => l.trained), [['g1', 'g2'], ['g4'], ['g6'], ['g7', 'g8']]);
  assert.deepEqual(Object.assign({}, ...ledger.map((l) => l.dropped)), { 'g-lost': 'image_missing', g3: 'image_missing', g5: 'image_placeholder_mismatch' });
  assert.ok(existsSync(join(cache, 'sha256', third.sha256.slice(0, 2), third.sha256)), 'the deleted image was fetched again');
});
