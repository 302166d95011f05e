/**
 * Vision-language trajectories on the trainer's side: placeholder counts (transformers'
 * smart_resize, reproduced), sequences that carry their prompt's images, groups dropped for a
 * placeholder mismatch or a missing image, the batch file's `images` / `image_processing`
 * metadata (the engine's contract), the images made local for the engine (local and S3 blob
 * stores), and the engine's init config. The engine itself is faked where a step is run: its
 * side of the contract is tested in engine/tests.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import type { Producer } from 'kafkajs';
import { TrajstoreConfigSchema, type TrajstoreConfig, type TrajstoreConfigInput } from '../../src/config/index.js';
import { stepTensors } from '../../src/consumers/trainer/batcher.js';
import { TrainerCore } from '../../src/consumers/trainer/core.js';
import { engineConfigFor, imageTokenIdFor } from '../../src/consumers/trainer/engine-setup.js';
import { prepareGroup, type FilterOptions } from '../../src/consumers/trainer/filters.js';
import { ImageBlobs } from '../../src/consumers/trainer/image-blobs.js';
import {
  ImageGeometryError,
  imagePatchGrid,
  imageTokenCount,
  placeholderMismatch,
  roundHalfEven,
  smartResize,
} from '../../src/consumers/trainer/image-tokens.js';
import { episodeSequences } from '../../src/consumers/trainer/sequences.js';
import type { AssembledGroup, AssembledTurn } from '../../src/consumers/trainer/types.js';
import type { EngineClient } from '../../src/engine/client.js';
import { decodeSafetensors, packBatch, writeBatchFile, type Batch } from '../../src/engine/batch-file.js';
import {
  encodeTrajectoryEvent,
  newTrajectoryEvent,
  type ImageProcessing,
  type PromptImage,
  type TrajectoryEvent,
  type TrajectoryEventPayload,
} from '../../src/schemas/index.js';
import { LocalBlobStore, S3BlobStore, sha256Hex } from '../../src/storage/blob-store.js';
import { createS3Client, parseS3Location } from '../../src/storage/s3.js';
import { createLogger } from '../../src/util/logger.js';
import { solidPng } from '../producers/fake-gbox-api.js';
import { testS3 } from '../support/services.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

/** Qwen3-VL's settings (its preprocessor_config.json) and the tiny VL model's CPU budget. */
const QWEN3_VL: ImageProcessing = {
  processor: 'Qwen2VLImageProcessorFast', processor_version: 'vLLM 0.11.0',
  min_pixels: 65_536, max_pixels: 16_777_216, patch_size: 16, merge_size: 2, temporal_patch_size: 2,
};
const TINY: ImageProcessing = { ...QWEN3_VL, processor_version: 'transformers 5.17.0', min_pixels: 4096, max_pixels: 65_536 };

