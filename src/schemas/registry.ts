import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import avro from 'avsc';
import { SchemaError, SchemaErrorCode } from './errors.js';
import { hardenedTypeHook } from './avsc-types.js';
import { fingerprintHex, parsingCanonicalForm, schemaFingerprint } from './fingerprint.js';

/**
 * The schema directory: one folder per schema family, one file per version, side by side
 * (`trajectory_event/v1.avsc`, `trajectory_event/v2.avsc`, ...). Every version ever shipped
 * stays, so any message ever written can be decoded; the newest version is the reader shape
 * every decoder returns and the writer every encoder uses.
 */

/** The folder this module lives in: the project's shipped schemas. */
export const SCHEMA_DIR = fileURLToPath(new URL('.', import.meta.url));

/**
 * avsc options for every compiled type. Unions of records are wrapped (`{ Turn: {...} }`, the
 * shape of Avro's JSON encoding, which is what TypeScript can narrow with `'Turn' in payload`);
 * `["null", X]` unions are plain `X | null`. Records decode to plain-shaped objects without
 * avsc's helper methods. Arrays, maps, ints and booleans are the faster, hostile-input-safe
 * types of avsc-types.ts.
 */
export const AVSC_OPTIONS = { wrapUnions: 'auto', omitRecordMethods: true, typeHook: hardenedTypeHook } as const;

export interface SchemaVersion {
  /** Family (folder) name, e.g. `trajectory_event`. */
  readonly name: string;
  readonly version: number;
  readonly file: string;
  /** The .avsc as parsed JSON, attributes included. */
  readonly json: unknown;
  /** Parsing Canonical Form: what the fingerprint is computed over. */
  readonly canonical: string;
  /** 8 bytes, wire order. */
  readonly fingerprint: Buffer;
  /** Hex of the wire bytes: the fingerprint's name everywhere in trajstore. */
  readonly fingerprintHex: string;
  /**
   * SHA-256 of the schema with every attribute (docs, defaults, aliases, logical types) and
   * sorted object keys: catches in-place edits the fingerprint cannot see, e.g. a changed default.
   */
  readonly contentSha256: string;
  readonly type: avro.Type;
}

export interface SchemaFamily {
  readonly name: string;
  /** Ascending by version; versions are 1..n without gaps. */
  readonly versions: readonly SchemaVersion[];
  readonly latest: SchemaVersion;
}

export interface SchemaProblem {
  code: (typeof SchemaErrorCode)[keyof typeof SchemaErrorCode];
  schema: string | null;
  version: number | null;
  message: string;
}

export interface SchemaScan {
  dir: string;
  families: Map<string, SchemaFamily>;
  problems: SchemaProblem[];
}

const VERSION_FILE = /^v([1-9][0-9]*)\.avsc$/;
const FAMILY_DIR = /^[a-z][a-z0-9_]*$/;

/** JSON with object keys sorted at every level (arrays keep their order, which Avro gives meaning). */
export function stableStringify(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableStringify(obj[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Loads one .avsc file: parse, compile with avsc, fingerprint. Throws SchemaError. */
export function loadSchemaFile(name: string, version: number, file: string): SchemaVersion {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (cause) {
    throw new SchemaError(SchemaErrorCode.INVALID, `${name} v${version}: ${file} is not valid JSON: ${(cause as Error).message}`, {
      schemaName: name,
      version,
      cause,
    });
  }
  let type: avro.Type;
  try {
    // A fresh options object each time: avsc stores its registry of named types in it.
    type = avro.Type.forSchema(json as avro.Schema, { ...AVSC_OPTIONS } as never);
  } catch (cause) {
    throw new SchemaError(SchemaErrorCode.INVALID, `${name} v${version}: not a valid Avro schema: ${(cause as Error).message}`, {
      schemaName: name,
      version,
      cause,
    });
  }
  const fingerprint = schemaFingerprint(json);
  return {
    name,
    version,
    file,
    json,
    canonical: parsingCanonicalForm(json),
    fingerprint,
    fingerprintHex: fingerprintHex(fingerprint),
    contentSha256: createHash('sha256').update(stableStringify(json)).digest('hex'),
    type,
  };
}

/**
 * Reads every family and version under `dir`, collecting problems instead of stopping at the
 * first (the `schemas check` command reports them all). Families with a broken version are
 * left out of `families`.
 */
export function scanSchemaDir(dir: string = SCHEMA_DIR): SchemaScan {
  const families = new Map<string, SchemaFamily>();
  const problems: SchemaProblem[] = [];
  const seen = new Map<string, SchemaVersion>();
  for (const entry of readdirSync(dir).sort()) {
    const path = join(dir, entry);
    if (!statSync(path).isDirectory() || !FAMILY_DIR.test(entry)) continue;
    const files = readdirSync(path).filter((f) => f.endsWith('.avsc'));
    if (files.length === 0) continue;
    const versions: SchemaVersion[] = [];
    let broken = false;
    for (const f of files) {
      const m = VERSION_FILE.exec(f);
      if (!m) {
        problems.push({ code: SchemaErrorCode.INVALID, schema: entry, version: null, message: `${entry}/${f}: schema files are named v<N>.avsc` });
        broken = true;
        continue;
      }
      const version = Number(m[1]);
      try {
        const v = loadSchemaFile(entry, version, join(path, f));
        const other = seen.get(v.fingerprintHex);
        if (other) {
          problems.push({
            code: SchemaErrorCode.DUPLICATE,
            schema: entry,
            version,
            message: `${entry} v${version} has the same fingerprint (${v.fingerprintHex}) as ${other.name} v${other.version}: a new version must change what is written (docs and defaults alone are not a new version)`,
          });
          broken = true;
        }
        seen.set(v.fingerprintHex, v);
        versions.push(v);
      } catch (err) {
        if (!(err instanceof SchemaError)) throw err;
        problems.push({ code: err.code, schema: entry, version, message: err.message });
        broken = true;
      }
    }
    versions.sort((a, b) => a.version - b.version);
    versions.forEach((v, i) => {
      if (v.version !== i + 1) {
        problems.push({
          code: SchemaErrorCode.INVALID,
          schema: entry,
          version: i + 1,
          message: `${entry}: versions must run 1..n without gaps; v${i + 1} is missing (found v${v.version})`,
        });
        broken = true;
      }
    });
    if (!broken && versions.length > 0) {
      families.set(entry, { name: entry, versions, latest: versions[versions.length - 1]! });
    }
  }
  return { dir, families, problems };
}

/** Loads the schema directory for use by a codec; throws on the first problem. */
export function loadSchemaDir(dir: string = SCHEMA_DIR): Map<string, SchemaFamily> {
  const scan = scanSchemaDir(dir);
  const first = scan.problems[0];
  if (first) {
    throw new SchemaError(first.code, `schema directory ${dir}: ${first.message}${scan.problems.length > 1 ? ` (and ${scan.problems.length - 1} more)` : ''}`, {
      schemaName: first.schema,
      version: first.version,
    });
  }
  return scan.families;
}
