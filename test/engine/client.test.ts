/**
 * The engine client against the real engine on the CPU with the tiny model: init, steps that
 * move the adapter, checkpoints that restore it exactly, typed errors, crashes reported with the
 * engine's stderr.
 */
import assert from 'node:assert/strict';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { encodeSafetensors, readLogprobsFile, writeBatchFile } from '../../src/engine/batch-file.js';
import { EngineClient } from '../../src/engine/client.js';
import { EngineBatchError, EngineCheckpointError, EngineError, EngineProcessError } from '../../src/engine/errors.js';
import type { EngineConfig } from '../../src/engine/protocol.js';
import { randomBatch, setUpEngineScratch } from './support.js';

let scratch: string;
let modelDir: string;
before(async () => {
  ({ scratch, modelDir } = await setUpEngineScratch('engine-client'));
}, { timeout: 900_000 });
after(() => rmSync(scratch, { recursive: true, force: true }));

const config = (): EngineConfig => ({
  model: { path: modelDir, device: 'cpu' },
  lora: { r: 8, alpha: 16 },
  optim: { lr: 1e-2, max_grad_norm: null },
  seed: 0,
});

async function rejection<E extends Error>(promise: Promise<unknown>, kind: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof kind, `expected ${kind.name}, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected ${kind.name}`);
}

/** Mean of `values` at the positions where `mask` is 1. */
function maskedMean(values: Float32Array, mask: Uint8Array): number {
  let sum = 0;
  let n = 0;
  mask.forEach((m, i) => {
    if (m) {
      sum += values[i]!;
      n++;
    }
  });
  return sum / n;
}

