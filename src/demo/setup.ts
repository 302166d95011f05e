/**
 * What the demo needs before it starts anything: the local Kafka and ClickHouse, the engine's
 * virtual environment, and the demo's base model. Each step is idempotent (seconds when done
 * already) and prints what it does, because a first run installs for minutes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ensureEngineVenv } from '../inference/cpu-policy-server.js';
import { projectRoot } from '../services/paths.js';
import { DemoError } from './errors.js';

export type Say = (line: string) => void;

/** `trajstore services up`, its output streamed: a no-op when both servers run. */
export async function servicesUp(say: Say): Promise<void> {
  const root = projectRoot();
  say('services: trajstore services up (installs Kafka and ClickHouse on first use)');
  const child = spawn(process.execPath, [join(root, 'bin', 'trajstore.mjs'), 'services', 'up'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const take = (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) {
      tail.push(line);
      if (tail.length > 30) tail.shift();
      say(`  ${line}`);
    }
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  const code = await new Promise<number>((res) => child.once('exit', (c) => res(c ?? 1)));
  if (code !== 0) {
    throw new DemoError('TRAJ_E_DEMO_SETUP', `trajstore services up failed (exit ${code})`, {
      hint: 'read its output above; `npx trajstore services status` shows each service; the README\'s Troubleshooting section lists the usual causes',
    });
  }
}

/** engine/.venv with the pinned packages (bash engine/setup.sh when it cannot run the engine). */
export async function engineVenv(say: Say): Promise<string> {
  say('engine: checking engine/.venv (bash engine/setup.sh installs PyTorch, transformers, PEFT on first use; minutes)');
  try {
    return await ensureEngineVenv({ install: true });
  } catch (err) {
    throw new DemoError('TRAJ_E_DEMO_SETUP', `the engine's virtual environment could not be set up: ${(err as Error).message}`, {
      cause: err, hint: 'run `bash engine/setup.sh` by hand and read its output',
    });
  }
}

/**
 * The demo's base model (src/demo/make_demo_model.py: the engine's tiny model with a sharper
 * output head), made once per output scale and cached under .trajstore/models.
 */
export function demoModel(python: string, dir: string, outputScale: number, say: Say): string {
  const out = resolve(dir);
  if (existsSync(join(out, 'config.json'))) return out;
  say(`model: making the demo model in ${out} (tiny Qwen3-style, output scale ${outputScale})`);
  const root = projectRoot();
  const run = spawnSync(python, [join(root, 'src', 'demo', 'make_demo_model.py'), out, '--seed', '0', '--output-scale', String(outputScale)], {
    cwd: root, encoding: 'utf8', env: { ...process.env, PYTHONPATH: join(root, 'engine') },
  });
  if (run.status !== 0) {
    throw new DemoError('TRAJ_E_DEMO_SETUP', `could not make the demo model in ${out} (exit ${run.status}):\n${(run.stderr ?? '').split('\n').slice(-15).join('\n')}`, {
      hint: 'run `bash engine/setup.sh`, then the command in src/demo/make_demo_model.py by hand',
    });
  }
  say(`  ${run.stdout.trim().split('\n').pop()}`);
  return out;
}

/** What the vision demo's model is made from: the prompt the browser environment sends for read_digit. */
export interface VisionModelSpec {
  outputScale: number;
  system: string;
  instruction: string;
  /** Steps of the answer-format warm start (make_demo_model.py --warm-steps). Default 40. */
  warmSteps?: number;
}

/**
 * The vision demo's base model (make_demo_model.py --vl: the tiny Qwen3-VL model, output head
 * sharpened, warmed up to the answer format), cached under .trajstore/models. Its warm start
 * saw the environment's own prompt, so a directory made for another prompt is made again
 * (OUT/demo_model.json records what made it).
 */
export function demoVisionModel(python: string, dir: string, spec: VisionModelSpec, say: Say): string {
  const out = resolve(dir);
  const warmSteps = spec.warmSteps ?? 40;
  const wanted = { system: spec.system, instruction: spec.instruction, output_scale: spec.outputScale, warm_steps: warmSteps, vl: true };
  const made = readMadeWith(join(out, 'demo_model.json'));
  if (existsSync(join(out, 'config.json')) && made && Object.entries(wanted).every(([k, v]) => made[k] === v)) return out;
  say(`model: making the vision demo model in ${out} (tiny Qwen3-VL, output scale ${spec.outputScale}, answer-format warm start; ~30 s)`);
  const root = projectRoot();
  const args = [join(root, 'src', 'demo', 'make_demo_model.py'), out, '--vl', '--seed', '0', '--output-scale', String(spec.outputScale),
    '--system', spec.system, '--instruction', spec.instruction, '--warm-steps', String(warmSteps)];
  const run = spawnSync(python, args, { cwd: root, encoding: 'utf8', env: { ...process.env, PYTHONPATH: join(root, 'engine'), HF_HUB_OFFLINE: '1' } });
  if (run.status !== 0) {
    throw new DemoError('TRAJ_E_DEMO_SETUP', `could not make the vision demo model in ${out} (exit ${run.status}):\n${(run.stderr ?? '').split('\n').slice(-15).join('\n')}`, {
      hint: 'run `bash engine/setup.sh`, then the --vl command in src/demo/make_demo_model.py by hand',
    });
  }
  say(`  ${run.stdout.trim().split('\n').pop()}`);
  return out;
}

function readMadeWith(file: string): Record<string, unknown> | undefined {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { made_with?: Record<string, unknown> }).made_with;
  } catch {
    return undefined;
  }
}
