/**
 * The seeds' configuration trains: `configs/cua_grpo.yaml` as committed (Qwen3-VL-32B, LoRA r=16,
 * batch 4, publish every step, image settings of Qwen3-VL) passes `config check`, and the same file
 * drives the real `trajstore train` and `trajstore replay` commands on this machine with only what
 * a local run must change overridden from the environment (TRAJSTORE__SECTION__FIELD, the
 * config's own override mechanism): the model directory (the tiny Qwen3-VL-style model) and its
 * image token id, the tiny model's pixel budget, this test's topics, broker, ClickHouse, policy
 * server and directories. Vision groups cite real PNG screenshots in the blob store; the trainer
 * trains every one of them, publishes a version per step (loaded by the CPU policy server serving
 * the tiny VL model, which then answers an image prompt with the newest adapter), and two replays
 * of the run end with byte-identical adapters.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig, type TrajstoreConfig } from '../../src/config/index.js';
import { adapterChecksum, LocalAdapterStore } from '../../src/consumers/trainer/adapter-store.js';
import { imageTokenIdFor } from '../../src/consumers/trainer/engine-setup.js';
import { imageTokenCount } from '../../src/consumers/trainer/image-tokens.js';
import { readLedger } from '../../src/consumers/trainer/ledger.js';
import { adapterName } from '../../src/consumers/trainer/publisher.js';
import { replayConfig } from '../../src/consumers/trainer/replay.js';
import { decodeSafetensors } from '../../src/engine/batch-file.js';
import { ensureEngineVenv, ensureTinyVlModel, startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { policyApi } from '../../src/inference/vllm-api.js';
import { ensureTopics } from '../../src/kafka/client.js';
import { topicSpecs } from '../../src/kafka/topics.js';
import { decodePolicyVersion, type PromptImage } from '../../src/schemas/index.js';
import { projectRoot } from '../../src/services/paths.js';
import { openBlobStore } from '../../src/storage/blob-store.js';
import { createLogger } from '../../src/util/logger.js';
import { solidPng } from '../producers/fake-gbox-api.js';
import { CLICKHOUSE_URL, KAFKA_BROKERS, testKafka, uniqueName } from '../support/services.js';
import { deleteRunTopics, pngPromptImage, produceGroups, readMessages, visionGroupEvents, visionTokenIds } from './fixtures.js';

const logger = createLogger('test-cua', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });
const CUA = join(projectRoot(), 'configs', 'cua_grpo.yaml');
/** The tiny VL model's pixel budget (tiny_vl.py: 4..64 image tokens a screenshot). */
const TINY_PIXELS = { min_pixels: 4096, max_pixels: 65_536 };
/** Every config path a local run of cua_grpo.yaml may change; nothing else may differ from the file. */
const LOCAL_FIELDS = [
  'model.path', 'model.image_token_id',
  'inference.api_bases', 'inference.image_processing.min_pixels', 'inference.image_processing.max_pixels',
  'kafka.brokers', 'kafka.topics.trajectories', 'kafka.topics.policy_versions', 'kafka.topics.trainer_metrics', 'kafka.topics.dead_letter',
  'clickhouse.url', 'clickhouse.database',
  'training.output_dir', 'checkpoint.dir',
  'storage.blobs', 'storage.adapters', 'storage.adapter_cache', 'storage.blob_cache',
];

/** The environment without anything that would override a config field besides what a test sets. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TRAJSTORE__') && !['VLLM_API_BASE', 'MODEL_NAME', 'LEARNING_RATE'].includes(k)));
}

/** `trajstore ARGS` as a child process; resolves with its exit code and output. */
function trajstore(args: string[], env: Record<string, string>, timeoutMs = 300_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'trajstore.mjs'), ...args], {
    env: { ...cleanEnv(), ...env, TRAJSTORE_LOG_LEVEL: 'warn', KAFKAJS_NO_PARTITIONER_WARNING: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(timer);
    resolve({ code, stdout, stderr });
  }));
}

