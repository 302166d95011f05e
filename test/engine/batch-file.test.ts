/**
 * Batch files written from TypeScript: the bytes are safetensors that Python's own library and
 * the engine's reader accept with the same values, and a batch that breaks the format's rules is
 * refused before it is written.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  decodeSafetensors,
  encodeSafetensors,
  packBatch,
  validateBatch,
  writeBatchFile,
  type Batch,
  type SequenceInput,
} from '../../src/engine/batch-file.js';
import { defaultEnginePython } from '../../src/engine/client.js';
import { BatchFileError } from '../../src/engine/errors.js';
import { randomBatch, setUpEngineScratch } from './support.js';

let scratch: string;
before(async () => {
  ({ scratch } = await setUpEngineScratch('batch-file'));
}, { timeout: 900_000 });
after(() => rmSync(scratch, { recursive: true, force: true }));

function python(code: string, ...args: string[]): string {
  const run = spawnSync(defaultEnginePython(), ['-c', code, ...args], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  return run.stdout;
}

const seq = (over: Partial<SequenceInput> = {}): SequenceInput => ({
  tokens: [5, 6, 7, 8],
  lossMask: [0, 0, 1, 1],
  behaviorLogprobs: [0, 0, -1.5, -0.25],
  advantage: 0.5,
  ...over,
});

test('packBatch concatenates sequences, broadcasting a per-sequence advantage and version', () => {
  const batch = packBatch([
    seq({ behaviorVersions: 3 }),
    seq({ tokens: [1, 2, 3], lossMask: [false, true, true], behaviorLogprobs: [0, -2, -3], advantage: [0, 1, 2], behaviorVersions: [4, 4, 5] }),
  ]);
  assert.deepEqual([...batch.inputIds], [5, 6, 7, 8, 1, 2, 3]);
  assert.deepEqual([...batch.cuSeqlens], [0, 4, 7]);
  assert.deepEqual([...batch.lossMask], [0, 0, 1, 1, 0, 1, 1]);
  assert.deepEqual([...batch.advantages], [0.5, 0.5, 0.5, 0.5, 0, 1, 2]);
  assert.deepEqual([...batch.behaviorVersions!], [3, 3, 3, 3, 4, 4, 5]);
  assert.deepEqual([...batch.behaviorLogprobs], [0, 0, -1.5, -0.25, 0, -2, -3]);
});

test('a TypeScript batch file reads back identically in Python (safetensors) and passes the engine reader', async () => {
  const batch = randomBatch({ seed: 7, count: 5, minLen: 3, maxLen: 30 });
  const path = join(scratch, 'batch.safetensors');
  await writeBatchFile(path, batch, { run_id: 'r1' });
  const out = python(`
import json, sys
from safetensors import safe_open
from trajstore_engine.batch import read_batch
with safe_open(sys.argv[1], framework="pt") as f:
    meta = f.metadata()
    t = {k: {"dtype": str(f.get_tensor(k).dtype), "values": f.get_tensor(k).tolist()} for k in f.keys()}
b = read_batch(sys.argv[1], vocab_size=512)
print(json.dumps({"meta": meta, "tensors": t, "seq_lens": b.seq_lens}))
`, path);
  const got = JSON.parse(out) as { meta: Record<string, string>; tensors: Record<string, { dtype: string; values: number[] }>; seq_lens: number[] };
  assert.deepEqual(got.meta, { run_id: 'r1', format: 'trajstore-batch', version: '1' });
  const expect: Record<string, [string, ArrayLike<number>]> = {
    input_ids: ['torch.int32', batch.inputIds],
    cu_seqlens: ['torch.int32', batch.cuSeqlens],
    loss_mask: ['torch.uint8', batch.lossMask],
    advantages: ['torch.float32', batch.advantages],
    behavior_logprobs: ['torch.float32', batch.behaviorLogprobs],
    behavior_versions: ['torch.int32', batch.behaviorVersions!],
  };
  assert.deepEqual(Object.keys(got.tensors).sort(), Object.keys(expect).sort());
  for (const [name, [dtype, values]] of Object.entries(expect)) {
    assert.equal(got.tensors[name]!.dtype, dtype, name);
    assert.deepEqual(got.tensors[name]!.values, [...Array.from(values)], name); // float32 -> double is exact
  }
  const lens = [...batch.cuSeqlens].slice(1).map((end, i) => end - batch.cuSeqlens[i]!);
  assert.deepEqual(got.seq_lens, lens);
});

test('decodeSafetensors reads what Python writes, every dtype the engine uses', () => {
  const path = join(scratch, 'from-python.safetensors');
  python(`
import sys, torch
from safetensors.torch import save_file
save_file({"f32": torch.tensor([1.5, -2.25]), "f64": torch.tensor([3.0], dtype=torch.float64),
           "i64": torch.tensor([-(2**40), 7]), "i32": torch.tensor([1, 2, 3], dtype=torch.int32),
           "u8": torch.tensor([0, 255], dtype=torch.uint8)}, sys.argv[1], metadata={"k": "v"})
`, path);
  const { tensors, metadata } = decodeSafetensors(readFileSync(path));
  assert.deepEqual(metadata, { k: 'v' });
  assert.deepEqual([...tensors.f32!.data as Float32Array], [1.5, -2.25]);
  assert.deepEqual([...tensors.f64!.data as Float64Array], [3]);
  assert.deepEqual([...tensors.i64!.data as BigInt64Array], [-(2n ** 40n), 7n]);
  assert.deepEqual([...tensors.i32!.data as Int32Array], [1, 2, 3]);
  assert.deepEqual([...tensors.u8!.data as Uint8Array], [0, 255]);
  // and back: TypeScript's encoding of the same tensors decodes to the same values
  const again = decodeSafetensors(encodeSafetensors(tensors, metadata));
  assert.deepEqual(again, { tensors, metadata });
});

test('batches that break the format rules are refused with TRAJ_E_BATCH_FILE before anything is written', () => {
  const good = (): Batch => packBatch([seq(), seq()]);
  const cases: Array<[string, (b: Batch) => void, RegExp]> = [
    ['a trained first token', (b) => { b.lossMask[4] = 1; }, /sequence 1 has lossMask = 1 on its first token/],
    ['a positive behavior logprob', (b) => { b.behaviorLogprobs[2] = 0.5; }, /behavior logprob is 0\.5/],
    ['a NaN advantage', (b) => { b.advantages[3] = Number.NaN; }, /advantage is NaN/],
    ['cu_seqlens not ending at T', (b) => { b.cuSeqlens[2] = 7; }, /end at inputIds\.length = 8/],
    ['an empty sequence', (b) => { b.cuSeqlens = new Int32Array([0, 0, 8]); }, /sequence 0 is empty/],
    ['a short loss mask', (b) => { b.lossMask = b.lossMask.subarray(0, 7); }, /lossMask has 7 entries, inputIds has 8/],
    ['a negative token id', (b) => { b.inputIds[1] = -1; }, /token 1 has a negative id/],
  ];
  for (const [what, breakIt, message] of cases) {
    const batch = good();
    validateBatch(batch);
    breakIt(batch);
    assert.throws(() => validateBatch(batch), (err: unknown) => {
      assert.ok(err instanceof BatchFileError, what);
      assert.equal(err.code, 'TRAJ_E_BATCH_FILE');
      assert.match(err.message, message, what);
      return true;
    });
  }
  assert.throws(() => packBatch([seq(), seq({ behaviorVersions: 1 })]), /sequence 0 has no behaviorVersions/);
  assert.throws(() => packBatch([seq({ lossMask: [0, 1] })]), /lossMask has 2 entries, tokens has 4/);
  assert.throws(() => packBatch([]), /at least one sequence/);
});
