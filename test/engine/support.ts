/** Shared by the engine tests: the venv, a tiny model in a scratch directory, random batches. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packBatch, type Batch, type SequenceInput } from '../../src/engine/batch-file.js';
import { makeTinyModel } from '../../src/engine/client.js';
import { ensureEngineVenv } from '../../src/inference/cpu-policy-server.js';
import { mulberry32 as rng } from '../../src/util/random.js';

/** engine/.venv (made by engine/setup.sh when missing) and a fresh tiny model; returns the scratch dir and model dir. */
export async function setUpEngineScratch(name: string): Promise<{ scratch: string; modelDir: string }> {
  await ensureEngineVenv({ install: true });
  const scratch = mkdtempSync(join(tmpdir(), `trajstore-${name}-`));
  const modelDir = makeTinyModel(join(scratch, 'tiny'), { seed: 0 });
  return { scratch, modelDir };
}

/** Seeded PRNG (mulberry32): the same data on every run. */
export { mulberry32 as rng } from '../../src/util/random.js';

/**
 * `count` sequences of random tokens below `vocab`: a prompt (not trained) then a completion
 * (trained), behavior logprobs around -6 (the tiny model's are near -ln 512), version 0.
 */
export function randomBatch(options: { seed: number; count: number; minLen: number; maxLen: number; vocab?: number; advantage?: (i: number) => number }): Batch {
  const rand = rng(options.seed);
  const vocab = options.vocab ?? 500;
  const sequences: SequenceInput[] = [];
  for (let i = 0; i < options.count; i++) {
    const len = options.minLen + Math.floor(rand() * (options.maxLen - options.minLen + 1));
    const prompt = 1 + Math.floor(rand() * (len / 2));
    sequences.push({
      tokens: Array.from({ length: len }, () => Math.floor(rand() * vocab)),
      lossMask: Array.from({ length: len }, (_, t) => t >= prompt),
      behaviorLogprobs: Array.from({ length: len }, () => -5.5 - rand()),
      behaviorVersions: 0,
      advantage: options.advantage ? options.advantage(i) : rand() * 2 - 1,
    });
  }
  return packBatch(sequences);
}
