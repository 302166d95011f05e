/**
 * Screenshots sent to a vision policy are recorded so the exact multimodal prompt can be rebuilt:
 * every Turn lists the images its request carried (blob-store SHA-256, size from the PNG header,
 * prompt order) and the image settings the server was told to apply (`mm_processor_kwargs` in
 * every request). GBox runs against the fake of its HTTP API (fake-gbox-api.ts) through the real
 * gbox-sdk; the policy is a fake vision chat server at the HTTP level that expands each image
 * into placeholder tokens the way Qwen2-VL/Qwen3-VL's processor does (the CPU policy server's
 * own vision support is tested elsewhere); events go through the real local Kafka. The events'
 * groups are then decided by the trainer's filters, which check every placeholder count.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GroupAssembler } from '../../src/consumers/trainer/assembler.js';
import { prepareGroup } from '../../src/consumers/trainer/filters.js';
import { imageTokenCount } from '../../src/consumers/trainer/image-tokens.js';
import type { ChatCompletionResponse } from '../../src/inference/vllm-api.js';
import { ProducerError } from '../../src/producers/errors.js';
import { GBoxTasks, gboxEnvOptions } from '../../src/producers/envs/gbox.js';
import { fixedPolicy, PolicyClient } from '../../src/producers/policy-client.js';
import { RolloutWorker } from '../../src/producers/rollout.js';
import { payloadAs } from '../../src/schemas/index.js';
import { openBlobStore, sha256Hex } from '../../src/storage/blob-store.js';
import { imageSize } from '../../src/storage/image-size.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka } from '../support/services.js';
import { SETTINGS_ICON, startFakeGBox, type FakeGBox } from './fake-gbox-api.js';
import { byGroup, countKind, groupProblems, readTopic, rolloutTopics, testConfig } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });
const TASKS = [{ id: 'open-settings', instruction: 'Open the Settings app.', setup: 'input keyevent HOME', check: 'dumpsys window | grep mCurrentFocus', expect: 'com\\.android\\.settings' }];
/** The tiny VL model's settings; a server that applies them turns a 36x64 screenshot into 6 tokens. */
const IMAGE_PROCESSING = {
  processor: 'Qwen2VLImageProcessorFast', processor_version: 'transformers 5.17.0',
  min_pixels: 4096, max_pixels: 65_536, patch_size: 16, merge_size: 2, temporal_patch_size: 2,
};

// The fake server's vocabulary: ChatML-like framing, Qwen's vision tokens, one token per character.
const IM_START = 1;
const IM_END = 2;
const NEWLINE = 3;
const ROLE = { system: 4, user: 5, assistant: 6 } as const;
const V_START = 7;
const V_END = 8;
const PAD = 9;
const text = (s: string) => [...s].map((ch) => 100 + (ch.codePointAt(0)! % 400));

interface Part { type: string; text?: string; image_url?: { url: string } }
interface Request { messages: Array<{ role: keyof typeof ROLE; content: string | Part[] }>; mm_processor_kwargs?: { min_pixels: number; max_pixels: number } }

interface FakeVisionPolicy {
  baseUrl: string;
  /** Request bodies by the response id the Turn records. */
  requests: Map<string, Request>;
  close(): Promise<void>;
}

/**
 * A chat server that renders a prompt like Qwen3-VL's template and vLLM's processor: each
 * image_url part becomes <|vision_start|>, one pad per merged patch of the image resized under
 * the request's mm_processor_kwargs, <|vision_end|>. The first reply to a fresh episode alternates
 * between opening Settings and missing it, so a group's rewards differ.
 */
