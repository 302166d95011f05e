import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  decodeMessage,
  decodePolicyVersion,
  decodeTrajectoryEvent,
  defaultCodec,
  encodePolicyVersion,
  encodeTrajectoryEvent,
  SCHEMA_DIR,
  SchemaCodec,
  UnknownSchemaError,
  WrongSchemaError,
} from '../../src/schemas/index.js';
import * as fx from './fixtures.js';

describe('schema evolution', () => {
  test('every shipped version of every family is registered by its fingerprint', () => {
    const codec = defaultCodec();
    const lock = JSON.parse(readFileSync(join(SCHEMA_DIR, 'fingerprints.json'), 'utf8')) as {
      schemas: Record<string, Record<string, { fingerprint: string }>>;
    };
    for (const [name, pins] of Object.entries(lock.schemas)) {
      for (const [v, pin] of Object.entries(pins)) {
        assert.deepEqual(codec.lookup(pin.fingerprint), { schema: name, version: Number(v.slice(1)) });
      }
    }
  });

  for (const [name, event] of Object.entries(fx.allTrajectoryEvents)) {
    test(`${name} written with trajectory_event v1 decodes under v2 with the new fields defaulted`, () => {
      const v1 = encodeTrajectoryEvent(event, { writerVersion: 1 });
      const m = decodeMessage(v1);
      assert.equal(m.schema, 'trajectory_event');
      assert.equal(m.writerVersion, 1);
      const decoded = decodeTrajectoryEvent(v1);
      // v1 has no trace_id or tags: the v2 reader fills in their defaults; all else is kept.
      assert.deepEqual(fx.plain(decoded), fx.plain({ ...event, schema_version: 1, trace_id: null, tags: {} }));
    });
  }

  test('v1 bytes are exactly what the v1 schema alone writes (an old producer’s message)', () => {
    const v1 = defaultCodec().families.get('trajectory_event')!.versions[0]!;
    const { trace_id: _t, tags: _g, ...oldShape } = { ...fx.turn, schema_version: 1 };
    const oldProducer = Buffer.concat([Buffer.from([0xc3, 0x01]), v1.fingerprint, v1.type.toBuffer(oldShape)]);
    assert.ok(encodeTrajectoryEvent(fx.turn, { writerVersion: 1 }).equals(oldProducer));
    assert.equal(decodeTrajectoryEvent(oldProducer).trace_id, null);
  });

  test('a future v3 that adds a defaulted field reads v1 and v2 messages written today', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trajstore-v3-'));
    cpSync(SCHEMA_DIR, dir, { recursive: true, filter: (src) => !src.endsWith('.ts') });
    const v2 = JSON.parse(readFileSync(join(dir, 'trajectory_event', 'v2.avsc'), 'utf8')) as { fields: unknown[] };
    v2.fields.splice(v2.fields.length - 1, 0, { name: 'attempt', type: 'int', default: 0, doc: 'retry number' });
    writeFileSync(join(dir, 'trajectory_event', 'v3.avsc'), JSON.stringify(v2, null, 2));
    const future = SchemaCodec.fromDir(dir);
    for (const writerVersion of [1, 2]) {
      const bytes = encodeTrajectoryEvent(fx.turn, { writerVersion });
      const m = future.decode(bytes, { expect: 'trajectory_event' });
      assert.equal(m.writerVersion, writerVersion);
      const value = m.value as Record<string, unknown>;
      assert.equal(value.attempt, 0);
      assert.equal(value.seq, fx.turn.seq);
      assert.deepEqual(fx.plain(value.payload), fx.plain(fx.turn.payload));
    }
  });

  test('a message from a newer schema than this build knows is an UnknownSchemaError, with its fingerprint', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trajstore-newer-'));
    cpSync(SCHEMA_DIR, dir, { recursive: true, filter: (src) => !src.endsWith('.ts') });
    const v2 = JSON.parse(readFileSync(join(dir, 'trajectory_event', 'v2.avsc'), 'utf8')) as { fields: unknown[] };
    v2.fields.push({ name: 'attempt', type: 'int', default: 0 });
    writeFileSync(join(dir, 'trajectory_event', 'v3.avsc'), JSON.stringify(v2));
    const newer = SchemaCodec.fromDir(dir);
    const bytes = newer.encode('trajectory_event', { ...fx.turn, attempt: 2 });
    assert.throws(
      () => decodeTrajectoryEvent(bytes),
      (e: unknown) =>
        e instanceof UnknownSchemaError &&
        e.code === 'TRAJ_E_DECODE_UNKNOWN_SCHEMA' &&
        e.fingerprint === bytes.toString('hex', 2, 10) &&
        e.byteLength === bytes.length &&
        /upgrade the consumer/.test(e.hint ?? ''),
    );
  });

  test('a message of another family on the wrong topic is a WrongSchemaError naming both', () => {
    assert.throws(
      () => decodeTrajectoryEvent(encodePolicyVersion(fx.policyVersion)),
      (e: unknown) => e instanceof WrongSchemaError && e.schemaName === 'policy_version' && /expected a trajectory_event/.test(e.message),
    );
    assert.throws(() => decodePolicyVersion(encodeTrajectoryEvent(fx.turn)), WrongSchemaError);
  });
});
