import type avro from 'avsc';
import {
  BadMagicError,
  CorruptMessageError,
  EncodeError,
  EncodeErrorCode,
  MessageTooLargeError,
  SchemaError,
  SchemaErrorCode,
  TruncatedMessageError,
  UnknownSchemaError,
  WrongSchemaError,
  type DecodeErrorDetails,
  type EncodeIssue,
} from './errors.js';
import { compileGuard, WireFault } from './guard.js';
import { loadSchemaDir, SCHEMA_DIR, type SchemaFamily, type SchemaVersion } from './registry.js';
import { LATEST_VERSIONS } from './types.generated.js';

/**
 * Avro single-object encoding: every message is `C3 01` + the writer schema's 8-byte
 * CRC-64-AVRO fingerprint (little-endian) + the Avro binary body. The fingerprint names the exact
 * schema version the bytes were written with; the codec knows every shipped version, checks the
 * body against it (guard.ts), and resolves it into the newest version's shape with avsc.
 */

export const SINGLE_OBJECT_MAGIC: Readonly<Uint8Array> = Uint8Array.of(0xc3, 0x01);
/** Magic (2) + fingerprint (8). */
export const HEADER_BYTES = 10;
/**
 * Default limit on a message, both ways. Well above a long multi-turn Turn (a 32k-token prompt is
 * ~100 KB of ids plus its text) and below what would hurt a consumer; blobs belong in the blob store.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface DecodeOptions {
  /** Reject messages larger than this (default DEFAULT_MAX_MESSAGE_BYTES). */
  maxBytes?: number;
}

export interface EncodeOptions {
  /**
   * Write with an older shipped version instead of the newest. For rolling upgrades: consumers
   * that do not know the newest fingerprint yet dead-letter its messages, so producers can keep
   * writing the previous version until every reader is upgraded. Fields the older version lacks
   * are dropped.
   */
  writerVersion?: number;
  /** Refuse to produce messages larger than this (default DEFAULT_MAX_MESSAGE_BYTES). */
  maxBytes?: number;
}

/** A decoded message and what its header said. */
export interface DecodedMessage<N extends string = string, T = unknown> {
  schema: N;
  /** The version the bytes were written with (the value is always in the newest version's shape). */
  writerVersion: number;
  /** Writer fingerprint, 16 hex chars in wire byte order. */
  fingerprint: string;
  value: T;
}

interface Writer {
  readonly family: SchemaFamily;
  readonly schema: SchemaVersion;
  readonly header: Buffer;
  readonly check: (bytes: Uint8Array, start: number, maxMessageBytes: number) => void;
  /** Resolves this writer's data into the newest version's shape; undefined for the newest itself. */
  readonly resolver: unknown;
}

