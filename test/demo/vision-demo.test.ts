/**
 * The vision demo's wiring (`npm run demo -- --vision`), without a 15-minute run: its config
 * validates and makes a vision run of the read_digit task; the page renders in Debian's chromium
 * with the digit only in its pixels (never in the text the policy reads); the screenshots of the
 * two digits differ across the tiny VL model's image tokens; the page judges the reply as the
 * demo's reward says; the demo model is made once and made again when the prompt changes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { imagePatchGrid, imageTokenCount } from '../../src/consumers/trainer/image-tokens.js';
import { isVisionDemo } from '../../src/demo/run.js';
import { makeRunId, writeRunConfig } from '../../src/demo/run-config.js';
import { demoVisionModel } from '../../src/demo/setup.js';
import { ensureEngineVenv } from '../../src/inference/cpu-policy-server.js';
import { Conversation } from '../../src/producers/conversation.js';
import type { TaskSpec } from '../../src/producers/environment.js';
import { BrowserTasks, browserEnvOptions } from '../../src/producers/envs/browser.js';
import { ANSWER_SYSTEM, READ_DIGIT_INSTRUCTION, renderTaskPage, type AnswerTaskParams } from '../../src/producers/tasks/browser-pages.js';
import { openBlobStore, sha256Hex, type LocalBlobStore } from '../../src/storage/blob-store.js';
import { projectRoot } from '../../src/services/paths.js';
import type { TrajstoreConfig } from '../../src/config/index.js';

const CONFIG = join(projectRoot(), 'configs', 'demo-vision.yaml');

function visionRunConfig(): TrajstoreConfig {
  const runDir = mkdtempSync(join(tmpdir(), 'trajstore-vision-demo-'));
  return writeRunConfig({ baseConfig: CONFIG, runId: makeRunId(0, new Date('2026-12-01T10:00:00Z'), 'demo-vision'), seed: 0, runDir, apiBase: 'http://127.0.0.1:9999/v1', modelDir: '/models/vl' }).config;
}

test('the vision config validates and makes a vision run of read_digit with the tiny VL processor settings', () => {
  const config = visionRunConfig();
  assert.equal(config.run.id, 'demo-vision-s0-20261201100000');
  assert.equal(isVisionDemo(config), true);
  assert.equal(config.rollout.environment, 'browser');
  assert.equal(config.rollout.max_turns, 1);
  const env = browserEnvOptions(config.rollout.env_options);
  assert.deepEqual(env.families, ['read_digit']);
  assert.equal(env.sendScreenshots, true);
  assert.equal(env.wrongAnswerReward, -0.1);
  // trajstore_engine/tiny_vl.py: Qwen3-VL's patch 16 and merge 2, 4..64 tokens of 32x32 px.
  assert.deepEqual(config.inference.image_processing && { ...config.inference.image_processing, processor_version: undefined }, {
    processor: 'Qwen2VLImageProcessor', processor_version: undefined, min_pixels: 4 * 32 * 32, max_pixels: 64 * 32 * 32, patch_size: 16, merge_size: 2, temporal_patch_size: 2,
  });
  // The text demo's config stays a text run.
  assert.equal(isVisionDemo({ inference: {} }), false);
});

describe('read_digit in chromium', () => {
  let tasks: BrowserTasks;
  let blobs: LocalBlobStore;
  let browser: Browser;
  const config = visionRunConfig();
  before(async () => {
    blobs = openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-'))) as LocalBlobStore;
    const options = browserEnvOptions(config.rollout.env_options);
    tasks = await BrowserTasks.launch(config.run.seed, options, blobs);
    browser = await chromium.launch({ executablePath: options.executable, headless: true, chromiumSandbox: false, args: ['--disable-gpu'] });
  });
  after(async () => {
    await tasks?.close();
    await browser?.close();
  });

  const taskWith = (digit: number, from = 0): TaskSpec => {
    for (let i = from; i < from + 100; i++) {
      const t = tasks.task('train', i);
      if ((t.params as unknown as AnswerTaskParams).digit === digit) return t;
    }
    throw new Error(`no task shows ${digit}`);
  };

  test('tasks show 0 and 1, about equally often, and the digit is in no text the policy reads', async () => {
    const digits = Array.from({ length: 200 }, (_, i) => (tasks.task('train', i).params as unknown as AnswerTaskParams).digit);
    const ones = digits.filter((d) => d === 1).length;
    assert.deepEqual([...new Set(digits)].sort(), [0, 1]);
    assert.ok(ones > 70 && ones < 130, `${ones} of 200 tasks show 1`);

    const env = await tasks.create();
    try {
      for (const digit of [0, 1]) {
        const task = taskWith(digit);
        assert.equal(task.family, 'browser.read_digit');
        const reset = await env.reset(task, 0);
        assert.equal(reset.observation.text, READ_DIGIT_INSTRUCTION);
        assert.equal(reset.system, ANSWER_SYSTEM);
        // What the request carries and what the Turn stores: an image part and this text only.
        const conversation = new Conversation(true, 1);
        conversation.add('system', reset.system);
        conversation.add('user', reset.observation.text, reset.observation);
        const texts = conversation.request().flatMap((m) => (typeof m.content === 'string' ? [m.content] : m.content.flatMap((p) => (p.type === 'text' ? [p.text] : []))));
        assert.deepEqual(texts, [ANSWER_SYSTEM, READ_DIGIT_INSTRUCTION]);
        for (const text of [...texts, conversation.stored(0)]) assert.doesNotMatch(text.replace(/"sha256":"[0-9a-f]+"/g, ''), /[0-9]/);
        assert.equal(conversation.promptImages().length, 1);
      }
    } finally {
      await env.close();
    }
  });

  test('the screenshots differ between the digits in most of the tiny model\'s image tokens', async () => {
    const env = await tasks.create();
    const shot = async (task: TaskSpec) => {
      const image = (await env.reset(task, 0)).observation.image!;
      assert.equal(sha256Hex(await blobs.get(image.sha256)), image.sha256);
      return image;
    };
    try {
      const zero = await shot(taskWith(0));
      const one = await shot(taskWith(1));
      const zeroAgain = await shot(taskWith(0));
      const otherZero = await shot(taskWith(0, 50));
      assert.equal(zero.sha256, zeroAgain.sha256, 'the same task renders the same screenshot');
      assert.notEqual(zero.sha256, one.sha256);
      assert.notEqual(zero.sha256, otherZero.sha256, 'tasks of one digit differ in layout');
      // 640x480 is seen as 9x6 image tokens (smart_resize to 288x192, one token per 32x32 px).
      const g = config.inference.image_processing!;
      assert.deepEqual([zero.width, zero.height], [640, 480]);
      assert.deepEqual(imagePatchGrid(480, 640, g), { rows: 12, cols: 18 });
      assert.equal(imageTokenCount(480, 640, g), 54);
      // Mean grey level of each token's area, as the model's resize sees it: below the header
      // (the top row of tokens), most tokens must differ between a 0 page and a 1 page.
      const [inkZero, inkOne] = [await tokenInk(browser, zero.bytes!), await tokenInk(browser, one.bytes!)];
      const below = (xs: number[]) => xs.slice(9);
      const differing = below(inkZero).filter((v, i) => Math.abs(v - below(inkOne)[i]!) > 0.05).length;
      assert.ok(differing >= 30, `${differing} of 45 tokens below the header differ`);
    } finally {
      await env.close();
    }
  });

  test('the page judges the reply: its first digit is the answer, a wrong digit costs wrong_answer_reward', async () => {
    const env = await tasks.create();
    try {
      const task = taskWith(1);
      const cases: Array<[string, boolean, number, string | null]> = [
        ['1', true, 1, null],
        ['x1 0', true, 1, null],
        ['0', false, -0.1, null],
        ['none', false, 0, 'no digit in the reply'],
      ];
      for (const [reply, success, value, parseError] of cases) {
        await env.reset(task, 0);
        const step = await env.step(reply);
        assert.equal(step.done, true, reply);
        assert.equal(step.parseError, parseError, reply);
        assert.equal(step.action?.type ?? null, parseError ? null : 'answer', reply);
        const reward = await env.reward();
        assert.equal(reward.success, success, reply);
        assert.equal(reward.value, value, reply);
        assert.equal(reward.source, 'page:read_digit');
      }
    } finally {
      await env.close();
    }
  });

  test('the page source holds no visible text but the instruction', () => {
    const params = taskWith(0).params as unknown as AnswerTaskParams;
    const html = renderTaskPage(params);
    assert.match(html, /aria-hidden="true"/);
    assert.match(html, new RegExp(READ_DIGIT_INSTRUCTION.replace('.', '\\.')));
  });
});

/** Mean grey level (0 white .. 1 black) of each of the 9x6 token cells of a 640x480 PNG. */
async function tokenInk(browser: Browser, png: Buffer): Promise<number[]> {
  const page = await browser.newPage();
  try {
    return await page.evaluate(async (uri) => {
      const img = new Image();
      img.src = uri;
      await img.decode();
      const canvas = document.createElement('canvas');
      canvas.width = 288;
      canvas.height = 192;
      const ctx = canvas.getContext('2d')!;
      ctx.drawImage(img, 0, 0, 288, 192);
      const data = ctx.getImageData(0, 0, 288, 192).data;
      const out: number[] = [];
      for (let ty = 0; ty < 6; ty++) {
        for (let tx = 0; tx < 9; tx++) {
          let sum = 0;
          for (let y = ty * 32; y < ty * 32 + 32; y++) for (let x = tx * 32; x < tx * 32 + 32; x++) sum += data[(y * 288 + x) * 4]!;
          out.push(1 - sum / (32 * 32 * 255));
        }
      }
      return out;
    }, `data:image/png;base64,${png.toString('base64')}`);
  } finally {
    await page.close();
  }
}

