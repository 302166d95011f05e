/**
 * The demo's per-run configuration: configs/demo.yaml with the run's own id, topics, ClickHouse
 * database and directories, so a demo run never mixes with other runs on shared services.
 * Written to `<run dir>/config.yaml` and handed to every child with `-c`.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse, stringify } from 'yaml';
import { parseConfig, type TrajstoreConfig } from '../config/index.js';

export interface DemoRunSpec {
  /** configs/demo.yaml or another file of the same shape. */
  baseConfig: string;
  runId: string;
  seed: number;
  /** Directory holding the run's config, logs, adapters and checkpoints. */
  runDir: string;
  /** The policy server's `/v1` base URL. */
  apiBase: string;
  modelDir: string;
}

/** A run id that is also usable in topic names and, with `_` for `-`, as a database name. */
export function makeRunId(seed: number, now = new Date(), prefix = 'demo'): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `${prefix}-s${seed}-${stamp}`;
}

export function databaseFor(runId: string): string {
  return runId.replace(/[^a-zA-Z0-9_]/g, '_');
}

/** Builds, validates and writes the run's config; returns it with the file's path. */
export function writeRunConfig(spec: DemoRunSpec): { file: string; config: TrajstoreConfig } {
  const raw = (parse(readFileSync(spec.baseConfig, 'utf8')) ?? {}) as Record<string, Record<string, unknown>>;
  const dir = resolve(spec.runDir);
  const section = (name: string) => (raw[name] ??= {});
  Object.assign(section('run'), { id: spec.runId, seed: spec.seed });
  Object.assign(section('model'), { path: spec.modelDir });
  Object.assign(section('training'), { output_dir: join(dir, 'outputs') });
  Object.assign(section('checkpoint'), { dir: join(dir, 'checkpoints') });
  Object.assign(section('inference'), { backend: 'cpu', api_bases: [spec.apiBase] });
  Object.assign(section('storage'), { adapters: join(dir, 'adapters'), blobs: join(dir, 'blobs') });
  const topics = (section('kafka').topics ??= {}) as Record<string, string>;
  Object.assign(topics, {
    trajectories: `${spec.runId}.trajectories`,
    policy_versions: `${spec.runId}.policy.versions`,
    trainer_metrics: `${spec.runId}.trainer.metrics`,
    dead_letter: `${spec.runId}.dead-letter`,
  });
  Object.assign(section('clickhouse'), { database: databaseFor(spec.runId) });
  const text = stringify(raw);
  const file = join(dir, 'config.yaml');
  mkdirSync(dir, { recursive: true });
  // Validate before any child sees it: a bad demo.yaml fails here with the field named.
  const config = parseConfig(text, file, process.env);
  writeFileSync(file, `# written by npm run demo from ${spec.baseConfig}\n${text}`);
  return { file, config };
}
