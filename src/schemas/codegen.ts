import type { SchemaFamily } from './registry.js';

/**
 * Generates TypeScript types from the newest version of each schema family.
 *
 * Why generated rather than hand-kept: the .avsc files are the single source of truth and the
 * decoders always return the newest reader's shape, so the types are a pure function of those
 * files. A generator cannot drift; a hand-kept copy plus an assertion would need a type-level
 * Avro parser to prove the same. The output is committed (`types.generated.ts`, readable in
 * review and in the editor without a build step) and `trajstore schemas check` fails when it
 * differs from what this function produces, so a schema change without regenerating is caught.
 *
 * Shapes follow avsc's decoding with the options in registry.ts: long -> number (the guard
 * rejects values outside the safe-integer range), bytes/fixed -> Buffer, map -> Record, enum ->
 * a string-literal union, `["null", X]` -> `X | null`, a union of records -> `{ Name: X } | ...`
 * (avsc's wrapped unions; avsc wraps exactly when two branches fall in the same JavaScript
 * "bucket", the rule `isAmbiguous` in avsc/lib/types.js applies, replicated below).
 */

const PRIMITIVE_TS: Record<string, string> = {
  null: 'null',
  boolean: 'boolean',
  int: 'number',
  long: 'number',
  float: 'number',
  double: 'number',
  bytes: 'Buffer',
  string: 'string',
};

type Json = Record<string, unknown>;

interface Named {
  full: string;
  kind: 'record' | 'enum' | 'fixed';
  json: Json;
}

class Generator {
  /** Declarations by type name, in the order they were first met. */
  readonly decls = new Map<string, string>();
  readonly enums = new Map<string, string[]>();
  private named = new Map<string, Named>();

  constructor(private readonly family: string) {}

  private fail(message: string): never {
    throw new Error(`codegen (${this.family}): ${message}`);
  }

  private declare(name: string, text: string): void {
    const existing = this.decls.get(name);
    if (existing !== undefined && existing !== '' && existing !== text) this.fail(`two different types are named ${name}; rename one`);
    this.decls.set(name, text);
  }

  /** TS identifier for a (possibly namespaced) Avro name: its last component. */
  private ident(full: string): string {
    return full.slice(full.lastIndexOf('.') + 1);
  }

  private qualify(name: string, ns: string | undefined): string {
    return name.includes('.') || !ns ? name : `${ns}.${name}`;
  }

  /** avsc's bucket of a branch (see avsc getTypeBucket). */
  private bucket(schema: unknown, ns: string | undefined): string {
    if (typeof schema === 'string') {
      if (schema in PRIMITIVE_TS) return primitiveBucket(schema);
      const n = this.named.get(this.qualify(schema, ns)) ?? this.fail(`unknown type ${schema}`);
      return namedBucket(n.kind);
    }
    if (Array.isArray(schema)) this.fail('a union directly inside a union');
    const s = schema as Json;
    if (typeof s.type === 'string' && s.type in PRIMITIVE_TS) return primitiveBucket(s.type);
    if (s.type === 'record' || s.type === 'error') return 'object';
    if (s.type === 'map') return 'object';
    if (s.type === 'enum') return 'string';
    if (s.type === 'fixed') return 'buffer';
    if (s.type === 'array') return 'array';
    return this.bucket(s.type, ns);
  }

  /** The TS type expression for a schema; declares named types on the way. */
  type(schema: unknown, ns: string | undefined, unionName: string): string {
    if (typeof schema === 'string') {
      if (schema in PRIMITIVE_TS) return PRIMITIVE_TS[schema]!;
      const n = this.named.get(this.qualify(schema, ns)) ?? this.fail(`unknown type ${schema}`);
      return n.kind === 'fixed' ? 'Buffer' : this.ident(n.full);
    }
    if (Array.isArray(schema)) return this.union(schema, ns, unionName);
    const s = schema as Json;
    const t = s.type;
    if (typeof t === 'string' && t in PRIMITIVE_TS) return PRIMITIVE_TS[t]!;
    switch (t) {
      case 'array':
        return `Array<${this.type(s.items, ns, `${unionName}Item`)}>`;
      case 'map':
        return `Record<string, ${this.type(s.values, ns, `${unionName}Value`)}>`;
      case 'record':
      case 'error':
        return this.record(s, ns);
      case 'enum':
        return this.enumType(s, ns);
      case 'fixed': {
        const full = this.qualify(String(s.name), typeof s.namespace === 'string' ? s.namespace : ns);
        this.named.set(full, { full, kind: 'fixed', json: s });
        return 'Buffer';
      }
      default:
        return this.type(t, ns, unionName);
    }
  }

  private union(branches: unknown[], ns: string | undefined, unionName: string): string {
    const buckets = branches.map((b) => this.bucket(b, ns));
    const wrapped = new Set(buckets).size !== buckets.length;
    if (!wrapped) return branches.map((b) => this.type(b, ns, unionName)).join(' | ');
    const parts = branches.map((b) => {
      const ts = this.type(b, ns, unionName);
      if (ts === 'null') return 'null';
      return `{ ${JSON.stringify(this.branchName(b, ns))}: ${ts} }`.replace(/^\{ "([A-Za-z_][A-Za-z0-9_]*)":/, '{ $1:');
    });
    this.declare(unionName, `/** Avro union, wrapped by branch name as in Avro's JSON encoding: narrow with \`'Name' in value\`. */\nexport type ${unionName} =\n${parts.map((p) => `  | ${p}`).join('\n')};\n`);
    return unionName;
  }

