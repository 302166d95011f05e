import avro from 'avsc';

/**
 * avsc types that are faster for our hot arrays and safe on hostile bytes, plugged in through
 * avsc's `typeHook` option (registry.ts). Everything not overridden here (validation, encoding
 * of other types, schema resolution, schema export) is avsc's own, inherited.
 *
 * Speed: a Turn is mostly token ids and logprobs (1,280 ints and 256 floats in the benchmark's
 * event). avsc reads and writes arrays item by item through a virtual `_read`/`_write` and a
 * `Tap` method per item; `array<int>` and `array<float>` here do it in one tight loop over the
 * buffer. The bytes are identical to avsc's (standard zig-zag varints, one block, then the 0
 * terminator; test/schemas/codec.test.ts compares them).
 *
 * Safety: avsc trusts its input. It sizes arrays from the block count it reads, so a corrupt
 * count of 2^31 makes it loop two billion times and allocate gigabytes. Here every array and
 * map checks each block's count against the bytes that remain (an item takes at least one
 * byte, or `minBytes` of its type) before looping, so decoding is linear in the message size
 * whatever the bytes say. Scalars are strict where avsc is lenient: an `int` outside 32 bits or
 * a boolean byte other than 0/1 is an error, not a wrong value. With that, a successful decode
 * of the newest version is a value that passes `type.isValid` (the fuzz tests assert it).
 *
 * Resolvers: avsc lends a type's `_read` to the resolver it builds for an older writer
 * (`resolver._read = this._read`), where the writer's items may differ (an int array read as
 * float). The array fast paths run only when `this` is the type itself and defer to avsc's
 * generic loop otherwise; the codec runs its bounds guard (guard.ts) before decoding any older
 * version, so that path is covered too.
 */

interface Tap {
  buf: Buffer;
  pos: number;
  readLong(): number;
  readInt(): number;
  readString(): string | undefined;
  skipLong(): void;
  writeLong(n: number): void;
  writeInt(n: number): void;
  writeFloat(f: number): void;
}

interface Readable {
  _read(tap: Tap): unknown;
}

type Ctor = new (schema: unknown, opts: unknown) => avro.Type;
type ProtoWith<T> = { prototype: T };

const AvroArray = avro.types.ArrayType as unknown as Ctor & ProtoWith<{ _read(this: unknown, tap: Tap): unknown[] }>;
const AvroMap = avro.types.MapType as unknown as Ctor;
const AvroInt = avro.types.IntType as unknown as new () => avro.Type;
const AvroBoolean = avro.types.BooleanType as unknown as new () => avro.Type;

/** Zero-byte items (null, empty records) are capped at this many per array or map. */
export const MAX_ZERO_BYTE_ITEMS = 1 << 20;

function invalid(val: unknown, what: string): never {
  throw new Error(`invalid ${JSON.stringify(what)}: ${JSON.stringify(val)}`);
}

/** Block count of an array or map; a negative count is followed by the block's byte size (skipped). */
function blockCount(tap: Tap): number {
  const n = tap.readLong();
  if (n >= 0) return n;
  tap.skipLong();
  return -n;
}

function checkBlock(n: number, minItemBytes: number, tap: Tap, what: string): void {
  const room = tap.buf.length - tap.pos;
  if (minItemBytes > 0 ? n * minItemBytes > room : n > MAX_ZERO_BYTE_ITEMS) {
    throw new RangeError(`${what} block of ${n} items cannot fit in the ${Math.max(0, room)} bytes left`);
  }
}

