/**
 * Batch files: what `train_step` and `compute_logprobs` read (engine/PROTOCOL.md, "Batch files").
 *
 * A batch is N sequences concatenated into flat tensors of T tokens, no padding, stored as a
 * safetensors file. The safetensors format is small and fixed (8-byte little-endian header
 * length, a JSON header naming each tensor's dtype, shape and byte range, then the raw bytes), and
 * npm has no maintained writer (the `safetensors` package is a 0.0.1 placeholder), so it is
 * written here, with a reader for the engine's outputs (`compute_logprobs`).
 *
 *   const batch = packBatch(sequences);              // per-sequence arrays -> flat tensors
 *   await writeBatchFile('/tmp/b.safetensors', batch);
 *
 * Vision batches add two metadata keys (strings of JSON, like every safetensors metadata value),
 * both with one entry per sequence, in sequence order (N = cu_seqlens.length - 1):
 *   images            [[sha256 hex, ...], ...]  the sequence's prompt images in prompt order
 *                                              ([] for a text sequence); the bytes are in the
 *                                              engine's vision.blob_root, <root>/sha256/<2 hex>/<hex>
 *   image_processing  [null | {"processor", "processor_version", "min_pixels", "max_pixels",
 *                      "patch_size", "merge_size", "temporal_patch_size"}, ...]
 *                                              the settings the server expanded them with
 *                                              (null exactly where images is [])
 * Both are omitted when no sequence has images, so a text batch is byte-identical to one
 * written before images existed.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { BatchFileError } from './errors.js';

export const BATCH_FORMAT = 'trajstore-batch';
export const BATCH_FORMAT_VERSION = '1';

// ---------------------------------------------------------------------------- safetensors

export type SafetensorsDtype = 'F64' | 'F32' | 'I64' | 'I32' | 'U8';
export type TensorData = Float64Array | Float32Array | BigInt64Array | Int32Array | Uint8Array;

export interface Tensor {
  dtype: SafetensorsDtype;
  /** 1-D tensors only: the engine's batch and logprob tensors are all flat. */
  data: TensorData;
}

const ARRAY_OF: Record<SafetensorsDtype, { bytes: number; make: (b: ArrayBuffer, o: number, n: number) => TensorData }> = {
  F64: { bytes: 8, make: (b, o, n) => new Float64Array(b, o, n) },
  F32: { bytes: 4, make: (b, o, n) => new Float32Array(b, o, n) },
  I64: { bytes: 8, make: (b, o, n) => new BigInt64Array(b, o, n) },
  I32: { bytes: 4, make: (b, o, n) => new Int32Array(b, o, n) },
  U8: { bytes: 1, make: (b, o, n) => new Uint8Array(b, o, n) },
};

/**
 * Encodes 1-D tensors as safetensors bytes. Tensors are laid out widest dtype first so every
 * tensor starts at a multiple of its element size (the header is padded to 8 bytes), which lets
 * readers view the bytes without copying. Typed arrays are little-endian on every platform Node runs on.
 */
export function encodeSafetensors(tensors: Record<string, Tensor>, metadata: Record<string, string> = {}): Buffer {
  const names = Object.keys(tensors).sort((a, b) => {
    const wa = ARRAY_OF[tensors[a]!.dtype].bytes;
    const wb = ARRAY_OF[tensors[b]!.dtype].bytes;
    return wb - wa || (a < b ? -1 : a > b ? 1 : 0);
  });
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const name of names) {
    const t = tensors[name]!;
    const size = t.data.length * ARRAY_OF[t.dtype].bytes;
    header[name] = { dtype: t.dtype, shape: [t.data.length], data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + json.length + offset);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  let at = 8 + json.length;
  for (const name of names) {
    const d = tensors[name]!.data;
    Buffer.from(d.buffer, d.byteOffset, d.byteLength).copy(out, at);
    at += d.byteLength;
  }
  return out;
}

