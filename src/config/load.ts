import { readFileSync } from 'node:fs';
import { parseDocument, parse as parseYaml, isMap } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../util/errors.js';
import { TrajstoreConfigSchema, type TrajstoreConfig } from './schema.js';

/** Environment variables that override config fields: TRAJSTORE__SECTION__KEY=value. */
export const ENV_PREFIX = 'TRAJSTORE__';

/**
 * Environment variables the seeds' users already set, mapped onto config fields so an existing
 * `.env` keeps working. VLLM_API_BASE names a single server.
 */
const WELL_KNOWN_ENV: Record<string, { path: string[]; list?: boolean }> = {
  VLLM_API_BASE: { path: ['inference', 'api_bases'], list: true },
  MODEL_NAME: { path: ['model', 'name'] },
  LEARNING_RATE: { path: ['training', 'learning_rate'] },
};

type Issue = { path: string; message: string };

/** Loads a YAML config file, applies environment overrides, validates, fills defaults. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): TrajstoreConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [{ path: '', message: `cannot read file: ${(err as Error).message}` }], 'check the path');
  }
  return parseConfig(text, file, env);
}

/** Parses YAML text (named `source` in errors), applies environment overrides, validates. */
export function parseConfig(text: string, source: string, env: NodeJS.ProcessEnv = process.env): TrajstoreConfig {
  const raw = parseYamlStrict(text, source);
  const overridden = applyEnvOverrides(raw, env, source);
  const result = TrajstoreConfigSchema.safeParse(overridden);
  if (result.success) return result.data;
  const fromEnv = envOverridePaths(env);
  throw new ConfigError(
    source,
    result.error.issues.map(toIssue).map((issue) => {
      const variable = [...fromEnv].find(([path]) => issue.path === path || issue.path.startsWith(`${path}.`))?.[1];
      return variable ? { ...issue, message: `${issue.message} (set by environment variable ${variable})` } : issue;
    }),
  );
}

/** Dotted config paths that environment variables override, mapped to the variable's name. */
function envOverridePaths(env: NodeJS.ProcessEnv): Map<string, string> {
  const paths = new Map<string, string>();
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) continue;
    if (name.startsWith(ENV_PREFIX)) paths.set(name.slice(ENV_PREFIX.length).toLowerCase().split('__').filter(Boolean).join('.'), name);
    else if (name in WELL_KNOWN_ENV && value !== '') paths.set(WELL_KNOWN_ENV[name]!.path.join('.'), name);
  }
  return paths;
}

function parseYamlStrict(text: string, source: string): Record<string, unknown> {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => ({ path: `line ${e.linePos?.[0]?.line ?? '?'}`, message: e.message.split('\n')[0] ?? e.message })),
      'the file is not valid YAML',
    );
  }
  if (doc.contents === null) return {};
  if (!isMap(doc.contents)) throw new ConfigError(source, [{ path: '', message: 'expected a mapping of sections at the top level' }]);
  return doc.toJS() as Record<string, unknown>;
}

/**
 * Applies TRAJSTORE__A__B=value overrides (keys lower-cased; the value parsed as a YAML scalar or
 * flow collection, so `[a, b]` is a list and `3` a number) and the well-known variables.
 */
export function applyEnvOverrides(raw: Record<string, unknown>, env: NodeJS.ProcessEnv, source = 'config'): Record<string, unknown> {
  const result = structuredClone(raw);
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) continue;
    if (name.startsWith(ENV_PREFIX)) {
      const path = name.slice(ENV_PREFIX.length).toLowerCase().split('__').filter(Boolean);
      if (path.length === 0) continue;
      setPath(result, path, parseEnvValue(name, value, source));
    } else if (name in WELL_KNOWN_ENV && value !== '') {
      const { path, list } = WELL_KNOWN_ENV[name]!;
      setPath(result, path, list ? [value] : parseEnvValue(name, value, source));
    }
  }
  return result;
}

function parseEnvValue(name: string, value: string, source: string): unknown {
  try {
    return parseYaml(value);
  } catch (err) {
    throw new ConfigError(`${source} (environment)`, [{ path: name, message: `not a YAML value: ${(err as Error).message}` }]);
  }
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

function toIssue(issue: z.core.$ZodIssue): Issue {
  const base = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys;
    return {
      path: keys.length === 1 ? [base, keys[0]].filter(Boolean).join('.') : base,
      message: `unknown field${keys.length > 1 ? `s ${keys.join(', ')}` : ''} (check the spelling; see configs/cua_grpo.yaml for every field)`,
    };
  }
  return { path: base, message: issue.message };
}