/** The fewest bytes a value of the type can encode to. */
export function minBytes(type: avro.Type, seen: Set<avro.Type> = new Set()): number {
  switch (type.typeName) {
    case 'null':
      return 0;
    case 'float':
      return 4;
    case 'double':
      return 8;
    case 'fixed':
      return (type as avro.types.FixedType).size;
    case 'record':
    case 'error': {
      if (seen.has(type)) return 0; // recursion ends in some 1-byte union branch; 0 is a safe lower bound
      seen.add(type);
      let n = 0;
      for (const f of (type as avro.types.RecordType).fields) n += minBytes(f.type, seen);
      seen.delete(type);
      return n;
    }
    default:
      if (type.typeName.startsWith('logical:')) return minBytes((type as avro.types.LogicalType).underlyingType, seen);
      return 1; // boolean, int, long, string, bytes, enum, array, map, union
  }
}

const minItemBytesCache = new WeakMap<avro.Type, number>();

function minItemBytes(items: avro.Type): number {
  let n = minItemBytesCache.get(items);
  if (n === undefined) {
    n = minBytes(items);
    minItemBytesCache.set(items, n);
  }
  return n;
}

class IntArrayType extends AvroArray {
  _read(tap: Tap): number[] {
    if (!(this instanceof IntArrayType)) return AvroArray.prototype._read.call(this, tap) as number[];
    const buf = tap.buf;
    let out: number[] | undefined;
    let i = 0;
    for (let n = blockCount(tap); n !== 0; n = blockCount(tap)) {
      checkBlock(n, 1, tap, 'array<int>');
      let p = tap.pos;
      if (out === undefined) out = new Array<number>(n);
      for (const stop = i + n; i < stop; i++) {
        let b = buf[p++]!;
        let z = b & 0x7f;
        if (b & 0x80) {
          b = buf[p++]!;
          z |= (b & 0x7f) << 7;
          if (b & 0x80) {
            b = buf[p++]!;
            z |= (b & 0x7f) << 14;
            if (b & 0x80) {
              b = buf[p++]!;
              z |= (b & 0x7f) << 21;
              if (b & 0x80) {
                b = buf[p++]!;
                if (b > 0x0f) throw new RangeError('int varint does not fit in 32 bits');
                z |= b << 28;
              }
            }
          }
        }
        out[i] = (z >>> 1) ^ -(z & 1);
      }
      tap.pos = p;
    }
    return out ?? [];
  }

  _write(tap: Tap, val: unknown): void {
    if (!Array.isArray(val)) invalid(val, 'array<int>');
    const n = val.length;
    if (n) {
      tap.writeLong(n);
      const buf = tap.buf;
      let p = tap.pos;
      if (p + 5 * n <= buf.length) {
        for (let i = 0; i < n; i++) {
          const v = val[i] as number;
          if (v !== (v | 0)) invalid(v, 'int');
          let z = ((v << 1) ^ (v >> 31)) >>> 0;
          while (z > 0x7f) {
            buf[p++] = (z & 0x7f) | 0x80;
            z >>>= 7;
          }
          buf[p++] = z;
        }
        tap.pos = p;
      } else {
        // Might not fit: avsc's own writes, which overflow silently so the caller can grow the buffer.
        for (let i = 0; i < n; i++) {
          const v = val[i] as number;
          if (v !== (v | 0)) invalid(v, 'int');
          tap.writeInt(v);
        }
      }
    }
    tap.writeLong(0);
  }
}

class FloatArrayType extends AvroArray {
  _read(tap: Tap): number[] {
    if (!(this instanceof FloatArrayType)) return AvroArray.prototype._read.call(this, tap) as number[];
    const buf = tap.buf;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let out: number[] | undefined;
    let i = 0;
    for (let n = blockCount(tap); n !== 0; n = blockCount(tap)) {
      checkBlock(n, 4, tap, 'array<float>');
      let p = tap.pos;
      if (out === undefined) out = new Array<number>(n);
      for (const stop = i + n; i < stop; i++, p += 4) out[i] = view.getFloat32(p, true);
      tap.pos = p;
    }
    return out ?? [];
  }