/** Sniffs what a message without the single-object marker probably is, for the error message. */
function describeForeign(bytes: Buffer): string {
  const b0 = bytes[0];
  if (b0 === 0x00 && bytes.length >= 5) return 'starts with 0x00: Confluent wire format (schema registry id), not single-object encoding';
  if (b0 === 0x7b || b0 === 0x5b) return 'starts with "{" or "[": JSON, not Avro';
  if (b0 === 0x4f && bytes[1] === 0x62 && bytes[2] === 0x6a && bytes[3] === 0x01) return 'an Avro object container file, not a single object';
  return `starts with 0x${(b0 ?? 0).toString(16).padStart(2, '0')}${bytes.length > 1 ? ` 0x${bytes[1]!.toString(16).padStart(2, '0')}` : ''}, not the single-object marker 0xc3 0x01`;
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Encodes and decodes every schema family of one schema directory. `defaultCodec()` is the one
 * for the shipped schemas; tests and `schemas check` build others from temporary directories.
 */
export class SchemaCodec {
  readonly families: ReadonlyMap<string, SchemaFamily>;
  private readonly writers = new Map<string, Writer>();
  private readonly byVersion = new Map<string, Writer[]>();
  private scratch: Buffer = Buffer.allocUnsafe(64 * 1024);

  constructor(families: ReadonlyMap<string, SchemaFamily>) {
    this.families = families;
    for (const family of families.values()) {
      const list: Writer[] = [];
      for (const schema of family.versions) {
        let resolver: unknown;
        if (schema !== family.latest) {
          try {
            resolver = family.latest.type.createResolver(schema.type);
          } catch (cause) {
            throw new SchemaError(
              SchemaErrorCode.INCOMPATIBLE,
              `${family.name} v${family.latest.version} cannot read v${schema.version}: ${(cause as Error).message}`,
              { schemaName: family.name, version: family.latest.version, cause },
            );
          }
        }
        const header = Buffer.alloc(HEADER_BYTES);
        header.set(SINGLE_OBJECT_MAGIC, 0);
        schema.fingerprint.copy(header, 2);
        const writer: Writer = { family, schema, header, check: compileGuard(schema.type), resolver };
        this.writers.set(schema.fingerprintHex, writer);
        list.push(writer);
      }
      this.byVersion.set(family.name, list);
    }
  }

  static fromDir(dir: string): SchemaCodec {
    return new SchemaCodec(loadSchemaDir(dir));
  }

  /** The writer fingerprint in a message's header (hex), or null if there is none to read. */
  static readFingerprint(bytes: Uint8Array | null | undefined): string | null {
    if (!bytes || bytes.length < HEADER_BYTES || bytes[0] !== 0xc3 || bytes[1] !== 0x01) return null;
    return asBuffer(bytes).toString('hex', 2, HEADER_BYTES);
  }

  /** Which shipped schema version a fingerprint names, if any. */
  lookup(fingerprint: string): { schema: string; version: number } | null {
    const w = this.writers.get(fingerprint);
    return w ? { schema: w.family.name, version: w.schema.version } : null;
  }

  /**
   * Encodes `value` (in the newest version's shape) as a single-object message. Validates the
   * value against the schema, then against `invariants` if given, so nothing malformed ever
   * reaches the log; throws EncodeError.
   */
  encode(schemaName: string, value: unknown, options: EncodeOptions = {}, invariants?: (value: never) => EncodeIssue[]): Buffer {
    const versions = this.byVersion.get(schemaName);
    if (!versions) throw new EncodeError(EncodeErrorCode.INVALID, schemaName, [{ path: '', message: `unknown schema family ${schemaName}` }]);
    const latest = versions[versions.length - 1]!;
    const writer = options.writerVersion === undefined ? latest : versions[options.writerVersion - 1];
    if (!writer) {
      throw new EncodeError(EncodeErrorCode.INVALID, schemaName, [
        { path: '', message: `no shipped version ${options.writerVersion} (versions 1..${versions.length})` },
      ]);
    }
    const type = writer.schema.type;
    const issues: EncodeIssue[] = [];
    // Undeclared fields are an error for the newest version (a typo would silently drop data);
    // an older writer version legitimately drops the fields it does not have.
    const valid = type.isValid(value, {
      noUndeclaredFields: writer === latest,
      errorHook: (path: string[], val: unknown, t: avro.Type) => {
        if (issues.length < 20) issues.push({ path: joinPath(path), message: describeInvalid(val, t) });
      },
    });
    if (!valid) throw new EncodeError(EncodeErrorCode.INVALID, `${schemaName} v${writer.schema.version}`, issues);
    // Only once the shape is right: invariant checks may then rely on it.
    const broken = invariants ? invariants(value as never) : [];
    if (broken.length > 0) throw new EncodeError(EncodeErrorCode.INVALID, schemaName, broken);

    let end = type.encode(value, this.scratch, HEADER_BYTES);
    if (end < 0) {
      this.scratch = Buffer.allocUnsafe(Math.max(this.scratch.length * 2, this.scratch.length - end + 1024));
      end = type.encode(value, this.scratch, HEADER_BYTES);
    }
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    if (end > maxBytes) {
      throw new EncodeError(EncodeErrorCode.TOO_LARGE, schemaName, [{ path: '', message: `encoded size ${end} bytes exceeds the limit of ${maxBytes}` }]);
    }
    const out = Buffer.allocUnsafe(end);
    writer.header.copy(out, 0);
    this.scratch.copy(out, HEADER_BYTES, HEADER_BYTES, end);
    return out;
  }

  /**
   * Decodes a single-object message of any known family, or of `expect` only. Never throws
   * anything but a DecodeError for bad input, and never reads more than the message's bytes.
   */
  decode(input: Uint8Array | null | undefined, options: DecodeOptions & { expect?: string } = {}): DecodedMessage {
    const byteLength = input ? input.length : 0;
    if (!input || byteLength === 0) throw new TruncatedMessageError('empty message (no value: a tombstone?)', { byteLength: 0 });
    const bytes = asBuffer(input);
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    if (byteLength > maxBytes) {
      throw new MessageTooLargeError(`message of ${byteLength} bytes exceeds the decode limit of ${maxBytes}`, {
        byteLength,
        fingerprint: SchemaCodec.readFingerprint(bytes),
      });
    }
    if (bytes[0] !== 0xc3 || (byteLength > 1 && bytes[1] !== 0x01)) {
      throw new BadMagicError(describeForeign(bytes), { byteLength, position: 0 });
    }
    if (byteLength < HEADER_BYTES) {
      throw new TruncatedMessageError('message ends inside the 10-byte single-object header', { byteLength, position: byteLength });
    }
    const fingerprint = bytes.toString('hex', 2, HEADER_BYTES);
    const writer = this.writers.get(fingerprint);
    if (!writer) {
      throw new UnknownSchemaError(`no shipped schema has fingerprint ${fingerprint}`, { byteLength, fingerprint, position: 2 });
    }
    const where = { byteLength, fingerprint, schemaName: writer.family.name, writerVersion: writer.schema.version };
    if (options.expect !== undefined && options.expect !== writer.family.name) {
      throw new WrongSchemaError(`expected a ${options.expect} message, got ${writer.family.name}`, where);
    }
    const reader = writer.family.latest.type;
    if (writer.resolver === undefined) {
      // Newest version, the common case: decode straight away. The avsc types of avsc-types.ts
      // bound every loop by the bytes left, so this cannot hang or over-allocate; only when it
      // fails does the guard walk the bytes again, to say precisely what is wrong and where.
      let failure: unknown;
      try {
        const decoded = reader.decode(bytes, HEADER_BYTES);
        if (decoded.offset === byteLength) {
          return { schema: writer.family.name, writerVersion: writer.schema.version, fingerprint, value: decoded.value };
        }
      } catch (cause) {
        failure = cause;
      }
      this.diagnose(writer, bytes, maxBytes, where);
      throw new CorruptMessageError(
        failure === undefined
          ? 'the value does not end where the message does'
          : `avsc could not decode the body: ${(failure as Error)?.message ?? String(failure)}`,
        { ...where, cause: failure },
      );
    }
    // An older version: resolution goes through avsc's resolvers, which do not all bound their
    // loops, so the guard checks the bytes first.
    this.diagnose(writer, bytes, maxBytes, where);
    let decoded: { value: unknown; offset: number };
    try {
      decoded = reader.decode(bytes, HEADER_BYTES, writer.resolver as never);
    } catch (cause) {
      throw new CorruptMessageError(`avsc could not decode the body: ${(cause as Error)?.message ?? String(cause)}`, { ...where, cause });
    }
    if (decoded.offset !== byteLength) {
      throw new CorruptMessageError(`decoding stopped at byte ${decoded.offset}, not at the end of the message`, { ...where, position: decoded.offset });
    }
    return { schema: writer.family.name, writerVersion: writer.schema.version, fingerprint, value: decoded.value };
  }

  /** Runs the bounds guard over the body; throws a Truncated/CorruptMessageError naming the field. */
  private diagnose(writer: Writer, bytes: Buffer, maxBytes: number, where: DecodeErrorDetails): void {
    try {
      writer.check(bytes, HEADER_BYTES, maxBytes);
    } catch (e) {
      if (!(e instanceof WireFault)) throw e;
      const details = { ...where, fieldPath: e.pathString() || null, position: e.position };
      throw e.kind === 'truncated' ? new TruncatedMessageError(e.message, details) : new CorruptMessageError(e.message, details);
    }
  }
}

/** `['payload', 'Turn', 'prompt_token_ids', '1']` -> `payload.Turn.prompt_token_ids[1]`. */
function joinPath(path: readonly string[]): string {
  let out = '';
  for (const seg of path) out += /^[0-9]+$/.test(seg) ? `[${seg}]` : out === '' ? seg : `.${seg}`;
  return out;
}

function describeInvalid(val: unknown, type: avro.Type): string {
  if ((type.typeName === 'record' || type.typeName === 'error') && val !== null && typeof val === 'object' && !Array.isArray(val)) {
    const declared = new Set((type as avro.types.RecordType).fields.map((f) => f.name));
    const extra = Object.keys(val).filter((k) => !declared.has(k) && (val as Record<string, unknown>)[k] !== undefined);
    if (extra.length > 0) return `undeclared field${extra.length > 1 ? 's' : ''} ${extra.join(', ')} (not in ${type.name})`;
  }
  let shown: string;
  if (val === undefined) shown = 'missing (undefined)';
  else {
    try {
      shown = JSON.stringify(val) ?? String(val);
    } catch {
      shown = String(val);
    }
    if (shown.length > 80) shown = `${shown.slice(0, 77)}...`;
  }
  const expected = type.typeName.startsWith('union') ? JSON.stringify(type.schema()).slice(0, 80) : type.branchName ?? type.typeName;
  return `${shown} is not a valid ${expected}`;
}

let shared: SchemaCodec | undefined;

/**
 * The codec for the shipped schemas (src/schemas), built on first use. Refuses to start when
 * types.generated.ts was generated from other versions than the ones on disk, because then the
 * TypeScript types would lie about what decoders return.
 */
export function defaultCodec(): SchemaCodec {
  if (shared) return shared;
  const codec = SchemaCodec.fromDir(SCHEMA_DIR);
  for (const [name, version] of Object.entries(LATEST_VERSIONS)) {
    const onDisk = codec.families.get(name)?.latest.version;
    if (onDisk !== version) {
      throw new SchemaError(
        SchemaErrorCode.TYPES_STALE,
        `types.generated.ts was generated for ${name} v${version}, but the newest on disk is v${onDisk ?? '(none)'}`,
        { schemaName: name, version: onDisk ?? null, hint: 'run `trajstore schemas codegen`' },
      );
    }
  }
  shared = codec;
  return shared;
}
