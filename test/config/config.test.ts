import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig, parseConfig } from '../../src/config/index.js';
import { ConfigError } from '../../src/util/errors.js';

function configError(text: string, env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    parseConfig(text, 'inline.yaml', env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail('the config was accepted');
}

test('the shipped configs validate, and cua_grpo reproduces the seeds setup', () => {
  const cua = loadConfig('configs/cua_grpo.yaml', {});
  assert.equal(cua.model.name, 'Qwen/Qwen3-VL-32B-Instruct');
  assert.deepEqual([cua.lora.r, cua.lora.alpha, cua.training.learning_rate], [16, 32, 1e-5]);
  assert.deepEqual([cua.rollout.num_rollouts, cua.rollout.max_turns], [4, 15]);
  assert.deepEqual(cua.inference.api_bases, ['http://localhost:8000/v1']);
  // Qwen3-VL's image geometry (its preprocessor_config.json), explicit for the vision policy.
  assert.deepEqual(cua.inference.image_processing, {
    processor: 'Qwen2VLImageProcessorFast', processor_version: 'vLLM 0.11.0',
    min_pixels: 65536, max_pixels: 16777216, patch_size: 16, merge_size: 2, temporal_patch_size: 2,
  });
  assert.equal(cua.model.image_token_id, 151655);
  const demo = loadConfig('configs/demo.yaml', {});
  assert.equal(demo.inference.backend, 'cpu');
  assert.equal(demo.training.clip_high, 0.28, 'unlisted fields take their defaults');
});

test('a misspelt field is refused with its full path', () => {
  const err = configError('model: {name: m}\ntraining:\n  learning_rte: 0.1\n');
  assert.equal(err.code, 'TRAJ_E_CONFIG');
  assert.deepEqual(err.issues.map((i) => i.path), ['training.learning_rte']);
  assert.match(err.message, /training\.learning_rte: unknown field/);
});

test('a value of the wrong type or range names the field and the reason', () => {
  const err = configError('model: {name: m}\nlora: {r: 0}\nkafka: {brokers: [localhost]}\n');
  const byPath = new Map(err.issues.map((i) => [i.path, i.message]));
  assert.match(byPath.get('lora.r') ?? '', /too small|>0/i);
  assert.match(byPath.get('kafka.brokers.0') ?? '', /host:port/);
});

test('a vision policy’s image settings are all required, and errors name each field', () => {
  const err = configError('model: {name: m}\ninference:\n  image_processing: {processor: P, processor_version: v1, min_pixels: 70000, max_pixels: 65536, patch_size: 16}\n');
  const paths = err.issues.map((i) => i.path).sort();
  assert.deepEqual(paths, ['inference.image_processing.merge_size', 'inference.image_processing.temporal_patch_size']);
  const order = configError('model: {name: m}\ninference:\n  image_processing: {processor: P, processor_version: v1, min_pixels: 70000, max_pixels: 65536, patch_size: 16, merge_size: 2, temporal_patch_size: 2}\n');
  assert.deepEqual(order.issues.map((i) => i.path), ['inference.image_processing.min_pixels']);
  assert.match(order.message, /min_pixels must be <= max_pixels/);
});

test('a missing required field is named', () => {
  const err = configError('training: {max_steps: 3}\n');
  assert.deepEqual(err.issues.map((i) => i.path), ['model']);
});

test('invalid YAML is refused with the line', () => {
  const err = configError('model:\n  name: [unclosed\n');
  assert.match(err.issues[0]!.path, /^line \d+/);
});

test('environment variables override fields and their errors name the variable', () => {
  const config = parseConfig('model: {name: m}\n', 'inline.yaml', {
    TRAJSTORE__TRAINING__LEARNING_RATE: '2e-5',
    TRAJSTORE__KAFKA__BROKERS: '[a:1, b:2]',
    VLLM_API_BASE: 'http://gpu-host:8000/v1',
  });
  assert.equal(config.training.learning_rate, 2e-5);
  assert.deepEqual(config.kafka.brokers, ['a:1', 'b:2']);
  assert.deepEqual(config.inference.api_bases, ['http://gpu-host:8000/v1']);

  const err = configError('model: {name: m}\n', { TRAJSTORE__ROLLOUT__NUM_ROLLOUTS: '1' });
  assert.match(err.message, /rollout\.num_rollouts: .*at least 2.*TRAJSTORE__ROLLOUT__NUM_ROLLOUTS/);
});

test('`trajstore config check` exits non-zero and prints the bad field', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-config-'));
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'model: {name: m}\nrollout: {num_rollouts: 4, max_turn: 3}\n');
  const result = spawnSync(process.execPath, ['bin/trajstore.mjs', 'config', 'check', bad], { encoding: 'utf8' });
  assert.equal(result.status, 2);
  assert.match(result.stderr, /TRAJ_E_CONFIG/);
  assert.match(result.stderr, /rollout\.max_turn: unknown field/);

  const good = spawnSync(process.execPath, ['bin/trajstore.mjs', 'config', 'check', 'configs/cua_grpo.yaml'], { encoding: 'utf8' });
  assert.equal(good.status, 0, good.stderr);
});