describe('image placeholder counts (transformers smart_resize)', () => {
  it('1280x720 at Qwen3-VL settings: 704x1280 (720/32 = 22.5 rounds to even), a 44x80 patch grid, 880 tokens', () => {
    assert.deepEqual(smartResize(720, 1280, 32, QWEN3_VL.min_pixels, QWEN3_VL.max_pixels), { height: 704, width: 1280 });
    assert.deepEqual(imagePatchGrid(720, 1280, QWEN3_VL), { rows: 44, cols: 80 });
    assert.equal(imageTokenCount(720, 1280, QWEN3_VL), 880);
  });

  it('1280x720 at the tiny model settings (min 4096, max 65536 px): a 12x20 patch grid, 60 tokens', () => {
    assert.deepEqual(smartResize(720, 1280, 32, 4096, 65_536), { height: 192, width: 320 });
    assert.deepEqual(imagePatchGrid(720, 1280, TINY), { rows: 12, cols: 20 });
    assert.equal(imageTokenCount(720, 1280, TINY), 60);
  });

  it('rounds like Python: halves to the even integer', () => {
    assert.deepEqual([0.5, 1.5, 2.5, 22.5, 23.5, 2.4999, 2.5001, 7].map(roundHalfEven), [0, 2, 2, 22, 24, 2, 3, 7]);
  });

  it('agrees with transformers 5.17.0 on 300 sizes at three settings (Qwen3-VL, tiny, Qwen2-VL), ties included', () => {
    const fixture = JSON.parse(readFileSync(new URL('./smart-resize-cases.json', import.meta.url), 'utf8')) as {
      settings: Record<string, [number, number, number, number]>;
      cases: Array<[string, number, number, number]>;
    };
    for (const [name, width, height, tokens] of fixture.cases) {
      const [patch, merge, min, max] = fixture.settings[name]!;
      assert.equal(imageTokenCount(height, width, { patch_size: patch, merge_size: merge, min_pixels: min, max_pixels: max }), tokens, `${name} ${width}x${height}`);
    }
  });

  it('refuses an aspect ratio over 200, as the processor does', () => {
    assert.throws(() => smartResize(1, 201, 32, 4096, 65_536), (e: unknown) => e instanceof ImageGeometryError && /aspect ratio must be smaller than 200/.test(e.message));
    assert.equal(imageTokenCount(1, 200, TINY), imageTokenCount(1, 200, TINY)); // 200 itself is fine
  });

  it('a prompt matches its images when its pad count is the sum over them', () => {
    const images = [{ width: 1280, height: 720 }, { width: 36, height: 64 }];
    const ids = (pads: number) => [1, 2, ...Array(pads).fill(9), 3];
    assert.equal(placeholderMismatch({ promptTokenIds: ids(66), promptImages: images, imageProcessing: TINY }, 9), null);
    assert.match(placeholderMismatch({ promptTokenIds: ids(65), promptImages: images, imageProcessing: TINY }, 9)!, /65 image tokens .* 66 expected for 2 images/);
    assert.match(placeholderMismatch({ promptTokenIds: ids(2), promptImages: [], imageProcessing: null }, 9)!, /without images/);
    assert.equal(placeholderMismatch({ promptTokenIds: ids(0), promptImages: [], imageProcessing: null }, 9), null);
    assert.match(placeholderMismatch({ promptTokenIds: ids(6), promptImages: [{ width: 1, height: 300 }], imageProcessing: TINY }, 9)!, /aspect ratio/);
  });
});

// ------------------------------------------------------------------------- vision episodes

const PAD = 200;
const V_START = 201;
const V_END = 202;

function png(seed: number, width = 36, height = 64): Buffer {
  return solidPng(width, height, [seed % 256, (seed * 7) % 256, (seed * 13) % 256]);
}

function promptImage(bytes: Buffer, width = 36, height = 64): PromptImage {
  return { sha256: sha256Hex(bytes), media_type: 'image/png', byte_size: bytes.length, width, height };
}

/** Tokens a server renders for an image: start, one pad per placeholder, end. */
function imageTokens(img: PromptImage, settings: ImageProcessing): number[] {
  return [V_START, ...Array(imageTokenCount(img.height, img.width, settings)).fill(PAD), V_END];
}

/**
 * An episode's turns as a vision chat server produces them: every screenshot stays in the
 * history, so turn k's prompt is turn k-1's prompt + completion + the new observation.
 */
function visionTurns(shots: PromptImage[], settings: ImageProcessing, opts: { padDelta?: number } = {}): AssembledTurn[] {
  const turns: AssembledTurn[] = [];
  let prompt: number[] = [10, 11];
  shots.forEach((img, k) => {
    prompt = [...prompt, 12, ...imageTokens(img, settings), 13];
    if (opts.padDelta && k === shots.length - 1) prompt.push(...Array(opts.padDelta).fill(PAD));
    const completion = [20 + k, 21 + k];
    turns.push({ turnIndex: k, promptTokenIds: prompt, completionTokenIds: completion, completionLogprobs: [-0.5, -0.25], tokenPolicyVersions: null,
      policyVersion: 0, promptImages: shots.slice(0, k + 1), imageProcessing: settings });
    prompt = [...prompt, ...completion];
  });
  return turns;
}