  _write(tap: Tap, val: unknown): void {
    if (!Array.isArray(val)) invalid(val, 'array<float>');
    const n = val.length;
    if (n) {
      tap.writeLong(n);
      const buf = tap.buf;
      let p = tap.pos;
      if (p + 4 * n <= buf.length) {
        const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
        for (let i = 0; i < n; i++, p += 4) {
          const v = val[i];
          if (typeof v !== 'number') invalid(v, 'float');
          view.setFloat32(p, v, true);
        }
        tap.pos = p;
      } else {
        for (let i = 0; i < n; i++) {
          const v = val[i];
          if (typeof v !== 'number') invalid(v, 'float');
          tap.writeFloat(v);
        }
      }
    }
    tap.writeLong(0);
  }
}

/** Any other array: avsc's loop, with each block's count bounded first. */
class BoundedArrayType extends AvroArray {
  _read(tap: Tap): unknown[] {
    if (!(this instanceof BoundedArrayType)) return AvroArray.prototype._read.call(this, tap);
    const items = (this as unknown as { itemsType: avro.Type & Readable }).itemsType;
    const min = minItemBytes(items);
    const out: unknown[] = [];
    for (let n = blockCount(tap); n !== 0; n = blockCount(tap)) {
      checkBlock(n, min, tap, 'array');
      while (n-- > 0) out.push(items._read(tap));
    }
    return out;
  }
}

/**
 * Maps: avsc's loop with each block's count bounded (an entry takes at least its key's length
 * byte), and a `__proto__` key kept as data instead of re-pointing the object's prototype.
 * Works for resolvers too: it only uses `this.valuesType`, which a resolver also has.
 */
class BoundedMapType extends AvroMap {
  _read(tap: Tap): Record<string, unknown> {
    const values = (this as unknown as { valuesType: Readable }).valuesType;
    const out: Record<string, unknown> = {};
    for (let n = blockCount(tap); n !== 0; n = blockCount(tap)) {
      checkBlock(n, 1, tap, 'map');
      while (n-- > 0) {
        const key = tap.readString() as string;
        const value = values._read(tap);
        if (key === '__proto__') Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
        else out[key] = value;
      }
    }
    return out;
  }
}

class StrictIntType extends AvroInt {
  _read(tap: Tap): number {
    const n = tap.readInt();
    if (n !== (n | 0)) throw new RangeError(`int ${n} does not fit in 32 bits`);
    return n;
  }
}

class StrictBooleanType extends AvroBoolean {
  _read(tap: Tap): boolean {
    const b = tap.buf[tap.pos++];
    if (b !== undefined && b > 1) throw new RangeError(`boolean byte is ${b}, not 0 or 1`);
    return b === 1;
  }
}

function typeOf(schema: unknown): unknown {
  if (typeof schema === 'string') return schema;
  if (schema && typeof schema === 'object' && !Array.isArray(schema)) return (schema as Record<string, unknown>).type;
  return undefined;
}

/** avsc `typeHook`: the types above where they apply, avsc's own for everything else. */
export function hardenedTypeHook(schema: unknown, opts: unknown): avro.Type | undefined {
  // Leave logical types to avsc (none is registered today, but one could be).
  if (schema !== null && typeof schema === 'object' && 'logicalType' in schema) return undefined;
  const t = typeOf(schema);
  if (t === 'int') return new StrictIntType();
  if (t === 'boolean') return new StrictBooleanType();
  if (t === 'map') return new BoundedMapType(schema, opts);
  if (t === 'array') {
    const items = typeOf((schema as Record<string, unknown>).items);
    const plain = (s: unknown) => typeof s === 'string' || (s !== null && typeof s === 'object' && Object.keys(s).length === 1);
    if (items === 'int' && plain((schema as Record<string, unknown>).items)) return new IntArrayType(schema, opts);
    if (items === 'float' && plain((schema as Record<string, unknown>).items)) return new FloatArrayType(schema, opts);
    return new BoundedArrayType(schema, opts);
  }
  return undefined;
}
