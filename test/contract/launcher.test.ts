/**
 * The CPU policy server's launcher: typed errors that carry the server's own words, and a stop()
 * that leaves no process behind. (Not part of the vLLM contract: always runs on this machine.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PolicyServerError } from '../../src/inference/errors.js';
import { ensureEngineVenv, ensureTinyModel, startCpuPolicyServer } from '../../src/inference/cpu-policy-server.js';

let scratch: string;
before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'trajstore-launcher-'));
  await ensureEngineVenv({ install: true });
}, { timeout: 900_000 });
after(() => rmSync(scratch, { recursive: true, force: true }));

async function rejection(promise: Promise<unknown>): Promise<PolicyServerError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof PolicyServerError, `expected a PolicyServerError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the launcher to fail');
}

test('a missing interpreter is TRAJ_E_POLICY_SERVER_PYTHON_MISSING with the setup command as hint', async () => {
  const err = await rejection(startCpuPolicyServer({ python: join(scratch, 'no-python'), modelDir: scratch }));
  assert.equal(err.code, 'TRAJ_E_POLICY_SERVER_PYTHON_MISSING');
  assert.match(err.hint ?? '', /engine\/setup\.sh/);
  assert.equal(err.retriable, false);
});

test('a directory that is not a model is TRAJ_E_POLICY_SERVER_MODEL', async () => {
  const err = await rejection(startCpuPolicyServer({ modelDir: join(scratch, 'nothing-here') }));
  assert.equal(err.code, 'TRAJ_E_POLICY_SERVER_MODEL');
  assert.match(err.message, /no config\.json/);
});

test('a server that dies while starting is TRAJ_E_POLICY_SERVER_START, with its stderr in the message', async () => {
  const broken = join(scratch, 'broken-model');
  const tiny = await ensureTinyModel();
  rmSync(broken, { recursive: true, force: true });
  // a real tokenizer but a config transformers cannot build a model from
  const { cpSync } = await import('node:fs');
  cpSync(tiny, broken, { recursive: true });
  writeFileSync(join(broken, 'config.json'), JSON.stringify({ model_type: 'no-such-architecture' }));
  const err = await rejection(startCpuPolicyServer({ modelDir: broken, startupTimeoutMs: 120_000 }));
  assert.equal(err.code, 'TRAJ_E_POLICY_SERVER_START');
  assert.ok(err.stderr && err.stderr.length > 0, 'the error carries the server stderr');
  assert.match(err.message, /TRAJ_E_ENGINE_MODEL_LOAD|no-such-architecture/);
});

test('stop() ends the server process and is safe to call twice', async () => {
  const server = await startCpuPolicyServer();
  assert.match(server.baseUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(`${server.baseUrl}/health`);
  assert.equal(res.status, 200);
  await Promise.all([server.stop(), server.stop()]);
  await sleep(100);
  assert.throws(() => process.kill(server.pid, 0), 'the process is gone');
  await assert.rejects(fetch(`${server.baseUrl}/health`));
});
