import { createHash, randomUUID } from 'node:crypto';
import { TrajstoreError } from '../util/errors.js';
import { SchemaCodec } from './codec.js';
import { DecodeError } from './errors.js';
import { encodeDeadLetter } from './messages.js';
import type { DeadLetter } from './types.generated.js';

/**
 * Building the dead-letter message for something a consumer could not process.
 *
 * The dead-letter topic carries a DeadLetter Avro record as its value (self-describing like
 * every other trajstore topic, and holding the original bytes so a fixed consumer can replay
 * them), the original key as its key (a dead-lettered trajectory event stays with its group),
 * and the routing facts again as Kafka headers, so tools can filter the topic (kcat, the
 * console consumer, ClickHouse's Kafka engine) without decoding Avro.
 */

/** Header names on dead-letter messages. */
export const DEAD_LETTER_HEADERS = {
  errorCode: 'trajstore.dlq.error_code',
  reason: 'trajstore.dlq.reason',
  sourceTopic: 'trajstore.dlq.source_topic',
  sourcePartition: 'trajstore.dlq.source_partition',
  sourceOffset: 'trajstore.dlq.source_offset',
  byteLength: 'trajstore.dlq.byte_length',
  fingerprint: 'trajstore.dlq.fingerprint',
  schema: 'trajstore.dlq.schema',
  rejectedBy: 'trajstore.dlq.rejected_by',
  rejectedAt: 'trajstore.dlq.rejected_at',
} as const;

/**
 * Originals larger than this are cut (the record says so and keeps the full length and hash),
 * so that the dead-letter message itself fits Kafka's default 1 MB message limit.
 */
export const DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES = 900 * 1024;

/** Where the message came from; the shapes kafkajs uses are accepted as they are. */
export interface DeadLetterSource {
  topic: string;
  partition: number;
  /** kafkajs gives offsets as decimal strings. */
  offset: string | number | bigint;
  key?: Uint8Array | string | null;
  /** Kafka message timestamp in ms (kafkajs: a decimal string). */
  timestamp?: string | number | null;
}

export interface DeadLetterInput {
  /** The original message value as consumed (null for a tombstone). */
  value: Uint8Array | null | undefined;
  /** Why it is dead: a DecodeError from a decoder, or any other error a consumer hit. */
  error: unknown;
  source: DeadLetterSource;
  /** Component that gives up on it (consumer group or service name). */
  rejectedBy: string;
  /** Clock, for tests (ms since the epoch). */
  now?: number;
  maxOriginalBytes?: number;
}

/** What to hand to the producer: `producer.send({ topic: dlqTopic, messages: [{ key, value, headers }] })`. */
export interface DeadLetterMessage {
  key: Buffer | null;
  value: Buffer;
  headers: Record<string, string>;
  record: DeadLetter;
}

function toSafeInteger(value: string | number | bigint, what: string): number {
  const n = typeof value === 'bigint' ? Number(value) : typeof value === 'string' ? Number.parseInt(value, 10) : value;
  if (!Number.isSafeInteger(n)) throw new TypeError(`${what} ${String(value)} is not an integer`);
  return n;
}

export function buildDeadLetter(input: DeadLetterInput): DeadLetterMessage {
  const original = input.value ? Buffer.from(input.value.buffer, input.value.byteOffset, input.value.byteLength) : Buffer.alloc(0);
  const limit = input.maxOriginalBytes ?? DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES;
  const err = input.error;
  const code = err instanceof TrajstoreError ? err.code : 'TRAJ_E_UNHANDLED';
  const reason = err instanceof DecodeError ? err.message : err instanceof Error ? err.message : String(err);
  const fingerprint = err instanceof DecodeError ? err.fingerprint : SchemaCodec.readFingerprint(original);
  const schemaName = err instanceof DecodeError ? err.schemaName : null;
  const key =
    input.source.key === undefined || input.source.key === null
      ? null
      : typeof input.source.key === 'string'
        ? Buffer.from(input.source.key)
        : Buffer.from(input.source.key.buffer, input.source.key.byteOffset, input.source.key.byteLength);
  const timestamp = input.source.timestamp;
  const record: DeadLetter = {
    dead_letter_id: randomUUID(),
    source_topic: input.source.topic,
    source_partition: input.source.partition,
    source_offset: toSafeInteger(input.source.offset, 'offset'),
    source_key: key,
    source_timestamp: timestamp === undefined || timestamp === null ? null : toSafeInteger(timestamp, 'timestamp'),
    original_bytes: original.length > limit ? original.subarray(0, limit) : original,
    original_byte_length: original.length,
    original_sha256: createHash('sha256').update(original).digest('hex'),
    original_truncated: original.length > limit,
    error_code: code,
    reason,
    writer_fingerprint: fingerprint,
    schema_name: schemaName,
    rejected_by: input.rejectedBy,
    rejected_at: input.now ?? Date.now(),
  };
  const headers: Record<string, string> = {
    [DEAD_LETTER_HEADERS.errorCode]: code,
    // Header values are for filtering at a glance; the record keeps the full reason.
    [DEAD_LETTER_HEADERS.reason]: reason.length > 1024 ? `${reason.slice(0, 1021)}...` : reason,
    [DEAD_LETTER_HEADERS.sourceTopic]: record.source_topic,
    [DEAD_LETTER_HEADERS.sourcePartition]: String(record.source_partition),
    [DEAD_LETTER_HEADERS.sourceOffset]: String(record.source_offset),
    [DEAD_LETTER_HEADERS.byteLength]: String(original.length),
    [DEAD_LETTER_HEADERS.rejectedBy]: record.rejected_by,
    [DEAD_LETTER_HEADERS.rejectedAt]: new Date(record.rejected_at).toISOString(),
  };
  if (fingerprint) headers[DEAD_LETTER_HEADERS.fingerprint] = fingerprint;
  if (schemaName) headers[DEAD_LETTER_HEADERS.schema] = schemaName;
  return { key, value: encodeDeadLetter(record), headers, record };
}
