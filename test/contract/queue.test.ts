/**
 * A full queue answers at once with vLLM's 503 instead of growing without limit (vLLM:
 * `--max-num-queued-reqs`; a request with n samples counts n), and the server keeps answering
 * `/health` while it generates.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { contractTarget, expectApiError, MESSAGES, type ContractTarget } from './target.js';

const LIMIT = 3;
let target: ContractTarget;
before(async () => {
  target = await contractTarget({ maxQueue: LIMIT });
}, { timeout: 900_000 });
after(async () => target?.close());

test('a request needing more sequences than the queue holds is refused with a 503 error body', async (t) => {
  if (target.queueLimit === undefined) {
    t.skip('set TRAJSTORE_POLICY_QUEUE_LIMIT to the server\'s --max-num-queued-reqs to run this against it');
    return;
  }
  const err = await expectApiError(target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 2, n: target.queueLimit + 1 }), 503);
  assert.match(err.type, /ServiceUnavailable/);
  // the refusal leaves nothing behind: a request that fits is served
  const ok = await target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 2, n: target.queueLimit });
  assert.equal(ok.choices.length, target.queueLimit);
});

test('while the queue is full, new requests get 503 at once and /health still answers', async (t) => {
  if (target.external) {
    t.skip('needs a server this suite can fill; covered against the CPU policy server');
    return;
  }
  const long = target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 1500, ignore_eos: true, n: LIMIT, seed: 1 });
  let finished = false;
  void long.then(() => {
    finished = true;
  }, () => {
    finished = true;
  });
  await sleep(300); // let the long request be admitted first
  // once the long request holds every slot, probes are refused; wait for the first refusal
  const deadline = Date.now() + 30_000;
  let refusedAfterMs: number | undefined;
  while (Date.now() < deadline && refusedAfterMs === undefined) {
    const t0 = Date.now();
    try {
      await target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 1, n: 1 });
    } catch (err) {
      await expectApiError(Promise.reject(err), 503);
      refusedAfterMs = Date.now() - t0;
    }
  }
  assert.ok(refusedAfterMs !== undefined, 'no request was refused while the queue was full');
  assert.ok(refusedAfterMs < 1_000, `the refusal took ${refusedAfterMs} ms; it should not wait for the queue`);
  const t0 = Date.now();
  assert.equal(await target.api.health(), true);
  const healthMs = Date.now() - t0;
  assert.equal(finished, false, 'the long request ended before the checks; make it longer');
  assert.ok(healthMs < 1_000, `/health took ${healthMs} ms during generation: the event loop is blocked`);
  const res = await long;
  assert.equal(res.choices.length, LIMIT);
  const after = await target.api.chat({ model: target.model, messages: MESSAGES, max_tokens: 1, n: LIMIT });
  assert.equal(after.choices.length, LIMIT, 'capacity is given back after the long request');
});
