/**
 * Hostile input: random, truncated and bit-flipped messages, and hand-made length bombs. Each
 * must yield a typed DecodeError or a valid value, never another exception, a crash or a hang.
 * Seeded PRNG: a failure message names the seed and case, so it reproduces.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  CorruptMessageError,
  DecodeError,
  defaultCodec,
  encodeDeadLetter,
  encodePolicyVersion,
  encodeTrainerStepMetrics,
  encodeTrajectoryEvent,
  SchemaCodec,
  TruncatedMessageError,
} from '../../src/schemas/index.js';
import * as fx from './fixtures.js';

const CASES = 10_000;
const SEED = 0x5eed;
/** One decode taking longer than this is treated as a hang (a normal one takes microseconds). */
const SLOW_MS = 250;

const codec = defaultCodec();

/** Valid messages of every family and every trajectory_event version: the corpus to damage. */
function corpus(): Buffer[] {
  const out: Buffer[] = [];
  for (const event of Object.values(fx.allTrajectoryEvents)) {
    out.push(encodeTrajectoryEvent(event));
    out.push(encodeTrajectoryEvent(event, { writerVersion: 1 }));
    out.push(encodeTrajectoryEvent(event, { writerVersion: 2 }));
  }
  out.push(encodePolicyVersion(fx.policyVersion), encodeTrainerStepMetrics(fx.trainerStepMetrics), encodeDeadLetter(fx.deadLetter));
  return out;
}

type Outcome = { kind: 'value' } | { kind: 'error'; error: DecodeError };