  /** avsc's key for a wrapped branch: a named type's full name, else the type name. */
  private branchName(schema: unknown, ns: string | undefined): string {
    if (typeof schema === 'string') return schema in PRIMITIVE_TS ? schema : this.qualify(schema, ns);
    const s = schema as Json;
    if (typeof s.name === 'string' && ['record', 'error', 'enum', 'fixed'].includes(String(s.type))) {
      return this.qualify(s.name, typeof s.namespace === 'string' ? s.namespace : ns);
    }
    return typeof s.type === 'string' ? s.type : this.fail('unsupported union branch');
  }

  private enumType(s: Json, ns: string | undefined): string {
    const full = this.qualify(String(s.name), typeof s.namespace === 'string' ? s.namespace : ns);
    const name = this.ident(full);
    this.named.set(full, { full, kind: 'enum', json: s });
    const symbols = s.symbols as string[];
    this.enums.set(name, symbols);
    this.declare(name, `${jsdoc(str(s.doc), '')}export type ${name} = ${symbols.map((x) => `'${x}'`).join(' | ')};\n`);
    return name;
  }

  private record(s: Json, ns: string | undefined): string {
    const full = this.qualify(String(s.name), typeof s.namespace === 'string' ? s.namespace : ns);
    const name = this.ident(full);
    this.named.set(full, { full, kind: 'record', json: s });
    const inner = full.includes('.') ? full.slice(0, full.lastIndexOf('.')) : undefined;
    // Reserve the position before the fields declare their own types, so parents come first.
    if (!this.decls.has(name)) this.decls.set(name, '');
    const lines: string[] = [];
    for (const f of s.fields as Json[]) {
      const fname = String(f.name);
      const ts = this.type(f.type, inner, `${name}${pascal(fname)}`);
      const doc = [str(f.doc), `Avro: \`${avroSummary(f.type)}\`${'default' in f ? `, default \`${JSON.stringify(f.default)}\`` : ''}.`]
        .filter(Boolean)
        .join('\n\n');
      lines.push(`${jsdoc(doc, '  ')}  ${fname}: ${ts};`);
    }
    this.declare(name, `${jsdoc(str(s.doc), '')}export interface ${name} {\n${lines.join('\n')}\n}\n`);
    return name;
  }
}

function primitiveBucket(t: string): string {
  if (t === 'int' || t === 'long' || t === 'float' || t === 'double') return 'number';
  if (t === 'bytes') return 'buffer';
  return t;
}

function namedBucket(kind: Named['kind']): string {
  return kind === 'record' ? 'object' : kind === 'enum' ? 'string' : 'buffer';
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function pascal(snake: string): string {
  return snake.replace(/(^|_)([a-z0-9])/g, (_m, _u, c: string) => c.toUpperCase());
}

function jsdoc(text: string, indent: string): string {
  if (!text) return '';
  const body = text.replace(/\*\//g, '*\\/').split('\n');
  if (body.length === 1) return `${indent}/** ${body[0]} */\n`;
  return `${indent}/**\n${body.map((l) => `${indent} *${l ? ` ${l}` : ''}`).join('\n')}\n${indent} */\n`;
}

/** A one-line summary of a field's Avro type for the doc comment (named types by name). */
function avroSummary(schema: unknown): string {
  if (typeof schema === 'string') return schema;
  if (Array.isArray(schema)) return `[${schema.map(avroSummary).join(', ')}]`;
  const s = schema as Json;
  if (typeof s.name === 'string' && ['record', 'error', 'enum', 'fixed'].includes(String(s.type))) return `${s.type} ${s.name}`;
  if (s.type === 'array') return `array<${avroSummary(s.items)}>`;
  if (s.type === 'map') return `map<${avroSummary(s.values)}>`;
  if (typeof s.logicalType === 'string') return `${avroSummary(s.type)} (${s.logicalType})`;
  return avroSummary(s.type);
}

function upperSnake(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/** The full text of types.generated.ts for these families (newest version of each). */
export function generateTypes(families: ReadonlyMap<string, SchemaFamily>): string {
  const out: string[] = [
    '// Generated by `trajstore schemas codegen` from the newest version of each schema in',
    '// src/schemas/<family>/v<N>.avsc. Do not edit: change a schema (as a new version) and',
    '// regenerate. `trajstore schemas check` fails when this file is stale.',
    '/* eslint-disable */',
    '',
  ];
  const all = new Map<string, string>();
  const enums = new Map<string, string[]>();
  const roots: Array<{ family: string; type: string; version: number }> = [];
  for (const family of [...families.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const gen = new Generator(family.name);
    const root = gen.type(family.latest.json, undefined, pascal(family.name));
    roots.push({ family: family.name, type: root, version: family.latest.version });
    for (const [name, text] of gen.decls) {
      const existing = all.get(name);
      if (existing !== undefined && existing !== text) throw new Error(`codegen: two schema families define different types named ${name}`);
      all.set(name, text);
    }
    for (const [name, symbols] of gen.enums) enums.set(name, symbols);
  }
  for (const text of all.values()) out.push(text);
  for (const [name, symbols] of enums) {
    out.push(`/** Every ${name} symbol, in schema order. */`);
    out.push(`export const ${upperSnake(name)}_SYMBOLS = [${symbols.map((s) => `'${s}'`).join(', ')}] as const;\n`);
  }
  out.push('/** Schema family name -> the TypeScript type of its newest version. */');
  out.push('export interface SchemaTypes {');
  for (const r of roots) out.push(`  ${r.family}: ${r.type};`);
  out.push('}\n');
  out.push('export type SchemaName = keyof SchemaTypes;\n');
  out.push('/** The newest version of each family: what encoders write and decoders return. */');
  out.push('export const LATEST_VERSIONS = {');
  for (const r of roots) out.push(`  ${r.family}: ${r.version},`);
  out.push('} as const;');
  return `${out.join('\n')}\n`;
}
