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
  payloadAs,
  SCHEMA_DIR,
  SchemaCodec,
  UnknownSchemaError,
  WrongSchemaError,
  type TrajectoryEvent,
} from '../../src/schemas/index.js';
import * as fx from './fixtures.js';

/**
 * An event as a newer reader sees it after an older version wrote it: the fields that version
 * lacks take their defaults (v2 added trace_id and tags, v3 a Turn's prompt_images and
 * image_processing), and schema_version says who wrote it.
 */
function asWrittenBy(event: TrajectoryEvent, writerVersion: number): TrajectoryEvent {
  let out: TrajectoryEvent = { ...event, schema_version: writerVersion };
  if (writerVersion < 2) out = { ...out, trace_id: null, tags: {} };
  const p = out.payload;
  if (writerVersion < 3 && 'Turn' in p) out = { ...out, payload: { Turn: { ...p.Turn, prompt_images: [], image_processing: null } } };
  return out;
}

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
    for (const writerVersion of [1, 2]) {
      test(`${name} written with trajectory_event v${writerVersion} decodes under v3 with the new fields defaulted`, () => {
        const bytes = encodeTrajectoryEvent(event, { writerVersion });
        const m = decodeMessage(bytes);
        assert.equal(m.schema, 'trajectory_event');
        assert.equal(m.writerVersion, writerVersion);
        // The reader fills in the defaults of every field the writer lacked; all else is kept.
        assert.deepEqual(fx.plain(decodeTrajectoryEvent(bytes)), fx.plain(asWrittenBy(event, writerVersion)));
      });
    }
  }

  test('an old (v2) Turn reads as a text prompt: no images, no image settings', () => {
    const t = payloadAs(decodeTrajectoryEvent(encodeTrajectoryEvent(fx.turn, { writerVersion: 2 })), 'Turn')!;
    assert.deepEqual(t.prompt_images, []);
    assert.equal(t.image_processing, null);
    assert.equal(t.request_id, payloadAs(fx.turn, 'Turn')!.request_id);
  });

  test('v1 bytes are exactly what the v1 schema alone writes (an old producer’s message)', () => {
    const v1 = defaultCodec().families.get('trajectory_event')!.versions[0]!;
    const { trace_id: _t, tags: _g, ...oldShape } = { ...fx.turn, schema_version: 1 };
    const oldProducer = Buffer.concat([Buffer.from([0xc3, 0x01]), v1.fingerprint, v1.type.toBuffer(oldShape)]);
    assert.ok(encodeTrajectoryEvent(fx.turn, { writerVersion: 1 }).equals(oldProducer));
    assert.equal(decodeTrajectoryEvent(oldProducer).trace_id, null);
  });

  test('v2 bytes are exactly what the v2 schema alone writes (a producer from before images were recorded)', () => {
    const v2 = defaultCodec().families.get('trajectory_event')!.versions[1]!;
    const { prompt_images: _i, image_processing: _p, ...oldTurn } = payloadAs(fx.turn, 'Turn')!;
    const oldProducer = Buffer.concat([Buffer.from([0xc3, 0x01]), v2.fingerprint, v2.type.toBuffer({ ...fx.turn, schema_version: 2, payload: { Turn: oldTurn } })]);
    assert.ok(encodeTrajectoryEvent(fx.turn, { writerVersion: 2 }).equals(oldProducer));
  });

  test('a future v4 that adds a defaulted field reads v1, v2 and v3 messages written today', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trajstore-v4-'));
    cpSync(SCHEMA_DIR, dir, { recursive: true, filter: (src) => !src.endsWith('.ts') });
    const v3 = JSON.parse(readFileSync(join(dir, 'trajectory_event', 'v3.avsc'), 'utf8')) as { fields: unknown[] };
    v3.fields.splice(v3.fields.length - 1, 0, { name: 'attempt', type: 'int', default: 0, doc: 'retry number' });
    writeFileSync(join(dir, 'trajectory_event', 'v4.avsc'), JSON.stringify(v3, null, 2));
    const future = SchemaCodec.fromDir(dir);
    for (const writerVersion of [1, 2, 3]) {
      const bytes = encodeTrajectoryEvent(fx.turn, { writerVersion });
      const m = future.decode(bytes, { expect: 'trajectory_event' });
      assert.equal(m.writerVersion, writerVersion);
      const value = m.value as Record<string, unknown>;
      assert.equal(value.attempt, 0);
      assert.equal(value.seq, fx.turn.seq);
      assert.deepEqual(fx.plain(value.payload), fx.plain(asWrittenBy(fx.turn, writerVersion).payload));
    }
  });

  test('a message from a newer schema than this build knows is an UnknownSchemaError, with its fingerprint', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trajstore-newer-'));
    cpSync(SCHEMA_DIR, dir, { recursive: true, filter: (src) => !src.endsWith('.ts') });
    const v3 = JSON.parse(readFileSync(join(dir, 'trajectory_event', 'v3.avsc'), 'utf8')) as { fields: unknown[] };
    v3.fields.push({ name: 'attempt', type: 'int', default: 0 });
    writeFileSync(join(dir, 'trajectory_event', 'v4.avsc'), JSON.stringify(v3));
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
