import type avro from 'avsc';
import { MAX_ZERO_BYTE_ITEMS, minBytes } from './avsc-types.js';

/**
 * A bounds-checking walk over Avro binary data that says precisely what is wrong with a message
 * and where (`payload.Turn.prompt_token_ids[17]`, byte 1234), without trusting a single length.
 *
 * Why it exists: avsc's reader trusts its input. It reads past the end of the buffer silently
 * (returning zeros) and sizes arrays from the block count it reads, so a corrupt count of 2^31
 * makes it loop two billion times: a hang or an out-of-memory crash from one bad message. The
 * codec uses this walk (1) before decoding a message written with an older schema version,
 * whose avsc resolvers do not bound their loops, and (2) after any failed decode of the newest
 * version, to turn "avsc threw" into a TruncatedMessageError or CorruptMessageError with a field
 * path. (The newest version decodes first without it: the avsc types of avsc-types.ts bound
 * their own loops.)
 *
 * It walks the writer schema over the bytes and checks every length, count, index and varint
 * against the bytes that remain, in time linear in the message size (every array item and map
 * entry takes at least one byte; item types that take none are capped at MAX_ZERO_BYTE_ITEMS).
 * It rejects what avsc would turn into a wrong value without complaint: an `int` outside 32
 * bits, a `long` outside JavaScript's safe integers, a boolean byte other than 0 or 1, and bytes
 * left over after the value.
 *
 * Compiled once per writer schema into closures; the int-array loop (token ids) is specialised.
 */

export type FaultKind = 'truncated' | 'corrupt';

/** Thrown inside the guard; the codec turns it into a TruncatedMessageError or CorruptMessageError. */
export class WireFault {
  /** Field path segments, innermost last. */
  readonly path: string[] = [];
  constructor(
    readonly kind: FaultKind,
    readonly message: string,
    readonly position: number,
  ) {}

  pathString(): string {
    let out = '';
    for (const seg of this.path) out += seg.startsWith('[') || out === '' ? seg : `.${seg}`;
    return out;
  }
}

// The guard's cursor. Module state instead of arguments keeps the compiled closures small and
// fast; a check runs synchronously from start to end, so it is never shared between two checks.
let buf: Uint8Array = new Uint8Array(0);
let pos = 0;
let end = 0;
/** A claimed length above this is corrupt rather than truncated. */
let maxLength = 0;
/** Length of the last string/bytes skipped (map keys, for error paths). */
let lastLength = 0;

type Skip = () => void;

function truncated(what: string): never {
  throw new WireFault('truncated', `message ends inside ${what}`, pos);
}

/** A length or count that points past the end: truncated if it is plausible, corrupt if not. */
function pastEnd(what: string, claimed: number, available: number, at: number): never {
  const kind: FaultKind = claimed <= maxLength ? 'truncated' : 'corrupt';
  throw new WireFault(kind, `${what} declares ${claimed} but only ${available} remain`, at);
}

function corrupt(message: string, at: number = pos): never {
  throw new WireFault('corrupt', message, at);
}

/** Skips a zig-zag varint that must fit in a signed 32-bit int (at most 5 bytes). */
function skipInt(): void {
  const start = pos;
  for (let i = 0; i < 5; i++) {
    if (pos >= end) truncated('an int');
    const b = buf[pos++]!;
    if (b < 0x80) {
      if (i === 4 && b > 0x0f) corrupt('int does not fit in 32 bits', start);
      return;
    }
  }
  corrupt('int varint longer than 5 bytes', start);
}

/** Reads a zig-zag varint long; it must be a JavaScript safe integer (what avsc can represent). */
function readLong(): number {
  const start = pos;
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) truncated('a long');
    const b = buf[pos++]!;
    value += (b & 0x7f) * mul;
    if (b < 0x80) {
      if (i >= 7) return readLongExact(start);
      return value % 2 === 1 ? -(value + 1) / 2 : value / 2;
    }
    mul *= 128;
  }
  return corrupt('long varint longer than 10 bytes', start);
}

/** 8..10-byte varints: exact arithmetic, so the safe-integer boundary is judged correctly. */
function readLongExact(start: number): number {
  let zz = 0n;
  let shift = 0n;
  for (let p = start; p < pos; p++) {
    zz |= BigInt(buf[p]! & 0x7f) << shift;
    shift += 7n;
  }
  const n = zz & 1n ? -((zz + 1n) >> 1n) : zz >> 1n;
  if (n > BigInt(Number.MAX_SAFE_INTEGER) || n < BigInt(Number.MIN_SAFE_INTEGER)) {
    corrupt('long outside the safe integer range', start);
  }
  return Number(n);
}