/** Decodes safetensors bytes holding 1-D tensors of the dtypes above (e.g. compute_logprobs' output). */
export function decodeSafetensors(bytes: Buffer): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const fail = (why: string) => new BatchFileError(`not a readable safetensors file: ${why}`, 'the file was truncated or written by something else');
  if (bytes.length < 8) throw fail('shorter than its 8-byte header length');
  const n = Number(bytes.readBigUInt64LE(0));
  if (8 + n > bytes.length) throw fail(`header length ${n} runs past the end`);
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const base = 8 + n;
  // A private copy, aligned: the typed-array views below need offsets that are multiples of 8.
  const body = new ArrayBuffer(bytes.length - base);
  new Uint8Array(body).set(bytes.subarray(base));
  const tensors: Record<string, Tensor> = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets } = info as { dtype: SafetensorsDtype; shape: number[]; data_offsets: [number, number] };
    const kind = ARRAY_OF[dtype];
    if (!kind) throw fail(`tensor ${name} has dtype ${dtype}, which this reader does not handle`);
    const count = shape.reduce((a, b) => a * b, 1);
    if (data_offsets[1] - data_offsets[0] !== count * kind.bytes || data_offsets[1] > body.byteLength) {
      throw fail(`tensor ${name}'s byte range does not match its shape`);
    }
    tensors[name] = { dtype, data: kind.make(body, data_offsets[0], count) };
  }
  return { tensors, metadata: (header.__metadata__ as Record<string, string> | undefined) ?? {} };
}

/** Writes bytes to `path` through a temporary file and a rename: a reader never sees half a file. */
async function writeAtomically(path: string, bytes: Buffer): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

// ---------------------------------------------------------------------------------- batches

/** A batch as flat arrays: sequence i is tokens cuSeqlens[i] .. cuSeqlens[i+1]. */
export interface Batch {
  /** The exact token ids the inference server saw and sampled, [T]. */
  inputIds: Int32Array;
  /** [N+1], starting at 0 and ending at T, strictly increasing. */
  cuSeqlens: Int32Array;
  /** 1 = train on this token (a sampled completion token); 0 on every sequence's first token. [T] */
  lossMask: Uint8Array;
  /** Per token [T], or per sequence [N] (broadcast over its tokens). */
  advantages: Float32Array;
  /** Logprob of each token under the policy that sampled it, [T] (<= 0 where lossMask = 1). */
  behaviorLogprobs: Float32Array;
  /** Policy version that sampled each token, [T]; needed for staleness metrics and loss.max_staleness. */
  behaviorVersions?: Int32Array;
  /** Per sequence [N]: SHA-256 hex of each prompt image, in prompt order ([] for text). Metadata `images`. */
  images?: readonly (readonly string[])[];
  /** Per sequence [N]: the image settings, null where the sequence has no images. Metadata `image_processing`. */
  imageProcessing?: readonly (BatchImageProcessing | null)[];
}

/** The image settings of a vision sequence, as the Turn events record them (snake_case, the engine's names). */
export interface BatchImageProcessing {
  processor: string;
  processor_version: string;
  min_pixels: number;
  max_pixels: number;
  patch_size: number;
  merge_size: number;
  temporal_patch_size: number;
}

/** One trajectory (or one agent turn chain) as the trainer assembles it. */
export interface SequenceInput {
  /** Prompt and completion tokens, in order. */
  tokens: ArrayLike<number>;
  /** Per token: train on it (1/true) or not. The first token must be 0. */
  lossMask: ArrayLike<number | boolean>;
  /** Per token; 0 (or anything) where lossMask is 0. */
  behaviorLogprobs: ArrayLike<number>;
  /** Per token, or one number for the whole sequence. */
  behaviorVersions?: ArrayLike<number> | number;
  /** One number for the whole sequence (GRPO), or one per token. */
  advantage: number | ArrayLike<number>;
  /** Vision sequences: the prompt's images (SHA-256 hex, prompt order) and their settings. */
  images?: readonly string[];
  imageProcessing?: BatchImageProcessing | null;
}