describe('one engine, in order', () => {
  let engine: EngineClient;
  const batch = randomBatch({ seed: 1, count: 6, minLen: 12, maxLen: 40, advantage: () => 1 });
  let batchPath: string;

  before(async () => {
    engine = await EngineClient.start();
    batchPath = join(scratch, 'positive.safetensors');
    await writeBatchFile(batchPath, batch, { run: 'client-test' });
  });
  after(() => engine?.shutdown());

  test('the engine announces protocol 1 and refuses commands before init', async () => {
    assert.equal(engine.ready.protocol, 1);
    assert.equal(engine.ready.pid, engine.pid);
    const status = await engine.status();
    assert.equal(status.result.initialized, false);
    const err = await rejection(engine.trainStep(batchPath), EngineError);
    assert.equal(err.code, 'TRAJ_E_ENGINE_NOT_INITIALIZED');
    assert.match(err.hint ?? '', /init/);
  });

  test('a misspelt config field is TRAJ_E_ENGINE_BAD_REQUEST naming it, and init can be sent again', async () => {
    const bad = { ...config(), training: { micro_batch_token: 100 } } as unknown as EngineConfig;
    const err = await rejection(engine.init(bad), EngineError);
    assert.equal(err.code, 'TRAJ_E_ENGINE_BAD_REQUEST');
    assert.match(err.message, /training\.micro_batch_token/);
    assert.equal(err.retriable, false);
  });

  test('init loads the tiny model with a LoRA adapter', async () => {
    const { result, metrics } = await engine.init(config());
    assert.equal(result.model_type, 'qwen3');
    assert.equal(result.device, 'cpu');
    assert.ok(result.trainable_parameters > 0 && result.trainable_parameters < result.parameters);
    assert.ok((metrics.load_time_s ?? 0) > 0);
    assert.ok((metrics.elapsed_s ?? 0) > 0);
  });

  test('train_step with positive advantages raises the logprobs of the trained tokens and reports metrics', async () => {
    const beforePath = join(scratch, 'lp-before.safetensors');
    await engine.computeLogprobs(batchPath, beforePath);
    const step = await engine.trainStep(batchPath, { policyVersion: 1 });
    assert.equal(step.result.step, 1);
    assert.equal(step.result.policy_version, 1);
    const m = step.metrics;
    const trained = batch.lossMask.reduce((n, x) => n + x, 0);
    assert.equal(m.trained_tokens, trained);
    assert.equal(m.tokens, batch.inputIds.length);
    assert.equal(m.sequences, 6);
    for (const key of ['loss', 'clip_fraction', 'importance_weight_mean', 'importance_weight_max', 'mismatch_abs_mean', 'mismatch_kl', 'grad_norm', 'tokens_per_s', 'peak_memory_gib', 'step_time_s'] as const) {
      assert.ok(Number.isFinite(m[key]), `${key} = ${m[key]}`);
    }
    assert.ok(m.grad_norm > 0);
    assert.ok(m.mismatch_abs_mean > 0, 'behavior logprobs are not the engine\'s own: the mismatch shows it');

    const afterPath = join(scratch, 'lp-after.safetensors');
    const scored = await engine.computeLogprobs(batchPath, afterPath);
    assert.equal(scored.result.out, afterPath);
    const lpBefore = (await readLogprobsFile(beforePath)).logprobs;
    const lpAfter = (await readLogprobsFile(afterPath)).logprobs;
    assert.equal(lpAfter.length, batch.inputIds.length);
    assert.ok(maskedMean(lpAfter, batch.lossMask) > maskedMean(lpBefore, batch.lossMask) + 1e-3,
      `mean logprob ${maskedMean(lpBefore, batch.lossMask)} -> ${maskedMean(lpAfter, batch.lossMask)}`);
  });

  test('save then load restores the adapter exactly: identical logprobs after a further step is undone', async () => {
    const ckpt = join(scratch, 'ckpt-1');
    const saved = await engine.save(ckpt, { metadata: { offsets: { '0': 42 } }, policyVersion: 1 });
    assert.equal(saved.result.step, 1);
    assert.ok(existsSync(join(ckpt, 'adapter', 'adapter_config.json')));
    assert.ok(existsSync(join(ckpt, 'adapter', 'adapter_model.safetensors')));
    assert.ok(existsSync(join(ckpt, 'MANIFEST.json')));
    const atSave = join(scratch, 'lp-at-save.safetensors');
    await engine.computeLogprobs(batchPath, atSave);

    await engine.trainStep(batchPath, { policyVersion: 2 });
    const moved = join(scratch, 'lp-moved.safetensors');
    await engine.computeLogprobs(batchPath, moved);
    assert.notDeepEqual((await readLogprobsFile(moved)).logprobs, (await readLogprobsFile(atSave)).logprobs);

    const loaded = await engine.load(ckpt);
    assert.equal(loaded.result.step, 1);
    assert.equal(loaded.result.policy_version, 1);
    assert.deepEqual(loaded.result.metadata, { offsets: { '0': 42 } });
    const restored = join(scratch, 'lp-restored.safetensors');
    await engine.computeLogprobs(batchPath, restored);
    assert.deepEqual((await readLogprobsFile(restored)).logprobs, (await readLogprobsFile(atSave)).logprobs);
  });

  test('saving over an existing checkpoint is refused unless overwrite is set', async () => {
    const ckpt = join(scratch, 'ckpt-1');
    const err = await rejection(engine.save(ckpt), EngineCheckpointError);
    assert.equal(err.code, 'TRAJ_E_ENGINE_CHECKPOINT');
    assert.match(err.hint ?? '', /overwrite/);
    const again = await engine.save(ckpt, { overwrite: true });
    assert.equal(again.result.path, ckpt);
  });

  test('a checkpoint whose save did not finish (no MANIFEST.json) is refused by load', async () => {
    const ckpt = join(scratch, 'ckpt-1');
    rmSync(join(ckpt, 'MANIFEST.json'));
    const err = await rejection(engine.load(ckpt), EngineCheckpointError);
    assert.match(err.message, /did not finish/);
  });

  test('bad batches are TRAJ_E_ENGINE_BATCH_INVALID with the reason, and the engine goes on', async () => {
    const outOfVocab = randomBatch({ seed: 2, count: 2, minLen: 8, maxLen: 8, vocab: 5000 });
    outOfVocab.inputIds[3] = 4999;
    const oov = join(scratch, 'oov.safetensors');
    await writeBatchFile(oov, outOfVocab);
    const err = await rejection(engine.trainStep(oov), EngineBatchError);
    assert.equal(err.code, 'TRAJ_E_ENGINE_BATCH_INVALID');
    assert.match(err.message, /outside the model's vocabulary/);
    assert.match(err.hint ?? '', /another model/);

    const missing = await rejection(engine.trainStep(join(scratch, 'nope.safetensors')), EngineBatchError);
    assert.match(missing.message, /does not exist/);

    // A file made by hand, without the behavior logprobs.
    const partial = join(scratch, 'partial.safetensors');
    writeFileSync(partial, encodeSafetensors({
      input_ids: { dtype: 'I32', data: new Int32Array([1, 2, 3]) },
      cu_seqlens: { dtype: 'I32', data: new Int32Array([0, 3]) },
      loss_mask: { dtype: 'U8', data: new Uint8Array([0, 1, 1]) },
      advantages: { dtype: 'F32', data: new Float32Array([1]) },
    }));
    const lacks = await rejection(engine.trainStep(partial), EngineBatchError);
    assert.match(lacks.message, /lacks tensor\(s\) behavior_logprobs/);

    const status = await engine.status();
    assert.equal(status.result.initialized, true);
    assert.equal(status.result.step, 1, 'no refused batch took a step');
  });
});

test('shutdown ends the engine with exit code 0, and later commands are refused', async () => {
  const engine = await EngineClient.start();
  const exit = await engine.shutdown();
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.equal(engine.alive, false);
  const err = await rejection(engine.status(), EngineProcessError);
  assert.equal(err.code, 'TRAJ_E_ENGINE_EXITED');
  assert.deepEqual(await engine.shutdown(), exit, 'shutdown is idempotent');
});

test('an engine killed mid-step is reported to the pending command and every later one, with its stderr', async () => {
  const engine = await EngineClient.start();
  await engine.init(config());
  // ~100k tokens: seconds of work on a CPU, so the kill lands while the step runs.
  const big = join(scratch, 'big.safetensors');
  await writeBatchFile(big, randomBatch({ seed: 3, count: 50, minLen: 2000, maxLen: 2000 }));
  const step = engine.trainStep(big);
  setTimeout(() => process.kill(engine.pid, 'SIGKILL'), 500);
  const err = await rejection(step, EngineProcessError);
  assert.equal(err.code, 'TRAJ_E_ENGINE_EXITED');
  assert.equal(err.signal, 'SIGKILL');
  assert.match(err.message, /killed by SIGKILL/);
  assert.match(err.hint ?? '', /load the last checkpoint/);
  assert.match(err.stderr, /train_step \(id \d+\) started/, 'the stderr tail says what the engine was doing');
  const later = await rejection(engine.status(), EngineProcessError);
  assert.equal(later, err);
});

test('an engine that fails while starting is TRAJ_E_ENGINE_START with its traceback', async () => {
  const err = await rejection(EngineClient.start({ env: { ...process.env, TRAJSTORE_ENGINE_LOG: 'NO-SUCH-LEVEL' } }), EngineProcessError);
  assert.equal(err.code, 'TRAJ_E_ENGINE_START');
  assert.equal(err.exitCode, 1);
  assert.match(err.stderr, /Unknown level: 'NO-SUCH-LEVEL'/);
  assert.match(err.message, /engine stderr/);
});

test('a missing interpreter is TRAJ_E_ENGINE_START with the setup command as hint', async () => {
  const err = await rejection(EngineClient.start({ python: join(scratch, 'no-python') }), EngineProcessError);
  assert.equal(err.code, 'TRAJ_E_ENGINE_START');
  assert.match(err.hint ?? '', /engine\/setup\.sh/);
});

test('a command that outlives its timeout kills the engine and says so', async () => {
  const engine = await EngineClient.start();
  await engine.init(config());
  const big = join(scratch, 'big-timeout.safetensors');
  await writeBatchFile(big, randomBatch({ seed: 4, count: 50, minLen: 2000, maxLen: 2000 }));
  const err = await rejection(engine.trainStep(big, { timeoutMs: 300 }), EngineProcessError);
  assert.equal(err.code, 'TRAJ_E_ENGINE_TIMEOUT');
  assert.match(err.message, /'train_step' got no reply within 300 ms/);
  const exit = await engine.exited;
  assert.equal(exit.signal, 'SIGKILL');
});

test('under torchrun (2 CPU ranks, FSDP over gloo) rank 0 speaks the protocol: step, save, load, shutdown', async () => {
  const env = { ...process.env, OMP_NUM_THREADS: '1' };
  const single = await EngineClient.start({ env });
  const alone = await single.init(config());
  await single.shutdown();

  const engine = await EngineClient.start({ nprocPerNode: 2, env });
  assert.equal(engine.ready.world_size, 2);
  const init = await engine.init({ ...config(), training: { micro_batch_tokens: 64 } });
  assert.equal(init.result.world_size, 2);
  assert.equal(init.result.trainable_parameters, alone.result.trainable_parameters, 'counts are model-wide, not summed over ranks');
  const batchPath = join(scratch, 'fsdp.safetensors');
  await writeBatchFile(batchPath, randomBatch({ seed: 5, count: 6, minLen: 10, maxLen: 40 }));
  const step = await engine.trainStep(batchPath, { policyVersion: 1 });
  assert.equal(step.result.step, 1);
  assert.ok(step.metrics.micro_batches >= 2 && step.metrics.micro_batches % 2 === 0, 'every rank ran its share');
  const ckpt = join(scratch, 'fsdp-ckpt');
  await engine.save(ckpt);
  const atSave = join(scratch, 'fsdp-lp-at-save.safetensors');
  await engine.computeLogprobs(batchPath, atSave);
  await engine.trainStep(batchPath, { policyVersion: 2 });
  assert.equal((await engine.load(ckpt)).result.step, 1);
  const restored = join(scratch, 'fsdp-lp-restored.safetensors');
  await engine.computeLogprobs(batchPath, restored);
  assert.deepEqual((await readLogprobsFile(restored)).logprobs, (await readLogprobsFile(atSave)).logprobs);
  assert.deepEqual(await engine.shutdown(), { code: 0, signal: null });
});
