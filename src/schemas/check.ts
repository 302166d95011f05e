import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type avro from 'avsc';
import { generateTypes } from './codegen.js';
import { SchemaErrorCode } from './errors.js';
import { scanSchemaDir, SCHEMA_DIR, type SchemaFamily, type SchemaVersion } from './registry.js';

/**
 * `trajstore schemas check`: the rules that keep every message ever written decodable.
 *
 * 1. Every version of a family can read data written with every older version (the newest
 *    reader decodes the whole history; adjacent versions are included, so the message names the
 *    version where the break happened).
 * 2. Every version on disk is pinned in fingerprints.json with its fingerprint and a hash of its
 *    full content, and matches its pin: a shipped version is never edited in place (an edit
 *    would change what old messages' fingerprints point to). New versions get pinned with
 *    `trajstore schemas lock`.
 * 3. Pinned versions still exist; versions run 1..n; no two versions share a fingerprint.
 * 4. types.generated.ts is what codegen produces from the newest versions.
 */

export const LOCKFILE = 'fingerprints.json';
export const TYPES_FILE = 'types.generated.ts';

export interface SchemaCheckIssue {
  code: (typeof SchemaErrorCode)[keyof typeof SchemaErrorCode];
  schema: string | null;
  version: number | null;
  /** Field path of an incompatibility, e.g. `payload.Turn.latency_ms`. */
  field: string | null;
  message: string;
}

export interface SchemaCheckReport {
  ok: boolean;
  dir: string;
  /** Every version that was read, with its fingerprint. */
  versions: Array<{ schema: string; version: number; fingerprint: string; latest: boolean }>;
  issues: SchemaCheckIssue[];
}

interface Pin {
  fingerprint: string;
  content_sha256: string;
}

interface Lockfile {
  comment?: string;
  schemas: Record<string, Record<string, Pin>>;
}

const LOCK_COMMENT =
  'Pinned by `trajstore schemas lock`. A shipped schema version is immutable: `trajstore schemas check` fails when a pinned version changes or disappears. Evolve a schema by adding v<N+1>.avsc.';

// ---------------------------------------------------------------------------------------------
// Compatibility: can a reader schema read data written with a writer schema? (Avro's schema
// resolution rules, walked to produce field paths; avsc's createResolver is the backstop.)

interface CompatProblem {
  path: string;
  message: string;
}

const PROMOTIONS: Record<string, readonly string[]> = {
  int: ['int', 'long', 'float', 'double'],
  long: ['long', 'float', 'double'],
  float: ['float', 'double'],
  double: ['double'],
  string: ['string', 'bytes'],
  bytes: ['bytes', 'string'],
  boolean: ['boolean'],
  null: ['null'],
};

function baseType(t: avro.Type): avro.Type {
  return t.typeName.startsWith('logical:') ? (t as avro.types.LogicalType).underlyingType : t;
}

function isUnion(t: avro.Type): boolean {
  return t.typeName.startsWith('union');
}

function isNamed(t: avro.Type): boolean {
  return ['record', 'error', 'enum', 'fixed'].includes(t.typeName);
}

function describe(t: avro.Type): string {
  if (isNamed(t)) return `${t.typeName} ${t.name}`;
  if (isUnion(t)) return `union [${(t as avro.types.WrappedUnionType).types.map(describe).join(', ')}]`;
  if (t.typeName === 'array') return `array<${describe((t as avro.types.ArrayType).itemsType)}>`;
  if (t.typeName === 'map') return `map<${describe((t as avro.types.MapType).valuesType as avro.Type)}>`;
  return t.typeName;
}

function nameMatches(reader: avro.Type, writer: avro.Type): boolean {
  return reader.name === writer.name || (reader.aliases ?? []).includes(writer.name ?? '');
}

/** Avro's "the writer's schema matches this reader branch" test, shallow (no recursion). */
function branchMatches(reader: avro.Type, writer: avro.Type): boolean {
  const r = baseType(reader);
  const w = baseType(writer);
  if (isNamed(w)) return r.typeName === w.typeName && nameMatches(r, w);
  if (w.typeName === 'array' || w.typeName === 'map') return r.typeName === w.typeName;
  return (PROMOTIONS[w.typeName] ?? []).includes(r.typeName);
}

function join2(path: string, seg: string): string {
  return path === '' ? seg : `${path}.${seg}`;
}