function skipLong(): void {
  readLong();
}

function skipFixedSize(size: number, what: string): void {
  if (end - pos < size) truncated(what);
  pos += size;
}

function skipFloat(): void {
  skipFixedSize(4, 'a float');
}

function skipDouble(): void {
  skipFixedSize(8, 'a double');
}

function skipBoolean(): void {
  if (pos >= end) truncated('a boolean');
  const b = buf[pos]!;
  if (b > 1) corrupt(`boolean byte is ${b}, not 0 or 1`);
  pos++;
}

function skipNull(): void {}

/** string and bytes: a length, then that many bytes. */
function skipBytes(): void {
  const at = pos;
  const len = readLong();
  if (len < 0) corrupt(`negative length ${len}`, at);
  if (len > end - pos) pastEnd('length', len, end - pos, at);
  pos += len;
  lastLength = len;
}

/**
 * Reads one block header of an array or map. Returns the item count (0 ends the sequence) and
 * checks it against the bytes that remain, given the smallest possible encoding of one item.
 */
function readBlockCount(minItemBytes: number, budget: { items: number }): number {
  const at = pos;
  let count = readLong();
  if (count === 0) return 0;
  if (count < 0) {
    // A negative count is followed by the block's size in bytes (lets readers skip blocks).
    count = -count;
    const sizeAt = pos;
    const size = readLong();
    if (size < 0) corrupt(`negative block size ${size}`, sizeAt);
    if (size > end - pos) pastEnd('block size', size, end - pos, sizeAt);
  }
  if (minItemBytes > 0) {
    const room = Math.floor((end - pos) / minItemBytes);
    if (count > room) pastEnd('item count', count, room, at);
  } else {
    budget.items -= count;
    if (budget.items < 0) corrupt(`more than ${MAX_ZERO_BYTE_ITEMS} zero-byte items`, at);
  }
  return count;
}

function withSegment(fault: unknown, segment: string): unknown {
  if (fault instanceof WireFault) fault.path.unshift(segment);
  return fault;
}

function compileArray(itemType: avro.Type, compile: (t: avro.Type) => Skip): Skip {
  const min = minBytes(itemType);
  // Tight loops for the arrays that dominate a Turn; the generic loop for everything else.
  if (itemType.typeName === 'int') {
    return () => {
      const budget = { items: MAX_ZERO_BYTE_ITEMS };
      let i = 0;
      try {
        for (let n = readBlockCount(min, budget); n !== 0; n = readBlockCount(min, budget)) {
          // Locals, not the module cursor, in the hottest loop of all (token ids).
          const b = buf;
          const e = end;
          let p = pos;
          for (const stop = i + n; i < stop; i++) {
            if (e - p >= 5) {
              if (b[p++]! & 0x80 && b[p++]! & 0x80 && b[p++]! & 0x80 && b[p++]! & 0x80 && b[p++]! > 0x0f) {
                pos = p - 1;
                corrupt('int does not fit in 32 bits');
              }
            } else {
              pos = p;
              skipInt();
              p = pos;
            }
          }
          pos = p;
        }
      } catch (e) {
        throw withSegment(e, `[${i}]`);
      }
    };
  }
  if (itemType.typeName === 'long') {
    return () => {
      const budget = { items: MAX_ZERO_BYTE_ITEMS };
      let i = 0;
      try {
        for (let n = readBlockCount(min, budget); n !== 0; n = readBlockCount(min, budget)) {
          for (const stop = i + n; i < stop; i++) skipLong();
        }
      } catch (e) {
        throw withSegment(e, `[${i}]`);
      }
    };
  }
  if (itemType.typeName === 'float' || itemType.typeName === 'double') {
    const width = itemType.typeName === 'float' ? 4 : 8;
    return () => {
      const budget = { items: MAX_ZERO_BYTE_ITEMS };
      // readBlockCount already proved count * width bytes remain.
      for (let n = readBlockCount(min, budget); n !== 0; n = readBlockCount(min, budget)) pos += n * width;
    };
  }
  const item = compile(itemType);
  return () => {
    const budget = { items: MAX_ZERO_BYTE_ITEMS };
    let i = 0;
    try {
      for (let n = readBlockCount(min, budget); n !== 0; n = readBlockCount(min, budget)) {
        for (const stop = i + n; i < stop; i++) item();
      }
    } catch (e) {
      throw withSegment(e, `[${i}]`);
    }
  };
}

