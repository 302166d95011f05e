/**
 * The policy client's failure handling against real HTTP: a hung server times out, a refused
 * port is unreachable, a 4xx is not retried, a 503 is retried with backoff and then succeeds
 * (through a small proxy in front of the real CPU policy server).
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { freePort, startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { ProducerError } from '../../src/producers/errors.js';
import { fixedPolicy, PolicyClient } from '../../src/producers/policy-client.js';
import { createLogger } from '../../src/util/logger.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });
const SAMPLING = { temperature: 1, top_p: 1, max_tokens: 3 };
const MESSAGES = [{ role: 'user' as const, content: 'Reply with the digit 3.' }];

async function listen(server: Server): Promise<string> {
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/v1`;
}

describe('policy client', () => {
  let cpu: CpuPolicyServer;
  const servers: Server[] = [];
  before(async () => {
    cpu = await startCpuPolicyServer({ logger });
  });
  after(async () => {
    for (const s of servers) s.close();
    await cpu?.stop();
  });

  test('a server that never answers ends in TRAJ_E_POLICY_TIMEOUT after the retries', async () => {
    let requests = 0;
    const hung = createServer(() => void requests++); // accepts, never answers
    servers.push(hung);
    const client = new PolicyClient({ apiBases: [await listen(hung)], policy: fixedPolicy('tiny'), timeoutMs: 300, maxRetries: 1, backoffMs: 10, logger });
    await assert.rejects(client.complete(MESSAGES, SAMPLING), (err: unknown) =>
      err instanceof ProducerError && err.code === 'TRAJ_E_POLICY_TIMEOUT' && err.retriable && /request_timeout_s/.test(err.hint!));
    assert.equal(requests, 2, 'one attempt plus one retry');
  });

  test('a closed port is TRAJ_E_POLICY_UNREACHABLE, naming the address to fix', async () => {
    const base = `http://127.0.0.1:${await freePort()}/v1`;
    const client = new PolicyClient({ apiBases: [base], policy: fixedPolicy('tiny'), maxRetries: 2, backoffMs: 5, logger });
    await assert.rejects(client.complete(MESSAGES, SAMPLING), (err: unknown) =>
      err instanceof ProducerError && err.code === 'TRAJ_E_POLICY_UNREACHABLE' && /after 3 attempts/.test(err.message) && err.hint!.includes(base.replace(/\/v1$/, '')));
  });

  test('an unknown model is TRAJ_E_POLICY_REJECTED at once (4xx is not retried)', async () => {
    const client = new PolicyClient({ apiBases: [`${cpu.baseUrl}/v1`], policy: fixedPolicy('no-such-adapter', 3), maxRetries: 3, backoffMs: 1_000, logger });
    const started = Date.now();
    await assert.rejects(client.complete(MESSAGES, SAMPLING), (err: unknown) =>
      err instanceof ProducerError && err.code === 'TRAJ_E_POLICY_REJECTED' && /does not exist/.test(err.message) && /no-such-adapter/.test(err.hint!));
    assert.ok(Date.now() - started < 1_000, 'no backoff happened');
  });

  test('a 503 is retried, and the answer carries token ids, logprobs and the version asked for', async () => {
    let seen = 0;
    const proxy = createServer(async (req, res) => {
      let body = '';
      for await (const c of req) body += c;
      if (seen++ === 0) {
        res.writeHead(503, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { message: 'queue full', type: 'ServiceUnavailable', param: null, code: 503 } }));
      }
      const upstream = await fetch(`${cpu.baseUrl}${req.url}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      res.writeHead(upstream.status, { 'content-type': 'application/json' });
      res.end(await upstream.text());
    });
    servers.push(proxy);
    const client = new PolicyClient({ apiBases: [await listen(proxy)], policy: fixedPolicy('tiny', 0), maxRetries: 2, backoffMs: 10, logger });
    const c = await client.complete(MESSAGES, { ...SAMPLING, seed: 5 });
    assert.equal(c.attempts, 2);
    assert.equal(c.policyVersion, 0);
    assert.equal(c.model, 'tiny');
    assert.ok(c.promptTokenIds.length > 5);
    assert.equal(c.completionTokenIds.length, c.completionLogprobs.length);
    assert.ok(c.completionTokenIds.length >= 1 && c.completionTokenIds.length <= 3);
    assert.ok(c.completionLogprobs.every((lp) => lp <= 0));
  });
});