function compat(readerIn: avro.Type, writerIn: avro.Type, path: string, seen: Set<string>, out: CompatProblem[]): void {
  const reader = baseType(readerIn);
  const writer = baseType(writerIn);
  if (isUnion(writer)) {
    const branches = (writer as avro.types.WrappedUnionType).types;
    for (const wb of branches) {
      const seg = writer.typeName === 'union:wrapped' && isNamed(wb) ? join2(path, wb.name ?? wb.typeName) : path;
      compat(reader, wb, seg, seen, out);
    }
    return;
  }
  if (isUnion(reader)) {
    const rb = (reader as avro.types.WrappedUnionType).types.find((b) => branchMatches(b, writer));
    if (!rb) {
      out.push({ path, message: `the reader's ${describe(reader)} has no branch that can read the writer's ${describe(writer)}` });
      return;
    }
    compat(rb, writer, path, seen, out);
    return;
  }
  if (!branchMatches(reader, writer)) {
    out.push({ path, message: `reader type ${describe(reader)} cannot read writer type ${describe(writer)}` });
    return;
  }
  switch (reader.typeName) {
    case 'record':
    case 'error': {
      const key = `${reader.name}<-${writer.name}`;
      if (seen.has(key)) return;
      seen.add(key);
      const wfields = new Map((writer as avro.types.RecordType).fields.map((f) => [f.name, f]));
      for (const rf of (reader as avro.types.RecordType).fields) {
        const wf = wfields.get(rf.name) ?? rf.aliases.map((a) => wfields.get(a)).find((f) => f !== undefined);
        const fieldPath = join2(path, rf.name);
        if (wf) compat(rf.type, wf.type, fieldPath, seen, out);
        else if (rf.defaultValue() === undefined) {
          out.push({ path: fieldPath, message: `field ${rf.name} was added without a default, so data written without it cannot be read` });
        }
      }
      return;
    }
    case 'enum': {
      const rs = new Set((reader as avro.types.EnumType).symbols);
      const missing = (writer as avro.types.EnumType).symbols.filter((s) => !rs.has(s));
      if (missing.length > 0 && (reader as unknown as { default?: string }).default === undefined) {
        out.push({ path, message: `enum ${reader.name} lost symbol(s) ${missing.join(', ')} that the writer can write (and has no default)` });
      }
      return;
    }
    case 'fixed':
      if ((reader as avro.types.FixedType).size !== (writer as avro.types.FixedType).size) {
        out.push({ path, message: `fixed ${reader.name} changed size` });
      }
      return;
    case 'array':
      compat((reader as avro.types.ArrayType).itemsType, (writer as avro.types.ArrayType).itemsType, `${path}[]`, seen, out);
      return;
    case 'map':
      compat((reader as avro.types.MapType).valuesType as avro.Type, (writer as avro.types.MapType).valuesType as avro.Type, `${path}{}`, seen, out);
      return;
    default:
      return;
  }
}