test('the vision demo model is made once, and made again for another prompt', { timeout: 300_000 }, async () => {
  const python = await ensureEngineVenv({ install: true });
  const dir = join(mkdtempSync(join(tmpdir(), 'vl-demo-model-')), 'model');
  const lines: string[] = [];
  const say = (line: string) => lines.push(line);
  // One warm-start step: the demo's 40 take ~20 s on a CPU (their figures: src/demo/README.md).
  const spec = { outputScale: 12, system: ANSWER_SYSTEM, instruction: READ_DIGIT_INSTRUCTION, warmSteps: 1 };
  {
    assert.equal(demoVisionModel(python, dir, spec, say), dir);
    const made = JSON.parse(readFileSync(join(dir, 'demo_model.json'), 'utf8')) as { made_with: Record<string, unknown>; version_0_reply: Record<string, unknown> };
    assert.deepEqual({ ...made.made_with, warm_lr: undefined }, { seed: 0, output_scale: 12, vl: true, system: ANSWER_SYSTEM, instruction: READ_DIGIT_INSTRUCTION, warm_steps: 1, warm_lr: undefined });
    assert.deepEqual(Object.keys(made.version_0_reply).sort(), ['page_0', 'page_1']);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { model_type: string };
    assert.equal(config.model_type, 'qwen3_vl');
    assert.equal(lines.filter((l) => l.startsWith('model:')).length, 1);
    demoVisionModel(python, dir, spec, say);
    assert.equal(lines.filter((l) => l.startsWith('model:')).length, 1, 'the cached model is used');
    demoVisionModel(python, dir, { ...spec, instruction: 'Which digit is shown?' }, say);
    assert.equal(lines.filter((l) => l.startsWith('model:')).length, 2, 'another prompt makes it again');
    demoVisionModel(python, dir, { ...spec, warmSteps: 2 }, say);
    assert.equal(lines.filter((l) => l.startsWith('model:')).length, 3, 'another warm start makes it again');
  }
});