/** Decodes; a value must be valid for its schema, and anything thrown must be a DecodeError. */
function attempt(bytes: Buffer, label: string): Outcome {
  const start = performance.now();
  let outcome: Outcome;
  try {
    const m = codec.decode(bytes);
    const type = codec.families.get(m.schema)!.latest.type;
    const problems: string[] = [];
    const ok = type.isValid(m.value, { errorHook: (path: string[]) => problems.push(path.join('.')) });
    assert.ok(ok, `${label}: decoded a value that is not a valid ${m.schema} (bad at ${problems.join(', ')})`);
    outcome = { kind: 'value' };
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    assert.ok(err instanceof DecodeError, `${label}: threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
    assert.equal(err.retriable, false);
    assert.equal(err.byteLength, bytes.length, `${label}: error reports the wrong byte length`);
    outcome = { kind: 'error', error: err };
  }
  const ms = performance.now() - start;
  assert.ok(ms < SLOW_MS, `${label}: decoding took ${ms.toFixed(1)} ms`);
  return outcome;
}

describe('hostile input', { timeout: 180_000 }, () => {
  const messages = corpus();

  test(`${CASES} random messages each yield a typed error or a valid value`, () => {
    const rand = fx.prng(SEED);
    const counts = { value: 0, error: 0 };
    const headers = messages.map((m) => m.subarray(0, 10));
    for (let i = 0; i < CASES; i++) {
      const length = Math.floor(rand() ** 2 * 2048);
      const bytes = Buffer.alloc(length);
      for (let j = 0; j < length; j++) bytes[j] = Math.floor(rand() * 256);
      // Two thirds carry a real header, so the body decoder is what gets exercised.
      if (length >= 10 && i % 3 !== 0) headers[i % headers.length]!.copy(bytes, 0);
      counts[attempt(bytes, `seed ${SEED} random case ${i}`).kind]++;
    }
    assert.ok(counts.error > 0);
  });

  test(`${CASES} truncated messages each yield TRAJ_E_DECODE_TRUNCATED`, () => {
    const rand = fx.prng(SEED + 1);
    for (let i = 0; i < CASES; i++) {
      const source = messages[i % messages.length]!;
      const cut = Math.floor(rand() * source.length); // 0 .. length-1: always a strict prefix
      const outcome = attempt(Buffer.from(source.subarray(0, cut)), `seed ${SEED + 1} truncation case ${i} (message ${i % messages.length}, cut at ${cut})`);
      assert.equal(outcome.kind, 'error', `truncation case ${i}: a strict prefix decoded as a value`);
      if (outcome.kind === 'error') {
        assert.ok(outcome.error instanceof TruncatedMessageError, `truncation case ${i}: ${outcome.error.code}: ${outcome.error.message}`);
      }
    }
  });

  test(`${CASES} bit-flipped messages each yield a typed error or a valid value`, () => {
    const rand = fx.prng(SEED + 2);
    const counts = { value: 0, error: 0 };
    for (let i = 0; i < CASES; i++) {
      const bytes = Buffer.from(messages[i % messages.length]!);
      const flips = 1 + Math.floor(rand() * 3);
      for (let f = 0; f < flips; f++) {
        const bit = Math.floor(rand() * bytes.length * 8);
        bytes[bit >> 3]! ^= 1 << (bit & 7);
      }
      counts[attempt(bytes, `seed ${SEED + 2} bit-flip case ${i}`).kind]++;
    }
    // Most flips land in text or numbers and still decode; many break structure. Both must occur.
    assert.ok(counts.value > 0 && counts.error > 0, JSON.stringify(counts));
  });
});

/** Zig-zag varint of a (possibly huge) long. */
function varint(n: bigint): Buffer {
  let z = n >= 0n ? n << 1n : ((-n) << 1n) - 1n;
  const out: number[] = [];
  while (z > 0x7fn) {
    out.push(Number(z & 0x7fn) | 0x80);
    z >>= 7n;
  }
  out.push(Number(z));
  return Buffer.from(out);
}

describe('length bombs', () => {
  // A small schema family of our own, with the shapes an attacker would aim at; v1 and v2 so
  // both decode paths (newest version first, older version through the guard) are covered.
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-bombs-'));
  const fields = [
    { name: 'ints', type: { type: 'array', items: 'int' } },
    { name: 'floats', type: { type: 'array', items: 'float' } },
    { name: 'strings', type: { type: 'array', items: 'string' } },
    { name: 'nulls', type: { type: 'array', items: 'null' } },
    { name: 'labels', type: { type: 'map', values: 'string' } },
    { name: 'text', type: 'string' },
  ];
  mkdirSync(join(dir, 'bomb'));
  writeFileSync(join(dir, 'bomb', 'v1.avsc'), JSON.stringify({ type: 'record', name: 'Bomb', fields }));
  writeFileSync(
    join(dir, 'bomb', 'v2.avsc'),
    JSON.stringify({ type: 'record', name: 'Bomb', fields: [...fields, { name: 'extra', type: ['null', 'string'], default: null }] }),
  );
  const bombs = SchemaCodec.fromDir(dir);
  const family = bombs.families.get('bomb')!;
  /** The body of a message whose fields are all empty except `field`; v2 adds `extra: null`. */
  const body = (version: number, field: string, bytes: Buffer): Buffer[] => [
    ...fields.map((f) => (f.name === field ? bytes : f.name === 'text' ? varint(0n) : Buffer.from([0]))),
    ...(version >= 2 ? [Buffer.from([0])] : []),
  ];

  const cases: Array<[string, string, Buffer]> = [
    ['2^31 ints', 'ints', Buffer.concat([varint(2n ** 31n), Buffer.from([1, 2, 3])])],
    ['2^62 ints', 'ints', Buffer.concat([varint(2n ** 62n), Buffer.from([1])])],
    ['2^31 floats', 'floats', Buffer.concat([varint(2n ** 31n), Buffer.alloc(8)])],
    ['2^40 strings', 'strings', Buffer.concat([varint(2n ** 40n), Buffer.from([0, 0])])],
    ['2^40 nulls (zero-byte items)', 'nulls', Buffer.concat([varint(2n ** 40n), Buffer.from([0])])],
    ['2^20+1 nulls (zero-byte items)', 'nulls', Buffer.concat([varint(2n ** 20n + 1n), Buffer.from([0])])],
    ['2^31 map entries', 'labels', Buffer.concat([varint(2n ** 31n), Buffer.from([2, 0x61, 0])])],
    ['negative block count with a huge block size', 'ints', Buffer.concat([varint(-(2n ** 30n)), varint(2n ** 50n), Buffer.from([0])])],
    ['2^50-byte string', 'text', Buffer.concat([varint(2n ** 50n), Buffer.from('abc')])],
    ['negative string length', 'text', varint(-5n)],
    ['varint longer than 10 bytes', 'text', Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])],
    ['int wider than 32 bits', 'ints', Buffer.concat([varint(1n), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]), Buffer.from([0])])],
  ];

  for (const version of family.versions) {
    for (const [name, field, bytes] of cases) {
      test(`${name} in a v${version.version} message: typed error at once, no hang, no allocation spike`, () => {
        const message = Buffer.concat([Buffer.from([0xc3, 0x01]), version.fingerprint, ...body(version.version, field, bytes)]);
        const heapBefore = process.memoryUsage().heapUsed;
        const start = performance.now();
        assert.throws(
          () => bombs.decode(message),
          (e: unknown) =>
            e instanceof DecodeError && (e instanceof CorruptMessageError || e instanceof TruncatedMessageError) && e.fieldPath !== null && e.fieldPath.startsWith(field),
        );
        assert.ok(performance.now() - start < SLOW_MS);
        assert.ok(process.memoryUsage().heapUsed - heapBefore < 64 * 1024 * 1024);
      });
    }
  }

  test('an array split into 5,000 one-item blocks (legal Avro) decodes, in both versions', () => {
    const blocks = Buffer.concat([...Array.from({ length: 5000 }, () => Buffer.from([2, 2])), Buffer.from([0])]);
    for (const version of family.versions) {
      const message = Buffer.concat([Buffer.from([0xc3, 0x01]), version.fingerprint, ...body(version.version, 'ints', blocks)]);
      const value = bombs.decode(message).value as { ints: number[] };
      assert.equal(value.ints.length, 5000);
      assert.ok(value.ints.every((x) => x === 1));
    }
  });

  test('a corrupt length names the field it was found in', () => {
    const v2 = family.latest;
    const message = Buffer.concat([Buffer.from([0xc3, 0x01]), v2.fingerprint, ...body(v2.version, 'strings', Buffer.concat([varint(3n), varint(1000n), Buffer.from('x')]))]);
    assert.throws(() => bombs.decode(message), (e: unknown) => e instanceof TruncatedMessageError && e.fieldPath === 'strings[0]');
  });
});