describe('vision sequences', () => {
  const a = promptImage(png(1));
  const b = promptImage(png(2));
  const c = promptImage(png(3));

  it('merged turns carry the last turn’s images, in prompt order, with their settings', () => {
    const seqs = episodeSequences(visionTurns([a, b, c], TINY), 1);
    assert.equal(seqs.length, 1);
    assert.deepEqual(seqs[0]!.images, [a.sha256, b.sha256, c.sha256]);
    assert.deepEqual(seqs[0]!.imageProcessing, TINY);
    assert.equal(seqs[0]!.tokens.filter((t) => t === PAD).length, 3 * imageTokenCount(64, 36, TINY));
  });

  it('a turn whose images do not extend the sequence’s starts a new sequence, even if its tokens would', () => {
    const turns = visionTurns([a, b], TINY);
    turns[1]!.promptImages = [c, b]; // the first image is not the one the sequence holds
    const seqs = episodeSequences(turns, 1);
    assert.deepEqual(seqs.map((s) => s.images), [[a.sha256], [c.sha256, b.sha256]]);
  });

  it('other image settings start a new sequence', () => {
    const turns = visionTurns([a, b], TINY);
    turns[1]!.imageProcessing = { ...TINY, max_pixels: 131_072 };
    assert.equal(episodeSequences(turns, 1).length, 2);
  });

  it('text turns make text sequences: no images, no settings', () => {
    const [s] = episodeSequences([{ turnIndex: 0, promptTokenIds: [1, 2], completionTokenIds: [3], completionLogprobs: [-1], tokenPolicyVersions: null, policyVersion: 0, promptImages: [], imageProcessing: null }], 1);
    assert.deepEqual(s!.images, []);
    assert.equal(s!.imageProcessing, null);
  });
});

function visionGroup(turnsPerEpisode: AssembledTurn[][]): AssembledGroup {
  return {
    groupId: 'g', runId: 'r', purpose: 'train', taskId: 't', groupSize: turnsPerEpisode.length, first: { partition: 0, offset: 0 }, closedBy: 'complete', lastEventTs: 1,
    episodes: turnsPerEpisode.map((turns, i) => ({ episodeId: `e${i}`, index: i, turns, reward: i % 2, rewardCount: 1, status: 'success' })),
  };
}

describe('vision filters', () => {
  const FILTER: FilterOptions = { maxStaleness: 2, stalePolicy: 'drop', stdScaling: true, maxSeqLength: 4096, imageTokenId: PAD };
  const shots = [promptImage(png(1)), promptImage(png(2))];

  it('groups whose placeholders match their images train, their sequences citing the images', () => {
    const r = prepareGroup(visionGroup([visionTurns(shots, TINY), visionTurns(shots, TINY)]), 0, FILTER);
    assert.ok(r.ok);
    assert.deepEqual(r.group.sequences.map((s) => s.images), [shots.map((s) => s.sha256), shots.map((s) => s.sha256)]);
  });

  it('one turn with a pad too many drops the whole group as image_placeholder_mismatch, saying where', () => {
    const r = prepareGroup(visionGroup([visionTurns(shots, TINY), visionTurns(shots, TINY, { padDelta: 1 })]), 0, FILTER);
    assert.ok(!r.ok);
    assert.equal(r.reason, 'image_placeholder_mismatch');
    assert.match(r.detail!, /episode e1 turn 1: 13 image tokens .* 12 expected for 2 images/);
  });

  it('images recorded under other settings than the server applied do not match', () => {
    const turns = visionTurns(shots, TINY);
    for (const t of turns) t.imageProcessing = QWEN3_VL; // claims 66 tokens an image, the prompt has 6
    const r = prepareGroup(visionGroup([turns, visionTurns(shots, TINY)]), 0, FILTER);
    assert.equal(!r.ok && r.reason, 'image_placeholder_mismatch');
  });

  it('a text run drops groups with images as image_unsupported', () => {
    const r = prepareGroup(visionGroup([visionTurns(shots, TINY), visionTurns(shots, TINY)]), 0, { ...FILTER, imageTokenId: null });
    assert.equal(!r.ok && r.reason, 'image_unsupported');
  });
});

