import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import {
  buildDeadLetter,
  DEAD_LETTER_HEADERS,
  decodeDeadLetter,
  decodeTrajectoryEvent,
  DecodeError,
  encodeTrajectoryEvent,
  TruncatedMessageError,
} from '../../src/schemas/index.js';
import { TrajstoreError } from '../../src/util/errors.js';
import * as fx from './fixtures.js';

function decodeFailure(bytes: Buffer): DecodeError {
  try {
    decodeTrajectoryEvent(bytes);
  } catch (e) {
    if (e instanceof DecodeError) return e;
    throw e;
  }
  throw new Error('decoded');
}

describe('dead letters', () => {
  const original = encodeTrajectoryEvent(fx.turn).subarray(0, 200);
  const error = decodeFailure(original);
  const source = { topic: 'trajectories', partition: 3, offset: '1234567', key: Buffer.from('grp-000042'), timestamp: '1763900000500' };

  test('a decode error carries what routing needs: code, reason, fingerprint, byte length', () => {
    assert.ok(error instanceof TruncatedMessageError);
    assert.equal(error.code, 'TRAJ_E_DECODE_TRUNCATED');
    assert.equal(error.retriable, false);
    assert.equal(error.byteLength, 200);
    assert.equal(error.fingerprint, original.toString('hex', 2, 10));
    assert.equal(error.schemaName, 'trajectory_event');
    assert.ok(error.reason.length > 0);
    assert.ok(error instanceof TrajstoreError);
  });

  test('the dead-letter message keeps the original bytes and key, and says why and where from', () => {
    const dl = buildDeadLetter({ value: original, error, source, rejectedBy: 'clickhouse-sink', now: 1_763_900_001_000 });
    assert.deepEqual(dl.key, source.key);
    const record = decodeDeadLetter(dl.value);
    assert.ok(record.original_bytes.equals(original));
    assert.equal(record.original_byte_length, 200);
    assert.equal(record.original_truncated, false);
    assert.equal(record.original_sha256, createHash('sha256').update(original).digest('hex'));
    assert.equal(record.error_code, 'TRAJ_E_DECODE_TRUNCATED');
    assert.equal(record.reason, error.message);
    assert.equal(record.writer_fingerprint, error.fingerprint);
    assert.equal(record.schema_name, 'trajectory_event');
    assert.equal(record.source_topic, 'trajectories');
    assert.equal(record.source_partition, 3);
    assert.equal(record.source_offset, 1_234_567);
    assert.equal(record.source_timestamp, 1_763_900_000_500);
    assert.equal(record.rejected_by, 'clickhouse-sink');
    assert.equal(record.rejected_at, 1_763_900_001_000);
  });

  test('the headers carry reason and source topic/partition/offset for tools that do not decode Avro', () => {
    const { headers } = buildDeadLetter({ value: original, error, source, rejectedBy: 'trainer', now: 0 });
    assert.equal(headers[DEAD_LETTER_HEADERS.errorCode], 'TRAJ_E_DECODE_TRUNCATED');
    assert.equal(headers[DEAD_LETTER_HEADERS.reason], error.message);
    assert.equal(headers[DEAD_LETTER_HEADERS.sourceTopic], 'trajectories');
    assert.equal(headers[DEAD_LETTER_HEADERS.sourcePartition], '3');
    assert.equal(headers[DEAD_LETTER_HEADERS.sourceOffset], '1234567');
    assert.equal(headers[DEAD_LETTER_HEADERS.fingerprint], error.fingerprint);
    assert.equal(headers[DEAD_LETTER_HEADERS.byteLength], '200');
    assert.equal(headers[DEAD_LETTER_HEADERS.schema], 'trajectory_event');
    assert.equal(headers[DEAD_LETTER_HEADERS.rejectedAt], '1970-01-01T00:00:00.000Z');
  });

  test('an oversized original is cut, with its full length and hash kept', () => {
    const huge = Buffer.alloc(2_000_000, 7);
    const dl = buildDeadLetter({ value: huge, error: new Error('too big for the sink'), source, rejectedBy: 'sink' });
    const record = decodeDeadLetter(dl.value);
    assert.equal(record.original_truncated, true);
    assert.equal(record.original_byte_length, 2_000_000);
    assert.ok(record.original_bytes.length < 1_000_000);
    assert.equal(record.original_sha256, createHash('sha256').update(huge).digest('hex'));
    assert.ok(dl.value.length < 1_000_000, 'fits the default Kafka message limit');
  });

  test('any other error is dead-lettered as TRAJ_E_UNHANDLED; a tombstone as an empty original', () => {
    const dl = buildDeadLetter({ value: null, error: 'boom', source: { topic: 't', partition: 0, offset: 5 }, rejectedBy: 'x' });
    const record = decodeDeadLetter(dl.value);
    assert.equal(record.error_code, 'TRAJ_E_UNHANDLED');
    assert.equal(record.reason, 'boom');
    assert.equal(record.original_byte_length, 0);
    assert.equal(record.source_key, null);
    assert.equal(dl.key, null);
  });
});
