/**
 * The browser environment on real chromium: every task family is solvable by a scripted policy
 * that reads only the observation text, and fails for a wrong action; malformed actions are
 * reported, not executed; an episode driven by the real CPU policy server stores real
 * screenshots whose hashes its events cite.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startCpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { MalformedActionError, parseAction } from '../../src/producers/actions.js';
import type { Environment, TaskSpec } from '../../src/producers/environment.js';
import { BrowserTasks, browserEnvOptions } from '../../src/producers/envs/browser.js';
import { RolloutWorker } from '../../src/producers/rollout.js';
import { BROWSER_FAMILIES, type BrowserFamily, type BrowserTaskParams } from '../../src/producers/tasks/browser-pages.js';
import { openBlobStore, sha256Hex, type LocalBlobStore } from '../../src/storage/blob-store.js';
import { payloadAs } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka } from '../support/services.js';
import { byGroup, countKind, groupProblems, readTopic, rolloutTopics, testConfig } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

/** Elements of the observation text: `kind "label" ... at (x, y)`. */
function elements(text: string): Array<{ kind: string; label: string; x: number; y: number; line: string }> {
  const out = [];
  for (const line of text.split('\n')) {
    const m = /^(\w+) "([^"]*)".* at \((\d+), (\d+)\)$/.exec(line);
    if (m) out.push({ kind: m[1]!, label: m[2]!, x: Number(m[3]), y: Number(m[4]), line });
  }
  return out;
}

function clickOn(text: string, kind: string, label: string): string {
  const el = elements(text).find((e) => e.kind === kind && e.label === label);
  assert.ok(el, `${kind} "${label}" is in the observation:\n${text}`);
  return `click(x=${el.x}, y=${el.y})`;
}

/**
 * A scripted policy: the next action from the task and the current observation text, solving
 * the task (`wrong` false) or making one plausible mistake (`wrong` true).
 */
function script(p: BrowserTaskParams, wrong: boolean): (obs: string, turn: number) => string {
  const other = <T>(xs: T[], not: T) => xs.find((x) => x !== not)!;
  switch (p.family) {
    case 'click_button':
      return (obs) => clickOn(obs, 'button', wrong ? other(p.labels, p.target) : p.target);
    case 'fill_form': {
      const steps: Array<(obs: string) => string> = [];
      p.fields.forEach((f, i) => {
        steps.push((obs) => clickOn(obs, 'textbox', f.name));
        steps.push(() => `type(text=${JSON.stringify(wrong && i === 0 ? `${f.value}x` : f.value)})`);
      });
      steps.push((obs) => clickOn(obs, 'button', 'Submit'));
      return (obs, turn) => steps[turn]!(obs);
    }
    case 'checkboxes': {
      const tick = wrong ? [...p.targets.slice(1), other(p.options.filter((o) => !p.targets.includes(o)), '')] : p.targets;
      return (obs, turn) => (turn < tick.length ? clickOn(obs, 'checkbox', tick[turn]!) : clickOn(obs, 'button', 'Submit'));
    }
    case 'dropdown': {
      const choice = wrong ? other(p.options, p.target) : p.target;
      return (obs, turn) => [() => clickOn(obs, 'button', 'Choose a color ▾'), () => clickOn(obs, 'option', choice), () => clickOn(obs, 'button', 'Confirm')][turn]!();
    }
    case 'tabs': {
      // The wrong script presses a button of the tab open at the start.
      if (wrong) return (obs) => clickOn(obs, 'button', p.tabs[0]!.buttons[0]!);
      return (obs, turn) => (turn === 0 ? clickOn(obs, 'tab', p.targetTab) : clickOn(obs, 'button', p.target));
    }
  }
}

async function runScript(env: Environment, task: TaskSpec, wrong: boolean): Promise<{ success: boolean; turns: number; shots: string[] }> {
  const reset = await env.reset(task, 0);
  let obs = reset.observation;
  const shots = [obs.image!.sha256];
  const policy = script(task.params as unknown as BrowserTaskParams, wrong);
  for (let turn = 0; turn < 12; turn++) {
    const step = await env.step(policy(obs.text, turn));
    assert.equal(step.parseError, null);
    obs = step.observation;
    shots.push(obs.image!.sha256);
    if (step.done) return { success: (await env.reward()).success, turns: turn + 1, shots };
  }
  throw new Error('the scripted policy did not finish');
}