// ----------------------------------------------------------------------------- batch files

describe('batch file: the images / image_processing metadata contract', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vision-batch-'));
  const text = { tokens: [1, 2, 3], lossMask: [0, 1, 1], behaviorLogprobs: [0, -1, -1], advantage: 1 };
  const h1 = 'a'.repeat(64);
  const h2 = 'b'.repeat(64);

  it('one entry per sequence: the sequence’s hashes in prompt order, and null or the settings (snake_case)', async () => {
    const path = join(dir, 'v.safetensors');
    await writeBatchFile(path, packBatch([text, { ...text, images: [h2, h1], imageProcessing: TINY }, text]));
    const { metadata } = decodeSafetensors(readFileSync(path));
    assert.deepEqual(JSON.parse(metadata.images!), [[], [h2, h1], []]);
    assert.deepEqual(JSON.parse(metadata.image_processing!), [null, {
      processor: 'Qwen2VLImageProcessorFast', processor_version: 'transformers 5.17.0', min_pixels: 4096, max_pixels: 65536,
      patch_size: 16, merge_size: 2, temporal_patch_size: 2,
    }, null]);
    assert.equal(metadata.image_processing, '[null,{"processor":"Qwen2VLImageProcessorFast","processor_version":"transformers 5.17.0","min_pixels":4096,"max_pixels":65536,"patch_size":16,"merge_size":2,"temporal_patch_size":2},null]');
  });

  it('a batch without images has neither key, byte for byte what it was before images existed', async () => {
    const plain = join(dir, 'plain.safetensors');
    const tagged = join(dir, 'tagged.safetensors');
    await writeBatchFile(plain, packBatch([text, text]));
    await writeBatchFile(tagged, { ...packBatch([text, text]), images: [[], []], imageProcessing: [null, null] });
    const { metadata } = decodeSafetensors(readFileSync(plain));
    assert.deepEqual(Object.keys(metadata).sort(), ['format', 'version']);
    assert.ok(readFileSync(plain).equals(readFileSync(tagged)));
  });

  it('refuses lists that do not match the sequences, bad hashes, and images without settings', async () => {
    const base = packBatch([text, text]);
    const write = (b: Partial<Batch>) => writeBatchFile(join(dir, 'bad.safetensors'), { ...base, ...b });
    await assert.rejects(write({ images: [[h1]], imageProcessing: [TINY] }), /images has 1 entries, one per sequence \(2\)/);
    await assert.rejects(write({ images: [[h1.toUpperCase()], []], imageProcessing: [TINY, null] }), /not a lower-case SHA-256/);
    await assert.rejects(write({ images: [[h1], []], imageProcessing: [null, null] }), /image_processing must be set exactly when/);
    await assert.rejects(write({ images: [[h1], []], imageProcessing: [{ ...TINY, patch_size: 0 }, null] }), /patch_size is 0/);
  });

  it('a step’s tensors list every sequence’s images (the trainer’s side of the same contract)', () => {
    const shots = [promptImage(png(1))];
    const r = prepareGroup(visionGroup([visionTurns(shots, TINY), [{ turnIndex: 0, promptTokenIds: [1, 2], completionTokenIds: [3], completionLogprobs: [-1], tokenPolicyVersions: null, policyVersion: 0, promptImages: [], imageProcessing: null }]]), 0,
      { maxStaleness: 2, stalePolicy: 'drop', stdScaling: true, maxSeqLength: 4096, imageTokenId: PAD });
    assert.ok(r.ok);
    const t = stepTensors([r.group]);
    assert.deepEqual(t.images, [[shots[0]!.sha256], []]);
    assert.deepEqual(t.imageProcessing, [TINY, null]);
  });
});

// ------------------------------------------------------------------------ images for the engine

