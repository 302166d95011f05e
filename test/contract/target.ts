/**
 * What the contract tests run against: a real vLLM, or the CPU policy server started here.
 *
 * Point the suite at any vLLM-compatible server with
 *
 * | Variable | Meaning |
 * | --- | --- |
 * | `TRAJSTORE_POLICY_BASE_URL` | e.g. `http://gpu-host:8000` (started with `--enable-lora`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) |
 * | `TRAJSTORE_POLICY_MODEL` | the base model's served name (default: the first card without a parent) |
 * | `TRAJSTORE_POLICY_ADAPTER_A`, `TRAJSTORE_POLICY_ADAPTER_B` | two different PEFT adapters, as paths *the server* can read |
 * | `TRAJSTORE_POLICY_ADAPTER_HIGH_RANK` | optional: an adapter whose rank is above the server's `--max-lora-rank` |
 * | `TRAJSTORE_POLICY_QUEUE_LIMIT` | optional: the server's `--max-num-queued-reqs`, for the queue-full test |
 *
 * Without `TRAJSTORE_POLICY_BASE_URL` each test file starts the CPU policy server on the tiny
 * model and writes its test adapters (random LoRA weights, fixed seeds) with PEFT.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureEngineVenv, ensureTinyModel, makeTestAdapter, startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { PolicyApiError, policyApi, type ErrorBody, type PolicyApi } from '../../src/inference/vllm-api.js';

export interface ContractTarget {
  api: PolicyApi;
  model: string;
  /** True when the suite runs against a server it did not start. */
  external: boolean;
  adapterA?: string;
  adapterB?: string;
  highRankAdapter?: string;
  /** Sequences the server queues or runs before answering 503, when known. */
  queueLimit?: number;
  /** Tolerance for comparing logprobs of the same tokens across requests (GPU batching varies a little). */
  logprobTolerance: number;
  close(): Promise<void>;
}

export interface TargetOptions {
  adapters?: boolean;
  maxQueue?: number;
}

export async function contractTarget(options: TargetOptions = {}): Promise<ContractTarget> {
  const env = process.env;
  const baseUrl = env.TRAJSTORE_POLICY_BASE_URL;
  if (baseUrl) {
    const api = policyApi(baseUrl);
    const cards = await api.models();
    const model = env.TRAJSTORE_POLICY_MODEL ?? cards.find((c) => !c.parent)?.id;
    assert.ok(model, `no base model in ${baseUrl}/v1/models; set TRAJSTORE_POLICY_MODEL`);
    return {
      api,
      model,
      external: true,
      adapterA: env.TRAJSTORE_POLICY_ADAPTER_A,
      adapterB: env.TRAJSTORE_POLICY_ADAPTER_B,
      highRankAdapter: env.TRAJSTORE_POLICY_ADAPTER_HIGH_RANK,
      queueLimit: env.TRAJSTORE_POLICY_QUEUE_LIMIT ? Number(env.TRAJSTORE_POLICY_QUEUE_LIMIT) : undefined,
      logprobTolerance: 5e-2,
      close: async () => undefined,
    };
  }

  await ensureEngineVenv({ install: true });
  const modelDir = await ensureTinyModel();
  const scratch = mkdtempSync(join(tmpdir(), 'trajstore-contract-'));
  let adapterA: string | undefined;
  let adapterB: string | undefined;
  let highRankAdapter: string | undefined;
  if (options.adapters) {
    adapterA = makeTestAdapter(join(scratch, 'adapter-a'), { modelDir, seed: 1, rank: 8 });
    adapterB = makeTestAdapter(join(scratch, 'adapter-b'), { modelDir, seed: 2, rank: 8 });
    highRankAdapter = makeTestAdapter(join(scratch, 'adapter-rank32'), { modelDir, seed: 3, rank: 32 });
  }
  let server: CpuPolicyServer;
  try {
    server = await startCpuPolicyServer({ modelDir, servedModelName: 'tiny', maxLoraRank: 16, maxQueue: options.maxQueue ?? 64 });
  } catch (err) {
    rmSync(scratch, { recursive: true, force: true });
    throw err;
  }
  return {
    api: policyApi(server.baseUrl),
    model: server.model,
    external: false,
    adapterA,
    adapterB,
    highRankAdapter,
    queueLimit: options.maxQueue,
    logprobTolerance: 1e-5,
    async close() {
      await server.stop();
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** Awaits a call that must fail with `status`; returns vLLM's error body after checking its shape. */
export async function expectApiError(call: Promise<unknown>, status: number): Promise<ErrorBody['error']> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof PolicyApiError, `expected an HTTP error, got ${String(err)}`);
    assert.equal(err.status, status, `expected HTTP ${status}, got ${err.status}: ${err.text}`);
    assert.ok(err.body, `the ${status} answer has no {"error": {...}} body: ${err.text}`);
    const e = err.body.error;
    assert.equal(typeof e.message, 'string');
    assert.equal(typeof e.type, 'string');
    assert.equal(e.code, status);
    assert.ok('param' in e, 'the error body has no "param" field');
    return e;
  }
  assert.fail(`expected HTTP ${status}, but the call succeeded`);
}

export const MESSAGES = [
  { role: 'system' as const, content: 'You are a helpful assistant.' },
  { role: 'user' as const, content: 'What is 3 times 4?' },
];