async function startFakeVisionPolicy(): Promise<FakeVisionPolicy> {
  const requests = new Map<string, Request>();
  let firstTurns = 0;
  let n = 0;
  const server: Server = createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    const request = JSON.parse(body) as Request;
    const kwargs = request.mm_processor_kwargs ?? { min_pixels: 56 * 56, max_pixels: 28 * 28 * 1280 };
    const prompt: number[] = [];
    for (const m of request.messages) {
      prompt.push(IM_START, ROLE[m.role], NEWLINE);
      for (const part of typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content) {
        if (part.type === 'text') prompt.push(...text(part.text!));
        else {
          const bytes = Buffer.from(part.image_url!.url.replace(/^data:[^,]+,/, ''), 'base64');
          const { width, height } = imageSize(bytes);
          const pads = imageTokenCount(height, width, { ...kwargs, patch_size: 16, merge_size: 2 });
          prompt.push(V_START, ...Array(pads).fill(PAD), V_END);
        }
      }
      prompt.push(IM_END, NEWLINE);
    }
    prompt.push(IM_START, ROLE.assistant, NEWLINE);
    const turn = request.messages.filter((m) => m.role === 'assistant').length;
    const reply = turn === 0 ? (firstTurns++ % 2 === 0 ? `click(x=${SETTINGS_ICON.x}, y=${SETTINGS_ICON.y})` : 'click(x=300, y=600)') : 'done()';
    const ids = [...text(reply), IM_END];
    const id = `chatcmpl-${++n}`;
    requests.set(id, request);
    const answer: ChatCompletionResponse = {
      id, object: 'chat.completion', created: 0, model: 'tiny-vl',
      choices: [{ index: 0, message: { role: 'assistant', content: reply }, finish_reason: 'stop', stop_reason: null, token_ids: ids,
        logprobs: { content: ids.map((t) => ({ token: `token_id:${t}`, logprob: -0.5, bytes: null, top_logprobs: [] })) } }],
      usage: { prompt_tokens: prompt.length, completion_tokens: ids.length, total_tokens: prompt.length + ids.length },
      prompt_token_ids: prompt,
    };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as { port: number };
  return { baseUrl: `http://127.0.0.1:${port}`, requests, close: () => new Promise((done) => server.close(() => done())) };
}

/** The image_url parts of a request, in prompt order, as the bytes they carry. */
function sentImages(request: Request): Buffer[] {
  return request.messages
    .flatMap((m) => (typeof m.content === 'string' ? [] : m.content))
    .flatMap((p) => (p.type === 'image_url' ? [Buffer.from(p.image_url!.url.replace(/^data:[^,]+,/, ''), 'base64')] : []));
}