/** Dotted paths of the leaves where two configs differ. */
function changedPaths(a: unknown, b: unknown, at = ''): string[] {
  const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  if (isObject(a) && isObject(b)) {
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) => changedPaths(a[k], b[k], at ? `${at}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [at];
}

/** The groups' ids that a ledger lists as trained, and every drop it lists. */
function ledgerOutcome(path: string): { trained: string[]; dropped: Record<string, string> } {
  const lines = readLedger(path);
  return { trained: lines.flatMap((l) => l.trained).sort(), dropped: Object.assign({}, ...lines.map((l) => l.dropped)) as Record<string, string> };
}

function dropsOf(totals: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(totals).filter(([k, v]) => k.startsWith('groups_dropped') && v > 0));
}

describe('configs/cua_grpo.yaml on the tiny Qwen3-VL model', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-cua-'));
  const kafka = testKafka();
  const file = loadConfig(CUA, {});
  const runId = file.run.id;
  let server: CpuPolicyServer;
  let overrides: Record<string, string>;
  let config: TrajstoreConfig;
  let groupIds: string[];
  let screenshot: Buffer;

  before(async () => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyVlModel();
    // Served under the config's model name, as vLLM's --served-model-name would be.
    server = await startCpuPolicyServer({ modelDir, servedModelName: file.model.name, threads: 1, logger });
    const topic = uniqueName('trcua');
    overrides = {
      TRAJSTORE__MODEL__PATH: modelDir,
      // 151655 is Qwen3-VL's <|image_pad|>; the tiny model's vocabulary has its own id.
      TRAJSTORE__MODEL__IMAGE_TOKEN_ID: String(visionTokenIds(modelDir).image),
      TRAJSTORE__INFERENCE__API_BASES: JSON.stringify([`${server.baseUrl}/v1`]),
      TRAJSTORE__INFERENCE__IMAGE_PROCESSING__MIN_PIXELS: String(TINY_PIXELS.min_pixels),
      TRAJSTORE__INFERENCE__IMAGE_PROCESSING__MAX_PIXELS: String(TINY_PIXELS.max_pixels),
      TRAJSTORE__KAFKA__BROKERS: JSON.stringify(KAFKA_BROKERS),
      TRAJSTORE__KAFKA__TOPICS__TRAJECTORIES: topic,
      TRAJSTORE__KAFKA__TOPICS__POLICY_VERSIONS: `${topic}.versions`,
      TRAJSTORE__KAFKA__TOPICS__TRAINER_METRICS: `${topic}.metrics`,
      TRAJSTORE__KAFKA__TOPICS__DEAD_LETTER: `${topic}.dlq`,
      TRAJSTORE__CLICKHOUSE__URL: CLICKHOUSE_URL,
      TRAJSTORE__CLICKHOUSE__DATABASE: uniqueName('cua'),
      TRAJSTORE__TRAINING__OUTPUT_DIR: join(dir, 'out'),
      TRAJSTORE__CHECKPOINT__DIR: join(dir, 'checkpoints'),
      TRAJSTORE__STORAGE__BLOBS: join(dir, 'blobs'),
      TRAJSTORE__STORAGE__ADAPTERS: join(dir, 'adapters'),
      TRAJSTORE__STORAGE__ADAPTER_CACHE: join(dir, 'adapter-cache'),
      TRAJSTORE__STORAGE__BLOB_CACHE: join(dir, 'blob-cache'),
    };
    config = loadConfig(CUA, overrides);
    await ensureTopics(kafka, topicSpecs(config));

    // Screenshots at the sizes a browser (640x480) and a desktop box (1280x720) take, stored in
    // the run's blob store; 12 groups of 2 episodes x 2 turns: 3 steps of batch_size 4.
    const blobs = openBlobStore(config.storage.blobs);
    const pngs = [solidPng(640, 480, [240, 240, 240]), solidPng(1280, 720, [20, 60, 160]), solidPng(640, 480, [200, 40, 40]), solidPng(1280, 720, [30, 160, 60])];
    screenshot = pngs[0]!;
    const shots: PromptImage[] = [];
    for (const png of pngs) shots.push(pngPromptImage(png, (await blobs.put(png, 'image/png')).sha256));
    const ids = visionTokenIds(modelDir);
    // Recorded as a producer would: the config's own image settings.
    const settings = config.inference.image_processing!;
    const groups = Array.from({ length: 12 }, (_, k) => visionGroupEvents(runId, uniqueName(`g${k}`), [
      [shots[k % 4]!, shots[(k + 1) % 4]!],
      [shots[(k + 2) % 4]!, shots[(k + 3) % 4]!],
    ], ids, { settings, rewards: [k % 3, 3] }));
    groupIds = groups.map((g) => g[0]!.group_id).sort();
    await produceGroups(kafka, config.kafka.topics.trajectories, groups, true);
  });
  after(async () => {
    await server?.stop();
    if (config) await deleteRunTopics(kafka, config);
    rmSync(dir, { recursive: true, force: true });
  });

  it('passes `config check` as committed, and the local run changes only the model directory, pixel budget, services and directories', async () => {
    const committed = await trajstore(['config', 'check', CUA], {});
    assert.equal(committed.code, 0, committed.stderr);
    assert.match(committed.stderr, /configs\/cua_grpo\.yaml: ok \(run cua-grpo, model Qwen\/Qwen3-VL-32B-Instruct\)/);
    // The CLI resolves the overrides from its environment as this test does.
    const local = await trajstore(['config', 'check', CUA, '--print'], overrides);
    assert.equal(local.code, 0, local.stderr);
    assert.deepEqual(JSON.parse(local.stdout), JSON.parse(JSON.stringify(config)));

    const changed = changedPaths(file, config);
    assert.deepEqual(changed.filter((p) => !LOCAL_FIELDS.includes(p)), [], 'nothing but the local fields differs from the committed file');
    for (const p of ['model.path', 'model.image_token_id', 'inference.image_processing.min_pixels', 'inference.image_processing.max_pixels', 'kafka.topics.trajectories', 'training.output_dir']) {
      assert.ok(changed.includes(p), `${p} is overridden`);
    }
    // Left at Qwen3-VL's 151655, the image token id would be refused (the model directory says
    // otherwise) rather than every group dropped as image_placeholder_mismatch.
    const { TRAJSTORE__MODEL__IMAGE_TOKEN_ID: _id, ...withoutId } = overrides;
    assert.throws(() => imageTokenIdFor(loadConfig(CUA, withoutId)), /model\.image_token_id: is 151655, but .* has image_token_id \d+/);
    assert.equal(imageTokenIdFor(config), visionTokenIds(config.model.path!).image);
    // What the run keeps from the seeds' setup.
    assert.equal(config.model.name, 'Qwen/Qwen3-VL-32B-Instruct');
    assert.deepEqual([config.lora.r, config.lora.alpha, config.training.batch_size, config.training.publish_every_steps], [16, 32, 4, 1]);
    assert.deepEqual(config.inference.image_processing, { ...file.inference.image_processing, ...TINY_PIXELS });
  });

  it('`trajstore train` trains every screenshot group, publishes a version per step that the VL policy server loads and answers image prompts with', { timeout: 600_000 }, async () => {
    const run = await trajstore(['train', '-c', CUA, '--stop-when-idle', '5'], overrides);
    assert.equal(run.code, 0, run.stderr.slice(-4000));
    const result = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as { run: string; steps: number; policy_version: number; totals: Record<string, number> };
    assert.equal(result.run, runId);
    assert.equal(result.steps, 3, '12 groups, batch_size 4');
    assert.equal(result.policy_version, 3, 'publish_every_steps 1');
    assert.equal(result.totals.groups_trained, 12);
    assert.deepEqual(dropsOf(result.totals), {}, 'no group dropped (images found, placeholders right)');
    const ledger = ledgerOutcome(join(config.training.output_dir, 'ledger.jsonl'));
    assert.deepEqual(ledger.trained, groupIds);
    assert.deepEqual(ledger.dropped, {});

    // One policy.versions event per version, each naming an adapter in the store with its checksum.
    const store = new LocalAdapterStore(config.storage.adapters);
    const versions = (await readMessages(kafka, config.kafka.topics.policy_versions, decodePolicyVersion, (xs) => xs.length >= 3)).filter((v) => v.run_id === runId);
    assert.deepEqual(versions.map((v) => v.version), [1, 2, 3]);
    for (const v of versions) {
      const vdir = store.versionDir(runId, v.version);
      assert.ok(existsSync(join(vdir, 'adapter_model.safetensors')) && existsSync(join(vdir, 'adapter_config.json')), `v${v.version} files in ${vdir}`);
      assert.equal(v.adapter_checksum, adapterChecksum(vdir));
      assert.equal(v.served_model_name, adapterName(runId, v.version));
    }
    assert.notEqual(versions[0]!.adapter_checksum, versions[2]!.adapter_checksum, 'each step changed the adapter');
    const newest = store.versionDir(runId, 3);
    const adapterConfig = JSON.parse(readFileSync(join(newest, 'adapter_config.json'), 'utf8')) as { r: number; lora_alpha: number; target_modules: string[] };
    assert.deepEqual([adapterConfig.r, adapterConfig.lora_alpha, adapterConfig.target_modules], [16, 32, ['k_proj', 'o_proj', 'q_proj', 'v_proj']]);
    const { tensors } = decodeSafetensors(readFileSync(join(newest, 'adapter_model.safetensors')));
    const loraB = Object.entries(tensors).filter(([k]) => k.includes('lora_B'));
    assert.ok(loraB.length > 0 && loraB.every(([k]) => k.includes('language_model')), 'LoRA on the language model only');
    assert.ok(loraB.some(([, t]) => Array.from(t.data as Float32Array).some((x) => x !== 0)), 'lora_B moved away from zero');

    // The policy server loaded every version and answers an image prompt with the newest.
    const api = policyApi(server.baseUrl);
    const served = (await api.models()).map((m) => m.id);
    for (const v of [1, 2, 3]) assert.ok(served.includes(adapterName(runId, v)), served.join(', '));
    const res = await fetch(`${server.baseUrl}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: adapterName(runId, 3), max_tokens: 4, logprobs: true, mm_processor_kwargs: TINY_PIXELS,
        messages: [{ role: 'user', content: [{ type: 'text', text: 'Click Save.' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${screenshot.toString('base64')}` } }] }],
      }),
    });
    const reply = (await res.json()) as { model: string; trajstore?: { images: Array<{ num_image_tokens: number }> } };
    assert.equal(res.status, 200, JSON.stringify(reply));
    assert.equal(reply.model, adapterName(runId, 3));
    assert.equal(reply.trajstore?.images[0]?.num_image_tokens, imageTokenCount(480, 640, config.inference.image_processing!));
  });

  it('two `trajstore replay` runs of the VL run train every image group and end with byte-identical adapters', { timeout: 600_000 }, async () => {
    const replays = [];
    for (const name of [uniqueName('cua-ra'), uniqueName('cua-rb')]) {
      const r = await trajstore(['replay', '--source-run', runId, '--run', name, '-c', CUA], overrides);
      assert.equal(r.code, 0, r.stderr.slice(-4000));
      const result = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { runId: string; steps: number; adapterChecksum: string | null; adapterDir: string; totals: Record<string, number> };
      assert.equal(result.runId, name);
      assert.equal(result.steps, 3);
      assert.equal(result.totals.groups_trained, 12);
      assert.deepEqual(dropsOf(result.totals), {});
      const ledger = ledgerOutcome(join(replayConfig(config, name).training.output_dir, 'ledger.jsonl'));
      assert.deepEqual(ledger.trained, groupIds, 'the replay trained every image group');
      assert.deepEqual(ledger.dropped, {});
      assert.equal(adapterChecksum(result.adapterDir), result.adapterChecksum);
      replays.push(result);
    }
    assert.match(replays[0]!.adapterChecksum ?? '', /^sha256:[0-9a-f]{64}$/);
    assert.equal(replays[1]!.adapterChecksum, replays[0]!.adapterChecksum, 'same events, same adapter bytes');
  });
});
