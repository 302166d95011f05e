/**
 * How long a freshly published adapter takes to serve: from `POST /v1/load_lora_adapter` to the
 * first chat response computed with it, without restarting the server.
 *
 *   npx tsx src/inference/measure-adapter-swap.ts [--rounds 5]
 *
 * Without `TRAJSTORE_POLICY_BASE_URL` it starts the CPU policy server on the tiny model and writes
 * two test adapters; with it (plus TRAJSTORE_POLICY_ADAPTER_A/B) it measures that server, e.g. a vLLM.
 * Each round measures a new name (load) and a replacement under one name (load_inplace, what the
 * trainer does every version); prints each round and a JSON summary line (medians, ms).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureTinyModel, makeTestAdapter, startCpuPolicyServer, type CpuPolicyServer } from './cpu-policy-server.js';
import { policyApi, type ChatMessage } from './vllm-api.js';

const MESSAGES: ChatMessage[] = [{ role: 'user', content: 'What is 12 plus 7?' }];

async function main(): Promise<void> {
  const roundsArg = process.argv.indexOf('--rounds');
  const rounds = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 5;
  let server: CpuPolicyServer | undefined;
  let scratch: string | undefined;
  let baseUrl = process.env.TRAJSTORE_POLICY_BASE_URL;
  let paths: [string, string];
  if (baseUrl) {
    const a = process.env.TRAJSTORE_POLICY_ADAPTER_A;
    const b = process.env.TRAJSTORE_POLICY_ADAPTER_B;
    if (!a || !b) throw new Error('set TRAJSTORE_POLICY_ADAPTER_A and TRAJSTORE_POLICY_ADAPTER_B (paths the server can read)');
    paths = [a, b];
  } else {
    const modelDir = await ensureTinyModel();
    scratch = mkdtempSync(join(tmpdir(), 'trajstore-swap-'));
    paths = [makeTestAdapter(join(scratch, 'a'), { modelDir, seed: 1 }), makeTestAdapter(join(scratch, 'b'), { modelDir, seed: 2 })];
    server = await startCpuPolicyServer({ modelDir });
    baseUrl = server.baseUrl;
  }
  const api = policyApi(baseUrl);
  try {
    const cards = await api.models();
    const base = process.env.TRAJSTORE_POLICY_MODEL ?? cards.find((c) => !c.parent)!.id;
    await api.chat({ model: base, messages: MESSAGES, max_tokens: 1 }); // warm-up
    const tag = Math.random().toString(16).slice(2, 8);
    const fresh: number[][] = [];
    const inplace: number[][] = [];
    const swapName = `swap-inplace-${tag}`;
    await api.loadAdapter(swapName, paths[0]);
    for (let i = 0; i < rounds; i++) {
      const name = `swap-${tag}-${i}`;
      fresh.push(await timeSwap(() => api.loadAdapter(name, paths[i % 2]!), () => api.chat({ model: name, messages: MESSAGES, max_tokens: 1 })));
      inplace.push(await timeSwap(() => api.loadAdapter(swapName, paths[(i + 1) % 2]!, { loadInplace: true }),
        () => api.chat({ model: swapName, messages: MESSAGES, max_tokens: 1 })));
      console.log(`round ${i + 1}: new name load ${fmt(fresh[i]![0]!)} + first response ${fmt(fresh[i]![1]!)} = ${fmt(fresh[i]![2]!)}; ` +
        `in place load ${fmt(inplace[i]![0]!)} + first response ${fmt(inplace[i]![1]!)} = ${fmt(inplace[i]![2]!)}`);
      await api.unloadAdapter(name);
    }
    await api.unloadAdapter(swapName);
    const summary = {
      server: server ? 'cpu-policy-server (tiny model)' : baseUrl,
      rounds,
      new_name_ms: { load: median(fresh.map((r) => r[0]!)), first_response: median(fresh.map((r) => r[1]!)), total: median(fresh.map((r) => r[2]!)) },
      load_inplace_ms: { load: median(inplace.map((r) => r[0]!)), first_response: median(inplace.map((r) => r[1]!)), total: median(inplace.map((r) => r[2]!)) },
    };
    console.log(JSON.stringify(summary));
  } finally {
    await server?.stop();
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  }
}

async function timeSwap(load: () => Promise<unknown>, use: () => Promise<unknown>): Promise<number[]> {
  const t0 = performance.now();
  await load();
  const t1 = performance.now();
  await use();
  const t2 = performance.now();
  return [t1 - t0, t2 - t1, t2 - t0];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const m = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return Math.round(m * 10) / 10;
}

function fmt(ms: number): string {
  return `${ms.toFixed(1)} ms`;
}

main().catch((err: unknown) => {
  console.error(err instanceof Error && 'describe' in err && typeof err.describe === 'function' ? err.describe() : err);
  process.exit(1);
});
