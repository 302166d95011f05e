/**
 * The GBox environment through the real `gbox-sdk`. GBox cannot be reached from here, so the SDK
 * talks HTTP to a fake of GBox's API (fake-gbox-api.ts); everything on our side is real.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { TrajstoreConfigSchema } from '../../src/config/index.js';
import { ProducerError } from '../../src/producers/errors.js';
import { GBoxTasks, gboxEnvOptions } from '../../src/producers/envs/gbox.js';
import { createEnvironments } from '../../src/producers/envs/index.js';
import { openBlobStore, sha256Hex } from '../../src/storage/blob-store.js';
import { createLogger } from '../../src/util/logger.js';
import { SETTINGS_ICON, startFakeGBox, type FakeGBox } from './fake-gbox-api.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });
const TASKS = [{ id: 'open-settings', instruction: 'Open the Settings app.', setup: 'input keyevent HOME', check: 'dumpsys window | grep mCurrentFocus', expect: 'com\\.android\\.settings' }];

describe('GBox environment', () => {
  let fake: FakeGBox;
  before(async () => {
    fake = await startFakeGBox();
  });
  after(async () => {
    await fake?.close();
  });

  test('a missing GBOX_API_KEY is refused at start, naming what to set', async () => {
    const config = TrajstoreConfigSchema.parse({ model: { name: 'm' }, rollout: { environment: 'gbox', env_options: { tasks: TASKS } } });
    await assert.rejects(createEnvironments(config, logger, {}), (err: unknown) =>
      err instanceof ProducerError && err.code === 'TRAJ_E_ENV_CONFIG' && /GBOX_API_KEY is not set/.test(err.message) && /export GBOX_API_KEY/.test(err.hint!));
    assert.throws(() => gboxEnvOptions({ tasks: [{ id: 'x', instruction: 'y', check: 'z' }] }, { GBOX_API_KEY: 'k' }), /tasks\[0\]\.expect/);
  });

  test('an episode through gbox-sdk: box created, setup run, screenshots stored, actions sent, reward from the check command, box deleted', async () => {
    const blobs = openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-')));
    const tasks = new GBoxTasks(0, gboxEnvOptions({ tasks: TASKS, base_url: fake.baseUrl }, { GBOX_API_KEY: 'secret-key' }), blobs, logger);
    const task = tasks.task('train', 0);
    for (const [click, expected] of [[SETTINGS_ICON, true], [{ x: 300, y: 600 }, false]] as const) {
      const env = await tasks.create();
      const reset = await env.reset(task, 0);
      const box = fake.boxes.get(reset.instanceId!)!;
      assert.deepEqual(box.commands, ['input keyevent HOME']);
      assert.equal(reset.observation.image!.width, 36);
      const before = reset.observation.image!.sha256;
      assert.equal(sha256Hex(await blobs.get(before)), before);
      const malformed = await env.step('tap the icon');
      assert.match(malformed.parseError!, /no action found/);
      const step = await env.step(`click(x=${click.x}, y=${click.y})`);
      assert.deepEqual(JSON.parse(step.action!.args_json), { x: click.x, y: click.y });
      await env.step('type(text="hi")');
      await env.step('key(key="Control+A")');
      const done = await env.step('done()');
      assert.equal(done.done, true);
      const reward = await env.reward();
      assert.equal(reward.success, expected);
      assert.equal(reward.value, expected ? 1 : 0);
      assert.equal(done.observation.image!.sha256 !== before, expected, 'the screen changes when Settings opens');
      await env.close();
      assert.equal(box.deleted, true, 'the box is deleted when the episode closes');
      assert.deepEqual(box.actions.map((a) => a.kind), ['click', 'type', 'press']);
      assert.deepEqual(box.actions[2]!.body.keys, ['Control', 'A']);
    }
    assert.ok(fake.authHeaders.every((h) => h === 'Bearer secret-key'), 'the SDK sends the key');
  });

  test('a refused GBox call is a TRAJ_E_ENV error that says to check the key', async () => {
    const blobs = openBlobStore(mkdtempSync(join(tmpdir(), 'blobs-')));
    const tasks = new GBoxTasks(0, gboxEnvOptions({ tasks: TASKS, base_url: fake.baseUrl }, { GBOX_API_KEY: 'k' }), blobs, logger);
    const env = await tasks.create();
    await env.reset(tasks.task('train', 0), 0);
    fake.failActions(401);
    try {
      await assert.rejects(env.step('click(x=1, y=2)'), (err: unknown) => err instanceof ProducerError && err.code === 'TRAJ_E_ENV' && /GBOX_API_KEY was refused/.test(err.hint!));
    } finally {
      fake.failActions(null);
      await env.close();
    }
  });
});