function compileMap(valueType: avro.Type, compile: (t: avro.Type) => Skip): Skip {
  const value = compile(valueType);
  const min = 1 + minBytes(valueType);
  return () => {
    const budget = { items: MAX_ZERO_BYTE_ITEMS };
    let keyAt = -1;
    let keyLength = 0;
    try {
      for (let n = readBlockCount(min, budget); n !== 0; n = readBlockCount(min, budget)) {
        while (n-- > 0) {
          keyAt = -1;
          skipBytes();
          keyLength = lastLength;
          keyAt = pos - keyLength;
          value();
        }
      }
    } catch (e) {
      const key =
        keyAt < 0 ? '<key>' : JSON.stringify(Buffer.from(buf.buffer, buf.byteOffset + keyAt, Math.min(keyLength, 64)).toString('utf8'));
      throw withSegment(e, `[${key}]`);
    }
  };
}

/** Compiles a checker for values of `type` (a writer schema). */
export function compileGuard(root: avro.Type): (bytes: Uint8Array, start: number, maxMessageBytes: number) => void {
  const cache = new Map<avro.Type, Skip>();

  const compile = (type: avro.Type): Skip => {
    const cached = cache.get(type);
    if (cached) return cached;
    // Placeholder first, so a recursive record refers to its own (finished) checker.
    let impl: Skip = () => {
      throw new Error('unreachable: guard used before compiled');
    };
    const forward: Skip = () => impl();
    cache.set(type, forward);
    impl = build(type);
    cache.set(type, impl);
    return impl;
  };

  const build = (type: avro.Type): Skip => {
    switch (type.typeName) {
      case 'null':
        return skipNull;
      case 'boolean':
        return skipBoolean;
      case 'int':
        return skipInt;
      case 'long':
        return skipLong;
      case 'float':
        return skipFloat;
      case 'double':
        return skipDouble;
      case 'string':
      case 'bytes':
        return skipBytes;
      case 'fixed': {
        const size = (type as avro.types.FixedType).size;
        return () => skipFixedSize(size, 'a fixed');
      }
      case 'enum': {
        const count = (type as avro.types.EnumType).symbols.length;
        return () => {
          const at = pos;
          const index = readLong();
          if (index < 0 || index >= count) corrupt(`enum index ${index} out of range (${count} symbols)`, at);
        };
      }
      case 'array':
        return compileArray((type as avro.types.ArrayType).itemsType, compile);
      case 'map':
        return compileMap((type as avro.types.MapType).valuesType as avro.Type, compile);
      case 'union:wrapped':
      case 'union:unwrapped': {
        const branches = (type as avro.types.WrappedUnionType).types;
        const skips = branches.map((b) => compile(b));
        const names = branches.map((b) => b.branchName ?? b.typeName);
        // Only wrapped unions name their branch in the path: `payload.Turn.latency_ms`, but
        // `observation.sha256` rather than `observation.ObservationRef.sha256`.
        const labelled = branches.map((b) => type.typeName === 'union:wrapped' && (b.typeName === 'record' || b.typeName === 'error'));
        return () => {
          const at = pos;
          const index = readLong();
          if (index < 0 || index >= skips.length) corrupt(`union branch ${index} out of range (${skips.length} branches)`, at);
          if (!labelled[index]) return skips[index]!();
          try {
            skips[index]!();
          } catch (e) {
            throw withSegment(e, names[index]!);
          }
        };
      }
      case 'record':
      case 'error': {
        const fields = (type as avro.types.RecordType).fields;
        const skips = fields.map((f) => compile(f.type));
        const names = fields.map((f) => f.name);
        return () => {
          let i = 0;
          try {
            for (; i < skips.length; i++) skips[i]!();
          } catch (e) {
            throw withSegment(e, names[i]!);
          }
        };
      }
      default:
        if (type.typeName.startsWith('logical:')) return compile((type as avro.types.LogicalType).underlyingType);
        throw new Error(`guard: unsupported Avro type ${type.typeName}`);
    }
  };

  const check = compile(root);
  return (bytes, start, maxMessageBytes) => {
    buf = bytes;
    pos = start;
    end = bytes.length;
    maxLength = maxMessageBytes;
    try {
      check();
      if (pos !== end) corrupt(`${end - pos} bytes left over after the value`);
    } catch (e) {
      if (e instanceof WireFault) throw e;
      // A stack overflow from absurd nesting, or anything else unforeseen: still a bad message.
      throw new WireFault('corrupt', `unreadable: ${(e as Error)?.message ?? String(e)}`, pos);
    } finally {
      buf = EMPTY;
    }
  };
}

const EMPTY = new Uint8Array(0);