describe('vision prompts (GBox, fake vision policy, real Kafka)', () => {
  let gbox: FakeGBox;
  let policy: FakeVisionPolicy;
  before(async () => {
    gbox = await startFakeGBox();
    policy = await startFakeVisionPolicy();
  });
  after(async () => {
    await gbox?.close();
    await policy?.close();
  });

  test('every Turn records the images its request carried, in prompt order, with the configured settings; the trainer finds every placeholder count right', async (t) => {
    const kafka = testKafka();
    const topics = await rolloutTopics(t, kafka);
    const envOptions = { tasks: TASKS, base_url: gbox.baseUrl, screenshots_in_prompt: 5 };
    const config = testConfig({
      topics, apiBase: `${policy.baseUrl}/v1`,
      rollout: { environment: 'gbox', num_rollouts: 2, max_turns: 4, concurrency: 2, max_tokens: 16, env_options: envOptions },
      inference: { image_processing: IMAGE_PROCESSING },
    });
    const blobs = openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-')));
    const environments = new GBoxTasks(0, gboxEnvOptions(envOptions, { GBOX_API_KEY: 'k' }), blobs, logger);
    const worker = new RolloutWorker({ config, kafka, logger, maxGroups: 1, environments });
    await worker.run();
    const events = await readTopic(kafka, topics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 1);
    for (const list of byGroup(events).values()) assert.deepEqual(groupProblems(list), []);

    const turns = events.map((e) => payloadAs(e.event, 'Turn')).filter((x) => x !== undefined);
    assert.equal(turns.length, 4, 'two episodes of two turns (click, then done)');
    for (const turn of turns) {
      const request = policy.requests.get(turn.request_id!)!;
      assert.deepEqual(request.mm_processor_kwargs, { min_pixels: 4096, max_pixels: 65_536 }, 'the server is told the recorded pixel limits');
      const sent = sentImages(request);
      assert.equal(sent.length, turn.turn_index + 1, 'every screenshot of the episode so far is in the prompt');
      assert.deepEqual(turn.prompt_images.map((i) => i.sha256), sent.map((b) => sha256Hex(b)), 'the hashes of the bytes sent, in prompt order');
      for (const [i, img] of turn.prompt_images.entries()) {
        assert.deepEqual({ ...img }, { sha256: sha256Hex(sent[i]!), media_type: 'image/png', byte_size: sent[i]!.length, width: 36, height: 64 });
        assert.ok((await blobs.get(img.sha256)).equals(sent[i]!), 'the bytes are in the blob store under the hash');
      }
      assert.deepEqual({ ...turn.image_processing }, IMAGE_PROCESSING);
      assert.ok(!turn.prompt.includes('base64'), 'no image bytes in the event');
      const stored = JSON.parse(turn.prompt) as Array<{ content: unknown }>;
      const refs = stored.flatMap((m) => (Array.isArray(m.content) ? m.content : [])).filter((p: { type: string }) => p.type === 'image_ref');
      assert.equal(refs.length, 1, 'the stored prompt (turn 0 full, later the delta) cites the newest image by hash');
      assert.equal(turn.prompt_token_ids.filter((id) => id === PAD).length, 6 * sent.length);
    }
    // The trainer's filters accept the group: every placeholder count matches its images.
    const assembler = new GroupAssembler({ runId: config.run.id, timeoutMs: 60_000, maxOpenGroups: 10 });
    let group;
    for (const e of events.sort((a, b) => a.offset - b.offset)) group = assembler.accept(e.event, { partition: e.partition, offset: e.offset }, 0).completed ?? group;
    assert.ok(group);
    const decided = prepareGroup(group, 0, { maxStaleness: 4, stalePolicy: 'drop', stdScaling: true, maxSeqLength: 4096, imageTokenId: PAD });
    assert.ok(decided.ok, decided.ok ? '' : `${decided.reason}: ${decided.detail}`);
    assert.equal(decided.group.sequences.length, 2, 'each episode’s two turns merge into one sequence');
    for (const s of decided.group.sequences) {
      assert.equal(s.images.length, 2);
      assert.deepEqual({ ...s.imageProcessing }, IMAGE_PROCESSING);
    }
  });

  test('a producer whose environment sends screenshots refuses to start without inference.image_processing', async () => {
    const config = testConfig({ topics: { trajectories: 't' }, apiBase: `${policy.baseUrl}/v1`, rollout: { environment: 'gbox', env_options: { tasks: TASKS } } });
    const environments = new GBoxTasks(0, gboxEnvOptions({ tasks: TASKS, base_url: gbox.baseUrl }, { GBOX_API_KEY: 'k' }), openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-'))), logger);
    assert.throws(() => new RolloutWorker({ config, kafka: testKafka(), logger, maxGroups: 1, environments }),
      (err: unknown) => err instanceof ProducerError && err.code === 'TRAJ_E_ENV_CONFIG' && /inference\.image_processing is not set/.test(err.message));
  });

  test('mm_processor_kwargs is sent only when image settings are configured', async () => {
    const plain = new PolicyClient({ apiBases: [policy.baseUrl], policy: fixedPolicy('tiny'), logger });
    const a = await plain.complete([{ role: 'user', content: 'hi' }], { temperature: 1, top_p: 1, max_tokens: 4 });
    assert.equal('mm_processor_kwargs' in policy.requests.get(a.requestId!)!, false);
    const vision = new PolicyClient({ apiBases: [policy.baseUrl], policy: fixedPolicy('tiny'), logger, mmProcessorKwargs: { min_pixels: 4096, max_pixels: 65_536 } });
    const b = await vision.complete([{ role: 'user', content: 'hi' }], { temperature: 1, top_p: 1, max_tokens: 4 });
    assert.deepEqual(policy.requests.get(b.requestId!)!.mm_processor_kwargs, { min_pixels: 4096, max_pixels: 65_536 });
  });
});