describe('images made local for the engine', () => {
  const storage = (over: Partial<TrajstoreConfig['storage']>): TrajstoreConfig['storage'] => ({ ...TrajstoreConfigSchema.parse({ model: { name: 'm' } }).storage, ...over });

  it('a local store is the engine’s root: present images pass verified, missing and corrupted ones are named', async () => {
    const root = mkdtempSync(join(tmpdir(), 'blobs-'));
    const store = new LocalBlobStore(root);
    const good = await store.put(png(1), 'image/png');
    const bad = await store.put(png(2), 'image/png');
    writeFileSync(join(root, 'sha256', bad.sha256.slice(0, 2), bad.sha256), 'tampered');
    const blobs = new ImageBlobs(storage({ blobs: root }));
    assert.equal(blobs.root, store.root);
    const absent = sha256Hex(Buffer.from('never stored'));
    const { missing } = await blobs.ensure([good.sha256, bad.sha256, absent, good.sha256]);
    assert.deepEqual(missing.map((m) => m.sha256), [bad.sha256, absent]);
    assert.match(missing[0]!.reason, /corrupted/);
    assert.deepEqual((await blobs.ensure([absent], { checkOnly: true })).missing.map((m) => m.sha256), [absent]);
  });

  it('an S3 store: each image is copied into blob_cache in the store layout, verified; missing and corrupted uploads are named', async () => {
    const s3 = testS3('vision-blobs');
    const remote = new S3BlobStore(s3.location, s3.options);
    const good = await remote.put(png(3), 'image/png');
    // An object under a hash its bytes do not have (a broken upload by hand): refused on read.
    const forged = sha256Hex(png(4));
    const where = parseS3Location(s3.location)!;
    await createS3Client(s3.options).send(new PutObjectCommand({ Bucket: where.bucket, Key: `${where.prefix}/sha256/${forged.slice(0, 2)}/${forged}`, Body: png(5) }));
    const cache = mkdtempSync(join(tmpdir(), 'blob-cache-'));
    const blobs = new ImageBlobs({ ...storage({ blobs: s3.location, blob_cache: cache }), s3_endpoint: s3.options.endpoint, s3_force_path_style: true }, { backoffMs: 10 });
    assert.equal(blobs.root, new LocalBlobStore(cache).root);
    const absent = sha256Hex(Buffer.from('never uploaded'));
    const { missing } = await blobs.ensure([good.sha256, forged, absent]);
    assert.deepEqual(missing.map((m) => m.sha256).sort(), [forged, absent].sort());
    assert.deepEqual(readFileSync(join(cache, 'sha256', good.sha256.slice(0, 2), good.sha256)), png(3));
    // A corrupted cached copy is fetched again.
    writeFileSync(join(cache, 'sha256', good.sha256.slice(0, 2), good.sha256), 'tampered');
    const again = new ImageBlobs({ ...storage({ blobs: s3.location, blob_cache: cache }), s3_endpoint: s3.options.endpoint, s3_force_path_style: true });
    assert.deepEqual((await again.ensure([good.sha256])).missing, []);
    assert.deepEqual(readFileSync(join(cache, 'sha256', good.sha256.slice(0, 2), good.sha256)), png(3));
  });
});