/** Concatenates sequences into a Batch (per-token advantages throughout, so sequences may mix both forms). */
export function packBatch(sequences: readonly SequenceInput[]): Batch {
  if (sequences.length === 0) throw new BatchFileError('a batch needs at least one sequence');
  const total = sequences.reduce((n, s) => n + s.tokens.length, 0);
  const withVersions = sequences.some((s) => s.behaviorVersions !== undefined);
  const batch: Batch = {
    inputIds: new Int32Array(total),
    cuSeqlens: new Int32Array(sequences.length + 1),
    lossMask: new Uint8Array(total),
    advantages: new Float32Array(total),
    behaviorLogprobs: new Float32Array(total),
    ...(withVersions ? { behaviorVersions: new Int32Array(total) } : {}),
  };
  if (sequences.some((s) => (s.images?.length ?? 0) > 0)) {
    batch.images = sequences.map((s) => [...(s.images ?? [])]);
    batch.imageProcessing = sequences.map((s) => ((s.images?.length ?? 0) > 0 ? s.imageProcessing ?? null : null));
  }
  let at = 0;
  sequences.forEach((s, i) => {
    const n = s.tokens.length;
    for (const [field, len] of [['lossMask', s.lossMask.length], ['behaviorLogprobs', s.behaviorLogprobs.length]] as const) {
      if (len !== n) throw new BatchFileError(`sequence ${i}: ${field} has ${len} entries, tokens has ${n}`);
    }
    if (withVersions && s.behaviorVersions === undefined) {
      throw new BatchFileError(`sequence ${i} has no behaviorVersions while others have them`);
    }
    batch.inputIds.set(Array.from(s.tokens), at);
    batch.lossMask.set(Array.from(s.lossMask, (m) => (m ? 1 : 0)), at);
    batch.behaviorLogprobs.set(Array.from(s.behaviorLogprobs), at);
    fillPerToken(batch.advantages, at, n, s.advantage, `sequence ${i}: advantage`);
    if (batch.behaviorVersions) fillPerToken(batch.behaviorVersions, at, n, s.behaviorVersions!, `sequence ${i}: behaviorVersions`);
    at += n;
    batch.cuSeqlens[i + 1] = at;
  });
  return batch;
}

function fillPerToken(out: Float32Array | Int32Array, at: number, n: number, value: number | ArrayLike<number>, what: string): void {
  if (typeof value === 'number') {
    out.fill(value, at, at + n);
    return;
  }
  if (value.length !== n) throw new BatchFileError(`${what} has ${value.length} entries, the sequence has ${n} tokens`);
  out.set(Array.from(value), at);
}

/**
 * Checks what the engine would refuse (TRAJ_E_ENGINE_BATCH_INVALID), so a bad batch fails where it
 * is made. The engine checks again, plus what only it knows (vocabulary size, max_seq_length).
 */
export function validateBatch(batch: Batch): void {
  const T = batch.inputIds.length;
  const cu = batch.cuSeqlens;
  const N = cu.length - 1;
  if (N < 1 || cu[0] !== 0 || cu[N] !== T) {
    throw new BatchFileError(`cuSeqlens must start at 0 and end at inputIds.length = ${T}`);
  }
  for (let i = 0; i < N; i++) {
    if (cu[i + 1]! <= cu[i]!) throw new BatchFileError(`cuSeqlens must be strictly increasing (sequence ${i} is empty)`);
    if (batch.lossMask[cu[i]!]) {
      throw new BatchFileError(`sequence ${i} has lossMask = 1 on its first token, which no earlier token predicts`,
        'set lossMask = 0 on the first token of every sequence');
    }
  }
  const perToken: Array<[string, { length: number } | undefined]> = [
    ['lossMask', batch.lossMask], ['behaviorLogprobs', batch.behaviorLogprobs], ['behaviorVersions', batch.behaviorVersions],
  ];
  for (const [name, arr] of perToken) {
    if (arr && arr.length !== T) throw new BatchFileError(`${name} has ${arr.length} entries, inputIds has ${T}`);
  }
  if (batch.advantages.length !== T && batch.advantages.length !== N) {
    throw new BatchFileError(`advantages has ${batch.advantages.length} entries: one per token (${T}) or per sequence (${N})`);
  }
  validateImages(batch, N);
  const perSeqAdv = batch.advantages.length === N && N !== T;
  for (let i = 0, s = 0; i < T; i++) {
    if (batch.inputIds[i]! < 0) throw new BatchFileError(`token ${i} has a negative id`);
    if (!batch.lossMask[i]) continue;
    while (cu[s + 1]! <= i) s++;
    const adv = batch.advantages[perSeqAdv ? s : i]!;
    const lp = batch.behaviorLogprobs[i]!;
    if (!Number.isFinite(adv)) throw new BatchFileError(`token ${i}: advantage is ${adv}`);
    if (!Number.isFinite(lp) || lp > 1e-3) throw new BatchFileError(`token ${i}: behavior logprob is ${lp}; it must be finite and <= 0`);
  }
}

const SHA256_HEX = /^[0-9a-f]{64}$/;
const IMAGE_SETTINGS = ['min_pixels', 'max_pixels', 'patch_size', 'merge_size', 'temporal_patch_size'] as const;

