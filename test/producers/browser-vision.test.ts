/**
 * Producers end to end with screenshots: `trajstore rollout` on the real browser environment
 * (Debian's chromium through playwright-core) with `send_screenshots`, against the real CPU
 * policy server serving the tiny Qwen3-VL-style model. Every Turn cites the screenshots its request
 * carried (blobs in the store under their SHA-256, sizes from the PNG), records the configured
 * image settings, and its prompt_token_ids hold exactly one pad run per image of the length the
 * trainer's smart_resize gives, which is what the server expands: re-tokenizing the stored prompt
 * with the stored images gives the same ids. Then the real engine trains on those groups and drops
 * none (no image missing, no placeholder mismatch).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TrajstoreConfig } from '../../src/config/index.js';
import { imageTokenCount } from '../../src/consumers/trainer/image-tokens.js';
import { readLedger } from '../../src/consumers/trainer/ledger.js';
import { replayConfig, runReplay } from '../../src/consumers/trainer/replay.js';
import { ensureEngineVenv, ensureTinyVlModel, startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { payloadAs, type TrajectoryEvent, type Turn } from '../../src/schemas/index.js';
import { projectRoot } from '../../src/services/paths.js';
import { openBlobStore, sha256Hex } from '../../src/storage/blob-store.js';
import { imageSize } from '../../src/storage/image-size.js';
import { createLogger } from '../../src/util/logger.js';
import { KAFKA_BROKERS, testKafka, uniqueName } from '../support/services.js';
import { produceGroups, runTopics, TINY_VL_IMAGE_PROCESSING, visionTokenIds, type VisionTokenIds } from '../trainer/fixtures.js';
import { byGroup, countKind, groupProblems, readTopic, testConfig } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });
const GROUPS = 2;
const MAX_TURNS = 2;

/** The lengths of the runs of `<|image_pad|>` in a prompt, each checked to sit between vision start and end. */
function padRuns(ids: number[], v: VisionTokenIds): number[] {
  const runs: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] !== v.image) continue;
    const start = i;
    while (ids[i] === v.image) i++;
    assert.equal(ids[start - 1], v.start, `pad run at ${start} opens with <|vision_start|>`);
    assert.equal(ids[i], v.end, `pad run at ${start} closes with <|vision_end|>`);
    runs.push(i - start);
  }
  return runs;
}

interface StoredMessage { role: string; content: string | Array<{ type: string; text?: string; sha256?: string }> }