/** Why `reader` cannot read data written with `writer` (empty: it can). */
export function compatibilityProblems(reader: SchemaVersion, writer: SchemaVersion): CompatProblem[] {
  const out: CompatProblem[] = [];
  compat(reader.type, writer.type, '', new Set(), out);
  if (out.length === 0) {
    try {
      reader.type.createResolver(writer.type);
    } catch (err) {
      out.push({ path: '', message: `avsc cannot resolve it: ${(err as Error).message}` });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

function readLockfile(dir: string, issues: SchemaCheckIssue[]): Lockfile {
  const file = join(dir, LOCKFILE);
  if (!existsSync(file)) {
    issues.push({ code: SchemaErrorCode.UNPINNED, schema: null, version: null, field: null, message: `${LOCKFILE} is missing: run \`trajstore schemas lock\`` });
    return { schemas: {} };
  }
  try {
    const parsed = JSON.parse(readFileSync(file, 'utf8')) as Lockfile;
    if (!parsed || typeof parsed.schemas !== 'object') throw new Error('no "schemas" object');
    return parsed;
  } catch (err) {
    issues.push({ code: SchemaErrorCode.INVALID, schema: null, version: null, field: null, message: `${LOCKFILE} is unreadable: ${(err as Error).message}` });
    return { schemas: {} };
  }
}

function checkPins(families: Map<string, SchemaFamily>, lock: Lockfile, issues: SchemaCheckIssue[], brokenFamilies: Set<string>): void {
  for (const family of families.values()) {
    const pins = lock.schemas[family.name] ?? {};
    for (const v of family.versions) {
      const pin = pins[`v${v.version}`];
      const at = { schema: family.name, version: v.version, field: null };
      if (!pin) {
        issues.push({
          ...at,
          code: SchemaErrorCode.UNPINNED,
          message: `${family.name} v${v.version} (fingerprint ${v.fingerprintHex}) is not pinned in ${LOCKFILE}: once reviewed, run \`trajstore schemas lock\``,
        });
      } else if (pin.fingerprint !== v.fingerprintHex) {
        issues.push({
          ...at,
          code: SchemaErrorCode.MODIFIED,
          message: `${family.name} v${v.version} was edited in place: fingerprint ${v.fingerprintHex}, pinned ${pin.fingerprint}. Shipped versions are immutable: restore it and put the change in a new version`,
        });
      } else if (pin.content_sha256 !== v.contentSha256) {
        issues.push({
          ...at,
          code: SchemaErrorCode.MODIFIED,
          message: `${family.name} v${v.version} was edited in place: same fingerprint, but its docs, defaults, aliases or logical types differ from the pinned content (defaults change how old data reads). Restore it and put the change in a new version`,
        });
      }
    }
  }
  for (const [name, pins] of Object.entries(lock.schemas)) {
    if (brokenFamilies.has(name)) continue; // already reported by the scan
    const family = families.get(name);
    for (const key of Object.keys(pins)) {
      const version = Number(key.replace(/^v/, ''));
      if (!family || !family.versions.some((v) => v.version === version)) {
        issues.push({
          code: SchemaErrorCode.MISSING,
          schema: name,
          version,
          field: null,
          message: `${name} ${key} is pinned in ${LOCKFILE} but missing from disk: messages written with it could no longer be decoded. Restore ${name}/${key}.avsc`,
        });
      }
    }
  }
}

export interface CheckOptions {
  /** Also check that types.generated.ts is current (default true). */
  types?: boolean;
}

export function checkSchemas(dir: string = SCHEMA_DIR, options: CheckOptions = {}): SchemaCheckReport {
  const scan = scanSchemaDir(dir);
  const issues: SchemaCheckIssue[] = scan.problems.map((p) => ({ ...p, field: null }));
  const brokenFamilies = new Set(scan.problems.map((p) => p.schema).filter((s): s is string => s !== null));

  for (const family of scan.families.values()) {
    const vs = family.versions;
    for (let k = 1; k < vs.length; k++) {
      for (let j = k - 1; j >= 0; j--) {
        const problems = compatibilityProblems(vs[k]!, vs[j]!);
        for (const p of problems) {
          issues.push({
            code: SchemaErrorCode.INCOMPATIBLE,
            schema: family.name,
            version: vs[k]!.version,
            field: p.path || null,
            message: `${family.name} v${vs[k]!.version} cannot read data written with v${vs[j]!.version}: ${p.path ? `field ${p.path}: ` : ''}${p.message}`,
          });
        }
        // One broken pair is enough to report per new version; older pairs would repeat it.
        if (problems.length > 0) break;
      }
    }
  }

  checkPins(scan.families, readLockfile(dir, issues), issues, brokenFamilies);

  if (options.types !== false && brokenFamilies.size === 0) {
    const file = join(dir, TYPES_FILE);
    let expected: string | null = null;
    try {
      expected = generateTypes(scan.families);
    } catch (err) {
      issues.push({ code: SchemaErrorCode.INVALID, schema: null, version: null, field: null, message: (err as Error).message });
    }
    if (expected !== null && (!existsSync(file) || readFileSync(file, 'utf8') !== expected)) {
      issues.push({
        code: SchemaErrorCode.TYPES_STALE,
        schema: null,
        version: null,
        field: null,
        message: `${TYPES_FILE} is not generated from the newest schemas: run \`trajstore schemas codegen\``,
      });
    }
  }

  const versions = [...scan.families.values()].flatMap((f) =>
    f.versions.map((v) => ({ schema: f.name, version: v.version, fingerprint: v.fingerprintHex, latest: v === f.latest })),
  );
  return { ok: issues.length === 0, dir, versions, issues };
}

/**
 * Pins every version not yet in fingerprints.json. Refuses (and writes nothing) while any
 * other check fails, and never rewrites an existing pin: that is the point of the lockfile.
 */
export function lockSchemas(dir: string = SCHEMA_DIR): { added: string[]; report: SchemaCheckReport } {
  const report = checkSchemas(dir, { types: false });
  const blocking = report.issues.filter((i) => i.code !== SchemaErrorCode.UNPINNED);
  if (blocking.length > 0) return { added: [], report };
  const scratch: SchemaCheckIssue[] = [];
  const lock = readLockfile(dir, scratch);
  const added: string[] = [];
  for (const family of scanSchemaDir(dir).families.values()) {
    const pins = (lock.schemas[family.name] ??= {});
    for (const v of family.versions) {
      if (!pins[`v${v.version}`]) {
        pins[`v${v.version}`] = { fingerprint: v.fingerprintHex, content_sha256: v.contentSha256 };
        added.push(`${family.name} v${v.version}`);
      }
    }
  }
  if (added.length > 0) {
    const sorted: Lockfile = { comment: LOCK_COMMENT, schemas: {} };
    for (const name of Object.keys(lock.schemas).sort()) {
      const pins = lock.schemas[name]!;
      sorted.schemas[name] = Object.fromEntries(Object.keys(pins).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1))).map((k) => [k, pins[k]!]));
    }
    writeFileSync(join(dir, LOCKFILE), `${JSON.stringify(sorted, null, 2)}\n`);
  }
  return { added, report: checkSchemas(dir, { types: false }) };
}