function validateImages(batch: Batch, N: number): void {
  const { images, imageProcessing } = batch;
  if (images === undefined && imageProcessing === undefined) return;
  if (!images || !imageProcessing) throw new BatchFileError('images and imageProcessing go together (both or neither)');
  if (images.length !== N) throw new BatchFileError(`images has ${images.length} entries, one per sequence (${N}) expected`);
  if (imageProcessing.length !== N) throw new BatchFileError(`imageProcessing has ${imageProcessing.length} entries, one per sequence (${N}) expected`);
  for (let i = 0; i < N; i++) {
    const list = images[i]!;
    const ip = imageProcessing[i] ?? null;
    for (const h of list) if (!SHA256_HEX.test(h)) throw new BatchFileError(`sequence ${i}: image ${JSON.stringify(h)} is not a lower-case SHA-256 hex digest`);
    if ((list.length > 0) !== (ip !== null)) {
      throw new BatchFileError(`sequence ${i}: image_processing must be set exactly when the sequence has images (${list.length} images)`);
    }
    if (ip) {
      if (!ip.processor || !ip.processor_version) throw new BatchFileError(`sequence ${i}: image_processing needs processor and processor_version`);
      for (const k of IMAGE_SETTINGS) {
        if (!Number.isInteger(ip[k]) || ip[k] <= 0) throw new BatchFileError(`sequence ${i}: image_processing.${k} is ${ip[k]}; a positive integer expected`);
      }
    }
  }
}

/**
 * The batch's vision metadata (see the top of this file): `images` and `image_processing`, or
 * nothing when no sequence has images.
 */
export function imageMetadata(batch: Pick<Batch, 'images' | 'imageProcessing'>): Record<string, string> {
  const { images, imageProcessing } = batch;
  if (!images || !imageProcessing || images.every((l) => l.length === 0)) return {};
  return {
    images: JSON.stringify(images),
    // Keys in a fixed order, whatever order the caller's objects have.
    image_processing: JSON.stringify(imageProcessing.map((p) => (p === null ? null : {
      processor: p.processor,
      processor_version: p.processor_version,
      min_pixels: p.min_pixels,
      max_pixels: p.max_pixels,
      patch_size: p.patch_size,
      merge_size: p.merge_size,
      temporal_patch_size: p.temporal_patch_size,
    }))),
  };
}

/** The safetensors tensors of a batch, under the names the engine reads. */
export function batchTensors(batch: Batch): Record<string, Tensor> {
  const tensors: Record<string, Tensor> = {
    input_ids: { dtype: 'I32', data: batch.inputIds },
    cu_seqlens: { dtype: 'I32', data: batch.cuSeqlens },
    loss_mask: { dtype: 'U8', data: batch.lossMask },
    advantages: { dtype: 'F32', data: batch.advantages },
    behavior_logprobs: { dtype: 'F32', data: batch.behaviorLogprobs },
  };
  if (batch.behaviorVersions) tensors.behavior_versions = { dtype: 'I32', data: batch.behaviorVersions };
  return tensors;
}

/**
 * Validates `batch` and writes it to `path` (atomically). `metadata` strings travel in the file's
 * header (e.g. run id, Kafka offsets) and are kept for debugging; the engine does not interpret
 * them. The vision keys `images` and `image_processing` are written from the batch itself.
 */
export async function writeBatchFile(path: string, batch: Batch, metadata: Record<string, string> = {}): Promise<void> {
  validateBatch(batch);
  const bytes = encodeSafetensors(batchTensors(batch), { ...metadata, format: BATCH_FORMAT, version: BATCH_FORMAT_VERSION, ...imageMetadata(batch) });
  await writeAtomically(path, bytes);
}

/** Reads compute_logprobs' output: `logprobs` and `entropy`, [T] each (0 on every sequence's first token). */
export async function readLogprobsFile(path: string): Promise<{ logprobs: Float32Array; entropy: Float32Array }> {
  const { tensors } = decodeSafetensors(await readFile(path));
  const lp = tensors.logprobs;
  const ent = tensors.entropy;
  if (!(lp?.data instanceof Float32Array) || !(ent?.data instanceof Float32Array)) {
    throw new BatchFileError(`${path} is not a logprobs file (float32 'logprobs' and 'entropy' expected)`);
  }
  return { logprobs: lp.data, entropy: ent.data };
}
