/**
 * Avro Parsing Canonical Form and the CRC-64-AVRO (Rabin) fingerprint, as the Avro
 * specification defines them ("Parsing Canonical Form for Schemas", "Schema Fingerprints").
 *
 * Implemented here rather than taken from avsc: avsc fingerprints with MD5 only, and the
 * single-object encoding header needs the 64-bit Rabin fingerprint that Java, Python and Rust
 * Avro compute, so a message written here decodes there. The test vectors in
 * test/schemas/fingerprint.test.ts are the Avro project's own.
 */

const PRIMITIVES = new Set(['null', 'boolean', 'int', 'long', 'float', 'double', 'bytes', 'string']);
const NAMED = new Set(['record', 'error', 'enum', 'fixed']);

/** Fullname of a named type: a dotted name is already full; otherwise prefix the namespace. */
function fullName(name: string, namespace: string | undefined): string {
  if (name.includes('.') || !namespace) return name;
  return `${namespace}.${name}`;
}

function namespaceOf(full: string): string | undefined {
  const dot = full.lastIndexOf('.');
  return dot < 0 ? undefined : full.slice(0, dot);
}

/**
 * The schema's Parsing Canonical Form: primitives as bare strings, full names, only the
 * attributes that matter for parsing (name, type, fields, symbols, items, values, size) in that
 * order, no whitespace. Docs, defaults, aliases, `order` and logical types are stripped, which
 * is why the lockfile pins a content hash next to the fingerprint.
 */
export function parsingCanonicalForm(schema: unknown): string {
  return canonical(schema, undefined, new Set());
}

function canonical(schema: unknown, namespace: string | undefined, defined: Set<string>): string {
  if (typeof schema === 'string') {
    return JSON.stringify(PRIMITIVES.has(schema) ? schema : fullName(schema, namespace));
  }
  if (Array.isArray(schema)) {
    return `[${schema.map((s) => canonical(s, namespace, defined)).join(',')}]`;
  }
  if (schema === null || typeof schema !== 'object') {
    throw new TypeError(`not an Avro schema: ${JSON.stringify(schema)}`);
  }
  const s = schema as Record<string, unknown>;
  const type = s.type;
  if (typeof type === 'string' && PRIMITIVES.has(type)) return JSON.stringify(type);
  if (typeof type === 'string' && NAMED.has(type)) {
    if (typeof s.name !== 'string') throw new TypeError(`named type without a name: ${JSON.stringify(schema)}`);
    const full = fullName(s.name, typeof s.namespace === 'string' && s.namespace !== '' ? s.namespace : namespace);
    if (defined.has(full)) return JSON.stringify(full);
    defined.add(full);
    const inner = namespaceOf(full);
    const head = `{"name":${JSON.stringify(full)},"type":${JSON.stringify(type)}`;
    if (type === 'enum') {
      return `${head},"symbols":${JSON.stringify(s.symbols)}}`;
    }
    if (type === 'fixed') {
      return `${head},"size":${Number(s.size)}}`;
    }
    const fields = (s.fields as Array<Record<string, unknown>>).map(
      (f) => `{"name":${JSON.stringify(f.name)},"type":${canonical(f.type, inner, defined)}}`,
    );
    return `${head},"fields":[${fields.join(',')}]}`;
  }
  if (type === 'array') return `{"type":"array","items":${canonical(s.items, namespace, defined)}}`;
  if (type === 'map') return `{"type":"map","values":${canonical(s.values, namespace, defined)}}`;
  // {"type": "SomeName"} or {"type": {...}}: the wrapper adds nothing.
  return canonical(type, namespace, defined);
}

const EMPTY = 0xc15d213aa4d7a795n;
const MASK = 0xffffffffffffffffn;

const TABLE: bigint[] = (() => {
  const table: bigint[] = [];
  for (let i = 0; i < 256; i++) {
    let fp = BigInt(i);
    for (let j = 0; j < 8; j++) fp = (fp >> 1n) ^ (EMPTY & -(fp & 1n) & MASK);
    table.push(fp);
  }
  return table;
})();

/** CRC-64-AVRO of some bytes, as an unsigned 64-bit integer. */
export function rabin64(bytes: Uint8Array): bigint {
  let fp = EMPTY;
  for (const b of bytes) fp = (fp >> 8n) ^ TABLE[Number((fp ^ BigInt(b)) & 0xffn)]!;
  return fp;
}

/**
 * The 8 fingerprint bytes as they appear in a single-object-encoded message (little-endian).
 * Computed once per schema at load, so BigInt arithmetic is fine here.
 */
export function schemaFingerprint(schema: unknown): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(rabin64(Buffer.from(parsingCanonicalForm(schema), 'utf8')));
  return out;
}

/**
 * Fingerprints are named by the hex of their wire bytes (what a hexdump of a message shows after
 * `c3 01`). Java's `SchemaNormalization.parsingFingerprint64` prints the same value as a signed
 * little-endian long; `fingerprintToLong` converts.
 */
export function fingerprintHex(fingerprint: Uint8Array): string {
  return Buffer.from(fingerprint.buffer, fingerprint.byteOffset, fingerprint.byteLength).toString('hex');
}

/** The fingerprint as the signed 64-bit integer Java's Avro reports. */
export function fingerprintToLong(hex: string): bigint {
  return Buffer.from(hex, 'hex').readBigInt64LE();
}