describe('engine init config and the image token id', () => {
  const config = (over: TrajstoreConfigInput = { model: { name: 'm' } }) => TrajstoreConfigSchema.parse(over);

  it('a text run’s engine config has no vision section; a vision run’s names the blob root', () => {
    assert.equal('vision' in engineConfigFor(config()), false);
    const local = engineConfigFor(config({ model: { name: 'm', image_token_id: 5 }, inference: { image_processing: TINY }, storage: { blobs: '/data/blobs' } }));
    assert.deepEqual(local.vision, { blob_root: '/data/blobs' });
    const s3 = engineConfigFor(config({ model: { name: 'm', image_token_id: 5 }, inference: { image_processing: TINY }, storage: { blobs: 's3://b/p', blob_cache: '/cache/blobs' } }));
    assert.deepEqual(s3.vision, { blob_root: '/cache/blobs' });
  });

  it('the image token id comes from the config, else from the model directory’s config.json; a vision run without one, or with one its model directory contradicts, is refused naming the field', () => {
    assert.equal(imageTokenIdFor(config()), null, 'text runs need none');
    assert.equal(imageTokenIdFor(config({ model: { name: 'm', image_token_id: 151655 }, inference: { image_processing: QWEN3_VL } })), 151655);
    const modelDir = mkdtempSync(join(tmpdir(), 'vl-model-'));
    writeFileSync(join(modelDir, 'config.json'), JSON.stringify({ model_type: 'qwen3_vl', image_token_id: 151655, vision_config: {} }));
    assert.equal(imageTokenIdFor(config({ model: { name: 'm', path: modelDir }, inference: { image_processing: QWEN3_VL } })), 151655);
    // A configured id the model directory contradicts (cua_grpo.yaml's 151655 on another model) is refused, naming both.
    assert.throws(() => imageTokenIdFor(config({ model: { name: 'm', path: modelDir, image_token_id: 9 }, inference: { image_processing: QWEN3_VL } })),
      (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'TRAJ_E_CONFIG' && /model\.image_token_id: is 9, but .* has image_token_id 151655/.test(e.message));
    assert.equal(imageTokenIdFor(config({ model: { name: 'm', path: modelDir, image_token_id: 151655 }, inference: { image_processing: QWEN3_VL } })), 151655);
    const empty = mkdtempSync(join(tmpdir(), 'no-model-'));
    assert.throws(() => imageTokenIdFor(config({ model: { name: 'm', path: empty }, inference: { image_processing: QWEN3_VL } })),
      (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'TRAJ_E_CONFIG' && /model\.image_token_id/.test(e.message));
  });

  it('inference.image_processing is all explicit; errors name the field', () => {
    const r = TrajstoreConfigSchema.safeParse({ model: { name: 'm' }, inference: { image_processing: { ...TINY, merge_size: undefined, min_pixels: 10 ** 9 } } });
    assert.ok(!r.success);
    const paths = r.error.issues.map((i) => i.path.join('.'));
    assert.ok(paths.includes('inference.image_processing.merge_size'), paths.join(', '));
    const r2 = TrajstoreConfigSchema.safeParse({ model: { name: 'm' }, inference: { image_processing: { ...TINY, min_pixels: 10 ** 9 } } });
    assert.ok(!r2.success && r2.error.issues.some((i) => i.path.join('.') === 'inference.image_processing.min_pixels'));
  });
});

// ----------------------------------------------------------------- the trainer, engine faked

/** One vision group's events: G episodes of `shots.length` turns, every screenshot kept in the history. */
function visionEvents(runId: string, groupId: string, shots: PromptImage[], opts: { padDelta?: number } = {}): TrajectoryEvent[] {
  const base = { run_id: runId, group_id: groupId, producer_id: 'p', policy_version: 0, purpose: 'train' } as const;
  const ev = (payload: TrajectoryEventPayload, episode_id: string | null, seq: number) => newTrajectoryEvent({ ...base, episode_id, seq, payload });
  const out = [ev({ GroupStarted: { task: { task_id: 't', task_family: 'f', environment: 'gbox', params_json: '{}', split: 'train' }, group_size: 2,
    sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: 8, extra_json: null } } }, null, 0)];
  const ids = ['e0', 'e1'].map((e) => `${groupId}-${e}`);
  ids.forEach((eid, i) => {
    out.push(ev({ EpisodeStarted: { episode_index: i, env_seed: i, env_instance_id: null } }, eid, 0));
    let seq = 1;
    for (const t of visionTurns(shots, TINY, i === 1 ? opts : {})) {
      out.push(ev({ Turn: { turn_index: t.turnIndex, model: 'tiny-vl', prompt_token_ids: [...t.promptTokenIds], completion_token_ids: [...t.completionTokenIds],
        completion_logprobs: [...t.completionLogprobs], token_policy_versions: null, prompt_format: 'messages_json', prompt: '[]', completion_text: 'x',
        action: null, action_parse_error: 'none', observation: null, latency_ms: 1, env_latency_ms: null, finish_reason: 'stop', request_id: null,
        prompt_images: t.promptImages, image_processing: t.imageProcessing } }, eid, seq++));
    }
    out.push(ev({ Reward: { value: i, components: {}, source: 'env', turn_index: null } }, eid, seq++));
    out.push(ev({ EpisodeFinished: { status: 'success', num_turns: shots.length, prompt_tokens: 1, completion_tokens: 1, duration_ms: 1, error_code: null, error_message: null, final_observation: null } }, eid, seq++));
  });
  out.push(ev({ GroupCompleted: { status: 'complete', episode_ids: ids, duration_ms: 1 } }, null, 1));
  return out;
}

describe('the trainer with vision groups (engine faked, no Kafka)', () => {
  it('writes each sequence’s images into the batch, drops groups with a missing image or mismatched placeholders, and counts them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vision-core-'));
    const blobsDir = join(dir, 'blobs');
    mkdirSync(blobsDir);
    const store = new LocalBlobStore(blobsDir);
    const shots = await Promise.all([1, 2].map(async (i) => promptImage(png(i)))); // bytes put below
    for (const i of [1, 2]) await store.put(png(i), 'image/png');
    const lost = promptImage(png(99)); // never stored
    const config = TrajstoreConfigSchema.parse({
      run: { id: 'vis' }, model: { name: 'tiny-vl', image_token_id: PAD, max_seq_length: 4096 },
      training: { batch_size: 2, max_steps: 100, publish_every_steps: 100, output_dir: join(dir, 'out') },
      checkpoint: { dir: join(dir, 'ckpt'), save_every_steps: 100 },
      inference: { image_processing: TINY }, storage: { blobs: blobsDir, adapters: join(dir, 'adapters') },
    });
    const batches: Record<string, string>[] = [];
    const engine = {
      trainStep: async (path: string) => {
        batches.push(decodeSafetensors(readFileSync(path)).metadata);
        return { metrics: { loss: 0 } };
      },
    } as unknown as EngineClient;
    const producer = { send: async () => [] } as unknown as Producer;
    const core = new TrainerCore({ config, runId: 'vis', sourceRunId: 'vis', mode: 'stream', engine, producer, publisher: null, logger });
    const groups = [
      visionEvents('vis', 'g-ok-1', shots),
      visionEvents('vis', 'g-lost', [shots[0]!, lost]),
      visionEvents('vis', 'g-mismatch', shots, { padDelta: 2 }),
      visionEvents('vis', 'g-ok-2', shots.slice(0, 1)),
    ];
    let offset = 0;
    await core.ingest(groups.flat().map((e) => ({ partition: 0, offset: offset++, timestamp: e.timestamp, value: encodeTrajectoryEvent(e) })), 'topic');
    assert.equal(core.step, 1);
    assert.equal(batches.length, 1);
    const [meta] = batches;
    const all = shots.map((s) => s.sha256);
    assert.deepEqual(JSON.parse(meta!.images!), [all, all, [all[0]], [all[0]]], 'g-ok-1 (2 episodes, 2 images each), then g-ok-2');
    assert.deepEqual(JSON.parse(meta!.image_processing!), [TINY, TINY, TINY, TINY]);
    assert.equal(core.totals.groups_dropped_image_missing, 1);
    assert.equal(core.totals.groups_dropped_image_placeholder_mismatch, 1);
    const ledger = readFileSync(join(dir, 'out', 'ledger.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { trained: string[]; dropped: Record<string, string> });
    assert.deepEqual(ledger.at(-1)!.trained, ['g-ok-1', 'g-ok-2']);
    assert.deepEqual(ledger.at(-1)!.dropped, { 'g-lost': 'image_missing', 'g-mismatch': 'image_placeholder_mismatch' });
  });
});
