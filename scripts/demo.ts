/**
 * `npm run demo [-- --minutes 10 --seed 0 --config configs/demo.yaml]`: the main job on one
 * machine (src/demo/run.ts). The last line is `RESULT {json}`: success rate per policy version.
 */
import { parseArgs } from 'node:util';
import { resultLine, runDemo } from '../src/demo/run.js';
import { TrajstoreError } from '../src/util/errors.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: process.env.DEMO_MINUTES ?? '10' },
    seed: { type: 'string', default: process.env.DEMO_SEED ?? '0' },
    config: { type: 'string', short: 'c', default: 'configs/demo.yaml' },
    'status-every': { type: 'string', default: '10' },
    'output-scale': { type: 'string', default: '8' },
    help: { type: 'boolean', short: 'h' },
  },
});

if (values.help) {
  console.log('npm run demo -- [--minutes 10] [--seed 0] [--config configs/demo.yaml] [--status-every 10] [--output-scale 8]');
  process.exit(0);
}

const number = (name: string, raw: string, min: number) => {
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min) {
    console.error(`error: --${name} must be a number >= ${min}, got ${raw}`);
    process.exit(2);
  }
  return n;
};

try {
  const result = await runDemo({
    config: values.config!,
    minutes: number('minutes', values.minutes!, 0.1),
    seed: Math.trunc(number('seed', values.seed!, 0)),
    statusEveryS: number('status-every', values['status-every']!, 1),
    outputScale: number('output-scale', values['output-scale']!, 0.1),
  });
  console.log(resultLine(result));
  process.exit(0);
} catch (err) {
  console.error(err instanceof TrajstoreError ? `error ${err.describe()}` : err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(err instanceof TrajstoreError ? 2 : 1);
}
