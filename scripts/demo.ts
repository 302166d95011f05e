/**
 * `npm run demo [-- --minutes 10 --seed 0 --config configs/demo.yaml]`: the main job on one
 * machine (src/demo/run.ts). The last line is `RESULT {json}`: success rate per policy version.
 *
 * `npm run demo -- --vision`: the vision demo (configs/demo-vision.yaml, 15 minutes, output
 * scale 12): the tiny VL model learns to read a digit off a page chromium renders.
 */
import { parseArgs } from 'node:util';
import { resultLine, runDemo } from '../src/demo/run.js';
import { TrajstoreError } from '../src/util/errors.js';

const { values } = parseArgs({
  options: {
    vision: { type: 'boolean' },
    minutes: { type: 'string', default: process.env.DEMO_MINUTES },
    seed: { type: 'string', default: process.env.DEMO_SEED ?? '0' },
    config: { type: 'string', short: 'c' },
    'status-every': { type: 'string', default: '10' },
    'output-scale': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});

if (values.help) {
  console.log('npm run demo -- [--vision] [--minutes 10 (vision: 15)] [--seed 0] [--config configs/demo.yaml (vision: configs/demo-vision.yaml)] [--status-every 10] [--output-scale 8 (vision: 12)]');
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

// --vision only changes the defaults; a flag given explicitly wins.
const defaults = values.vision
  ? { config: 'configs/demo-vision.yaml', minutes: '15', outputScale: '12' }
  : { config: 'configs/demo.yaml', minutes: '10', outputScale: '8' };

try {
  const result = await runDemo({
    config: values.config ?? defaults.config,
    minutes: number('minutes', values.minutes ?? defaults.minutes, 0.1),
    seed: Math.trunc(number('seed', values.seed!, 0)),
    statusEveryS: number('status-every', values['status-every']!, 1),
    outputScale: number('output-scale', values['output-scale'] ?? defaults.outputScale, 0.1),
  });
  console.log(resultLine(result));
  process.exit(0);
} catch (err) {
  console.error(err instanceof TrajstoreError ? `error ${err.describe()}` : err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(err instanceof TrajstoreError ? 2 : 1);
}