describe('browser environment', () => {
  let tasks: BrowserTasks;
  let blobs: LocalBlobStore;
  before(async () => {
    blobs = openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-'))) as LocalBlobStore;
    tasks = await BrowserTasks.launch(11, browserEnvOptions({}), blobs, logger);
  });
  after(async () => {
    await tasks?.close();
  });

  const taskOf = (family: BrowserFamily, split: 'train' | 'eval' = 'train', from = 0): TaskSpec => {
    for (let i = from; i < from + 500; i++) {
      const t = tasks.task(split, i);
      if (t.family === `browser.${family}`) return t;
    }
    throw new Error(`no ${family} task`);
  };

  for (const family of BROWSER_FAMILIES) {
    test(`${family}: a scripted policy solves it and a wrong action fails it`, async () => {
      const env = await tasks.create();
      try {
        for (const start of [0, 100]) {
          const task = taskOf(family, 'train', start);
          const good = await runScript(env, task, false);
          assert.equal(good.success, true, `solved ${task.id}`);
          const bad = await runScript(env, task, true);
          assert.equal(bad.success, false, `a wrong action fails ${task.id}`);
          // Real screenshots: PNG bytes in the store under their own hash; the page changed.
          for (const sha of good.shots) {
            const png = await blobs.get(sha);
            assert.equal(png.readUInt32BE(0), 0x89504e47);
            assert.equal(sha256Hex(png), sha);
          }
          assert.ok(new Set(good.shots).size > 1, 'the screen changes as the agent acts');
        }
      } finally {
        await env.close();
      }
    });
  }

  test('layouts are seeded: the same task renders the same screenshot, another task another one', async () => {
    const env = await tasks.create();
    try {
      const a = taskOf('click_button');
      const first = (await env.reset(a, 0)).observation.image!.sha256;
      const again = (await env.reset(a, 0)).observation.image!.sha256;
      const b = taskOf('click_button', 'train', 200);
      const other = (await env.reset(b, 0)).observation.image!.sha256;
      assert.equal(first, again);
      assert.notEqual(first, other);
    } finally {
      await env.close();
    }
  });

  test('malformed actions are reported with what is wrong, and not executed', async () => {
    const cases: Array<[string, RegExp]> = [
      ['I would click the button', /no action found/],
      ['drag(x=1, y=2)', /unknown action "drag"/],
      ['click(x=10)', /needs y=<integer>/],
      ['click(x=ten, y=3)', /x must be a number/],
      ['type(text="unclosed)', /not closed/],
      ['scroll(direction=left)', /up or down/],
      ['key(key="Enter; rm -rf")', /not a key name/],
      ['done(now=1)', /takes no arguments/],
      ['click(x=1, y=2', /reply ended/],
    ];
    for (const [reply, message] of cases) {
      assert.throws(() => parseAction(reply), (err: unknown) => err instanceof MalformedActionError && err.code === 'TRAJ_E_ACTION_MALFORMED' && message.test(err.message), reply);
    }
    assert.deepEqual(parseAction('<think>the Save button</think> click(x=12, y=34)'), { type: 'click', x: 12, y: 34 });
    assert.deepEqual(parseAction('type(text="a \\"quoted\\" word")'), { type: 'type', text: 'a "quoted" word' });

    const env = await tasks.create();
    try {
      const task = taskOf('click_button');
      await env.reset(task, 0);
      const step = await env.step('click(x=1)');
      assert.equal(step.action, null);
      assert.match(step.parseError!, /needs y/);
      assert.equal(step.done, false);
      assert.equal((await env.reward()).success, false, 'nothing was clicked');
    } finally {
      await env.close();
    }
  });

  test('an episode driven by the CPU policy server stores screenshots whose hashes its events cite', async (t) => {
    const server = await startCpuPolicyServer({ logger });
    t.after(() => server.stop());
    const kafka = testKafka();
    const topics = await rolloutTopics(t, kafka);
    const config = testConfig({ topics, apiBase: `${server.baseUrl}/v1`, rollout: { environment: 'browser', num_rollouts: 2, max_turns: 2, concurrency: 2, max_tokens: 8, env_options: {} } });
    const worker = new RolloutWorker({ config, kafka, logger, maxGroups: 1, environments: tasks });
    await worker.run();
    const events = await readTopic(kafka, topics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 1);
    for (const list of byGroup(events).values()) assert.deepEqual(groupProblems(list), []);
    const turns = events.map((e) => payloadAs(e.event, 'Turn')).filter((x) => x !== undefined);
    assert.ok(turns.length >= 2);
    for (const turn of turns) {
      const ref = turn.observation!;
      assert.equal(ref.media_type, 'image/png');
      assert.equal(ref.width, 640);
      const png = await blobs.get(ref.sha256);
      assert.equal(png.length, ref.byte_size);
      assert.equal(ref.uri, blobs.uriOf(ref.sha256));
      // The tiny model rarely writes a valid action: each turn has an action or says why not.
      assert.ok((turn.action === null) !== (turn.action_parse_error === null));
    }
    const finished = events.map((e) => payloadAs(e.event, 'EpisodeFinished')).filter((x) => x !== undefined);
    assert.equal(finished.length, 2);
    for (const f of finished) {
      assert.ok(f.final_observation, 'the final screen is cited too');
      assert.ok(await blobs.has(f.final_observation.sha256));
      assert.notEqual(f.status, 'error', f.error_message ?? '');
    }
  });
});
