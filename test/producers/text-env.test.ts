/**
 * The text tasks' rewards and options: what a reply earns, and options refused with their field.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TextTasks, textEnvOptions } from '../../src/producers/envs/text.js';

async function rewardFor(options: Record<string, unknown>, reply: string) {
  const tasks = new TextTasks(3, textEnvOptions({ families: ['copy_digit'], digits: 2, ...options }));
  const task = tasks.task('train', 0);
  const env = await tasks.create();
  await env.reset(task, 0);
  const answer = Number(task.params.answer);
  const text = reply.replace('RIGHT', String(answer)).replace('WRONG', String(1 - answer));
  await env.step(text);
  return env.reward();
}

test('copy_digit: right digit 1 (+ format), wrong digit the wrong_digit_reward (+ format), no digit 0', async () => {
  const opts = { format_reward: 0.1, wrong_digit_reward: -0.5 };
  const right = await rewardFor(opts, 'RIGHT');
  assert.equal(right.success, true);
  assert.equal(right.value, 1.1);
  const wrong = await rewardFor(opts, 'WRONG');
  assert.equal(wrong.success, false);
  assert.equal(wrong.value, -0.4);
  assert.deepEqual(wrong.components, { correct: 0, format: 1, wrong: 1 });
  const silent = await rewardFor(opts, 'no idea');
  assert.equal(silent.value, 0);
  assert.deepEqual(silent.components, { correct: 0, format: 0, wrong: 0 });
});

test('wrong_digit_reward defaults to 0: a wrong digit earns only the format reward', async () => {
  assert.equal((await rewardFor({ format_reward: 0.1 }, 'WRONG')).value, 0.1);
});

test('text options out of range are refused with the field named', () => {
  assert.throws(() => textEnvOptions({ wrong_digit_reward: 0.5 }), /rollout\.env_options\.wrong_digit_reward must be -1-0/);
  assert.throws(() => textEnvOptions({ format_reward: -0.1 }), /format_reward must be 0-1/);
  assert.throws(() => textEnvOptions({ digit: 2 }), /digit is not a text-task option/);
});