describe('browser rollouts with screenshots against the CPU policy server serving the tiny VL model', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-browser-vl-'));
  const kafka = testKafka();
  let server: CpuPolicyServer;
  let modelDir: string;
  let config: TrajstoreConfig;
  let events: TrajectoryEvent[] = [];

  before(async () => {
    await ensureEngineVenv({ install: true });
    modelDir = await ensureTinyVlModel();
    // Served as `tiny`, the model name of the producer tests' config.
    server = await startCpuPolicyServer({ modelDir, servedModelName: 'tiny', threads: 1, logger });
  });
  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('`trajstore rollout` writes Turns whose prompt images are stored screenshots and whose pad runs are the server\'s expansion', { timeout: 300_000 }, async (t) => {
    const topic = uniqueName('bvl');
    config = testConfig({
      topics: { trajectories: topic, policy_versions: `${topic}.versions`, trainer_metrics: `${topic}.metrics`, dead_letter: `${topic}.dlq` },
      apiBase: `${server.baseUrl}/v1`,
      rollout: { environment: 'browser', num_rollouts: 2, max_turns: MAX_TURNS, concurrency: 2, max_tokens: 8,
        // Every screenshot stays in the prompt: each Turn's prompt extends the previous one.
        env_options: { send_screenshots: true, screenshots_in_prompt: MAX_TURNS } },
      inference: { image_processing: TINY_VL_IMAGE_PROCESSING },
    });
    config.kafka.brokers = KAFKA_BROKERS;
    config.storage.blobs = join(dir, 'blobs');
    await runTopics(t, kafka, config);
    const file = join(dir, 'rollout.json'); // JSON is YAML
    writeFileSync(file, JSON.stringify(config));

    const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'trajstore.mjs'), 'rollout', '-c', file, '--groups', String(GROUPS), '--progress-s', '60'], {
      env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn', KAFKAJS_NO_PARTITIONER_WARNING: '1' }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, stderr.slice(-4000));

    const read = await readTopic(kafka, topic, (es) => countKind(es, 'GroupCompleted') >= GROUPS);
    const groups = byGroup(read);
    assert.equal(groups.size, GROUPS);
    for (const list of groups.values()) assert.deepEqual(groupProblems(list), []);
    events = read.map((e) => e.event);
    for (const e of events) {
      const finished = payloadAs(e, 'EpisodeFinished');
      if (finished) assert.notEqual(finished.status, 'error', finished.error_message ?? '');
    }

    const blobs = openBlobStore(config.storage.blobs);
    const vision = visionTokenIds(modelDir);
    const settings = config.inference.image_processing!;
    const byEpisode = new Map<string, Turn[]>();
    for (const e of events) {
      const turn = payloadAs(e, 'Turn');
      if (turn) byEpisode.set(e.episode_id!, [...(byEpisode.get(e.episode_id!) ?? []), turn]);
    }
    assert.equal(byEpisode.size, GROUPS * 2);
    let turns = 0;
    let multiImage = 0;
    for (const episode of byEpisode.values()) {
      const messages: StoredMessage[] = [];
      for (const turn of episode) {
        turns++;
        // One screenshot per observation so far, in prompt order; the previous Turn's are a prefix.
        assert.equal(turn.prompt_images.length, turn.turn_index + 1);
        if (turn.turn_index > 0) assert.deepEqual(turn.prompt_images.slice(0, -1), episode[turn.turn_index - 1]!.prompt_images);
        if (turn.prompt_images.length > 1) multiImage++;
        assert.deepEqual({ ...turn.image_processing }, settings);
        const dataUrls = new Map<string, string>();
        for (const img of turn.prompt_images) {
          const bytes = await blobs.get(img.sha256);
          assert.equal(sha256Hex(bytes), img.sha256);
          assert.equal(bytes.length, img.byte_size);
          assert.equal(img.media_type, 'image/png');
          assert.deepEqual(imageSize(bytes), { mediaType: img.media_type, width: img.width, height: img.height });
          assert.deepEqual([img.width, img.height], [640, 480], 'the browser viewport');
          dataUrls.set(img.sha256, `data:image/png;base64,${bytes.toString('base64')}`);
        }
        // Exactly one pad run per image, of smart_resize's length (640x480 at the tiny settings: 54).
        assert.deepEqual(padRuns(turn.prompt_token_ids, vision), turn.prompt_images.map((img) => imageTokenCount(img.height, img.width, settings)));
        assert.equal(imageTokenCount(480, 640, settings), 54);

        // The server's own expansion: the stored messages (after the first turn, deltas that start
        // with the previous reply), their image_refs replaced by the stored bytes, re-tokenized
        // with the recorded settings.
        messages.push(...(JSON.parse(turn.prompt) as StoredMessage[]));
        const request = messages.map((m) => (typeof m.content === 'string' ? m : {
          role: m.role,
          content: m.content.map((p) => (p.type === 'image_ref' ? { type: 'image_url', image_url: { url: dataUrls.get(p.sha256!) } } : p)),
        }));
        const res = await fetch(`${server.baseUrl}/tokenize`, {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'tiny', messages: request, mm_processor_kwargs: { min_pixels: settings.min_pixels, max_pixels: settings.max_pixels } }),
        });
        const body = (await res.json()) as { tokens: number[] };
        assert.equal(res.status, 200, JSON.stringify(body));
        assert.deepEqual(body.tokens, turn.prompt_token_ids, 'the stored prompt and images rebuild the exact prompt the server sampled from');
      }
    }
    assert.ok(turns >= GROUPS * 2);
    t.diagnostic(`${turns} turns, ${multiImage} with two screenshots`);
  });

  test('the real engine trains on the producer\'s screenshot groups without dropping any', { timeout: 300_000 }, async (t) => {
    assert.ok(events.length > 0, 'the rollout test ran first');
    // The tiny model's random weights never solve a page, so every reward is 0 and GRPO would
    // drop each group (equal rewards) before the engine saw it. The judge is replaced here: the
    // producer's events are copied to the trainer's topic with the first episode of each group
    // rewarded 1. Everything else (prompts, token ids, logprobs, images) is as produced.
    const topic = uniqueName('bvl-train');
    const train: TrajstoreConfig = {
      ...config,
      model: { ...config.model, path: modelDir }, // image_token_id: read from its config.json
      kafka: { ...config.kafka, topics: { trajectories: topic, policy_versions: `${topic}.versions`, trainer_metrics: `${topic}.metrics`, dead_letter: `${topic}.dlq` } },
      training: { ...config.training, output_dir: join(dir, 'out'), max_staleness: 4 },
      checkpoint: { ...config.checkpoint, dir: join(dir, 'checkpoints') },
      storage: { ...config.storage, adapters: join(dir, 'adapters') },
    };
    await runTopics(t, kafka, train);
    const groups = new Map<string, TrajectoryEvent[]>();
    for (const e of events) groups.set(e.group_id, [...(groups.get(e.group_id) ?? []), e]);
    const rewarded = new Set([...groups.values()].map((g) => payloadAs(g.at(-1)!, 'GroupCompleted')!.episode_ids[0]!));
    const relabelled = [...groups.values()].map((g) => g.map((e) => {
      const reward = payloadAs(e, 'Reward');
      return reward ? { ...e, payload: { Reward: { ...reward, value: rewarded.has(e.episode_id!) ? 1 : 0 } } } : e;
    }));
    await produceGroups(kafka, topic, relabelled);

    const runId = uniqueName('bvl-run');
    const result = await runReplay({ config: train, sourceRunId: config.run.id, runId, logger, progress: null });
    assert.equal(result.totals.groups_trained, GROUPS, JSON.stringify(result.totals));
    assert.deepEqual(Object.entries(result.totals).filter(([k, v]) => k.startsWith('groups_dropped') && v > 0), [], 'no group dropped');
    assert.equal(result.steps, 1, 'batch_size 2');
    const ledger = readLedger(join(replayConfig(train, runId).training.output_dir, 'ledger.jsonl'));
    assert.deepEqual(ledger.flatMap((l) => l.trained).sort(), [...groups.keys()].sort());
    assert.deepEqual(ledger.flatMap((l) => Object.keys(l.dropped)), []);
    assert.match(result.adapterChecksum ?? '', /^sha256:/);
  });
});
