/**
 * Chat completions as trajstore's producers use them: logprobs and token ids from vLLM's API, on
 * vLLM or on the CPU policy server (see target.ts for pointing the suite at a vLLM).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ChatChoice } from '../../src/inference/vllm-api.js';
import { contractTarget, expectApiError, MESSAGES, type ContractTarget } from './target.js';

let target: ContractTarget;
before(async () => {
  target = await contractTarget();
}, { timeout: 900_000 });
after(async () => target?.close());

/** The ids whose text is the message content: vLLM leaves a stop token's text out. */
function textIds(choice: ChatChoice): number[] {
  const ids = choice.token_ids ?? [];
  const stoppedByToken = choice.finish_reason === 'stop' && typeof choice.stop_reason !== 'string';
  return stoppedByToken ? ids.slice(0, -1) : ids;
}

test('health answers 200 and /v1/models lists the base model with vLLM fields', async () => {
  assert.equal(await target.api.health(), true);
  const cards = await target.api.models();
  const base = cards.find((c) => c.id === target.model);
  assert.ok(base, `${target.model} is not in /v1/models`);
  assert.equal(base.object, 'model');
  assert.equal(base.parent, null);
  assert.equal(typeof base.root, 'string');
  assert.ok(typeof base.max_model_len === 'number' && base.max_model_len > 0);
});

test('logprobs and token ids agree in length, and the token ids decode to the text', async () => {
  const res = await target.api.chat({
    model: target.model, messages: MESSAGES, max_tokens: 12, n: 2, seed: 1234, temperature: 1,
    logprobs: true, top_logprobs: 2, return_token_ids: true, skip_special_tokens: false,
  });
  assert.equal(res.object, 'chat.completion');
  assert.equal(res.model, target.model);
  assert.equal(res.choices.length, 2);
  const prompt = res.prompt_token_ids;
  assert.ok(Array.isArray(prompt) && prompt.length > 0 && prompt.every(Number.isInteger), 'prompt_token_ids are returned');
  assert.equal(res.usage.prompt_tokens, prompt.length);
  const promptText = await target.api.detokenize(prompt, target.model);
  assert.ok(promptText.includes('What is 3 times 4?'), `the prompt ids decode to the rendered chat: ${promptText}`);

  let completion = 0;
  for (const [i, choice] of res.choices.entries()) {
    assert.equal(choice.index, i);
    const ids = choice.token_ids;
    assert.ok(Array.isArray(ids) && ids.length >= 1 && ids.length <= 12 && ids.every(Number.isInteger));
    const content = choice.logprobs?.content;
    assert.ok(content, 'logprobs.content is returned');
    assert.equal(content.length, ids.length, 'one logprob entry per token id');
    for (const entry of content) {
      assert.ok(Number.isFinite(entry.logprob) && entry.logprob <= 0, `logprob ${entry.logprob}`);
      assert.equal(entry.top_logprobs.length, 2);
      for (const top of entry.top_logprobs) assert.ok(top.logprob <= 0);
    }
    assert.ok(['stop', 'length'].includes(choice.finish_reason ?? ''), `finish_reason ${choice.finish_reason}`);
    if (choice.finish_reason === 'length') assert.equal(ids.length, 12);
    assert.equal(await target.api.detokenize(textIds(choice), target.model), choice.message.content);
    completion += ids.length;
  }
  assert.equal(res.usage.completion_tokens, completion);
  assert.equal(res.usage.total_tokens, prompt.length + completion);
});

test('the sampled token is the first of its top_logprobs, with the same logprob (vLLM order)', async () => {
  const res = await target.api.chat({
    model: target.model, messages: MESSAGES, max_tokens: 6, seed: 7, logprobs: true, top_logprobs: 3, return_token_ids: true,
  });
  for (const entry of res.choices[0]!.logprobs!.content!) {
    assert.equal(entry.top_logprobs[0]!.token, entry.token);
    assert.equal(entry.top_logprobs[0]!.logprob, entry.logprob);
  }
});

test('return_tokens_as_token_ids writes token_id:<id> for each sampled token', async () => {
  const res = await target.api.chat({
    model: target.model, messages: MESSAGES, max_tokens: 6, seed: 3, logprobs: true, top_logprobs: 1,
    return_token_ids: true, return_tokens_as_token_ids: true,
  });
  const choice = res.choices[0]!;
  assert.deepEqual(choice.logprobs!.content!.map((e) => e.token), choice.token_ids!.map((id) => `token_id:${id}`));
  for (const e of choice.logprobs!.content!) assert.match(e.top_logprobs[0]!.token, /^token_id:\d+$/);
});

test('the same seed reproduces tokens and logprobs, and the n samples of one request differ', async () => {
  const request = { model: target.model, messages: MESSAGES, max_tokens: 12, n: 3, seed: 42, temperature: 1, logprobs: true, return_token_ids: true };
  const first = await target.api.chat(request);
  const again = await target.api.chat(request);
  for (const [i, choice] of first.choices.entries()) {
    const other = again.choices[i]!;
    assert.deepEqual(other.token_ids, choice.token_ids);
    choice.logprobs!.content!.forEach((e, k) => {
      assert.ok(Math.abs(e.logprob - other.logprobs!.content![k]!.logprob) <= target.logprobTolerance);
    });
  }
  const distinct = new Set(first.choices.map((c) => JSON.stringify(c.token_ids)));
  assert.ok(distinct.size > 1, 'three samples at temperature 1 should not all be identical');
});

test('temperature 0 is greedy and max_completion_tokens caps the length (finish_reason length)', async () => {
  const request = { model: target.model, messages: MESSAGES, temperature: 0, max_completion_tokens: 5, ignore_eos: true, return_token_ids: true };
  const a = await target.api.chat(request);
  const b = await target.api.chat({ ...request, seed: 99 });
  assert.deepEqual(a.choices[0]!.token_ids, b.choices[0]!.token_ids);
  assert.equal(a.choices[0]!.token_ids!.length, 5);
  assert.equal(a.choices[0]!.finish_reason, 'length');
  assert.equal(a.usage.completion_tokens, 5);
});

test('token ids are only returned when asked for', async () => {
  const res = await target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 3 });
  assert.ok(res.prompt_token_ids === null || res.prompt_token_ids === undefined);
  assert.ok(res.choices[0]!.token_ids === null || res.choices[0]!.token_ids === undefined);
  assert.equal(res.choices[0]!.logprobs, null);
});

test('an unknown model is a 404 NotFoundError naming the model', async () => {
  const err = await expectApiError(target.api.chat({ model: 'no-such-model', messages: MESSAGES, max_tokens: 2 }), 404);
  assert.equal(err.type, 'NotFoundError');
  assert.equal(err.message, 'The model `no-such-model` does not exist.');
  assert.equal(err.param, 'model');
});
