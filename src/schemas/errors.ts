import { TrajstoreError } from '../util/errors.js';

/**
 * Errors of the schema layer. None is retriable: the same bytes or the same value fail the same
 * way every time, so a consumer routes the message to the dead-letter topic (see
 * `buildDeadLetter`) instead of retrying, and a producer fixes the event it built.
 */

/** Stable codes, listed in src/schemas/README.md. */
export const DecodeErrorCode = {
  /** The bytes are not Avro single-object encoded (no 0xC3 0x01 marker). */
  BAD_MAGIC: 'TRAJ_E_DECODE_BAD_MAGIC',
  /** The writer-schema fingerprint is not one of the shipped schema versions. */
  UNKNOWN_SCHEMA: 'TRAJ_E_DECODE_UNKNOWN_SCHEMA',
  /** The fingerprint is known, but belongs to another schema than the one asked for. */
  WRONG_SCHEMA: 'TRAJ_E_DECODE_WRONG_SCHEMA',
  /** The message ends before the value does (cut short, or a length prefix points past the end). */
  TRUNCATED: 'TRAJ_E_DECODE_TRUNCATED',
  /** The bytes cannot be a value of the writer schema (bad index, bad length, trailing bytes, ...). */
  CORRUPT: 'TRAJ_E_DECODE_CORRUPT',
  /** The message is larger than the decoder's size limit. */
  TOO_LARGE: 'TRAJ_E_DECODE_TOO_LARGE',
} as const;
export type DecodeErrorCode = (typeof DecodeErrorCode)[keyof typeof DecodeErrorCode];

/** What a decode failure knows about the message: enough to dead-letter it. */
export interface DecodeErrorDetails {
  /** Length of the whole message in bytes (0 for a null/empty value). */
  byteLength: number;
  /** Writer-schema fingerprint from the header (16 hex chars, wire byte order), when one could be read. */
  fingerprint?: string | null;
  /** Schema family the fingerprint belongs to, when known. */
  schemaName?: string | null;
  /** Writer schema version, when known. */
  writerVersion?: number | null;
  /** Field path where the body stopped making sense, e.g. `payload.Turn.completion_logprobs[17]`. */
  fieldPath?: string | null;
  /** Byte offset in the message where it was detected. */
  position?: number | null;
  cause?: unknown;
}

const DECODE_HINT =
  'not retriable: route the message to the dead-letter topic (buildDeadLetter); `trajstore schemas decode` inspects it';

/** Base class of every decode failure; `code` says which kind. */
export class DecodeError extends TrajstoreError {
  declare readonly code: DecodeErrorCode;
  /** The specific reason, without the surrounding context (what goes into DeadLetter.reason). */
  readonly reason: string;
  readonly byteLength: number;
  readonly fingerprint: string | null;
  readonly schemaName: string | null;
  readonly writerVersion: number | null;
  readonly fieldPath: string | null;
  readonly position: number | null;

  constructor(code: DecodeErrorCode, reason: string, details: DecodeErrorDetails, hint: string = DECODE_HINT) {
    const where = [
      details.schemaName ? `${details.schemaName}${details.writerVersion ? ` v${details.writerVersion}` : ''}` : null,
      details.fieldPath ? `at ${details.fieldPath}` : null,
      details.position != null ? `byte ${details.position} of ${details.byteLength}` : `${details.byteLength} bytes`,
    ]
      .filter(Boolean)
      .join(', ');
    super(code, `${reason} (${where})`, { retriable: false, hint, cause: details.cause });
    this.reason = reason;
    this.byteLength = details.byteLength;
    this.fingerprint = details.fingerprint ?? null;
    this.schemaName = details.schemaName ?? null;
    this.writerVersion = details.writerVersion ?? null;
    this.fieldPath = details.fieldPath ?? null;
    this.position = details.position ?? null;
  }
}

export class BadMagicError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(DecodeErrorCode.BAD_MAGIC, reason, details);
  }
}

export class UnknownSchemaError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(
      DecodeErrorCode.UNKNOWN_SCHEMA,
      reason,
      details,
      'written by a newer (or foreign) schema than this build ships: upgrade the consumer, then replay the dead letters',
    );
  }
}

export class WrongSchemaError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(DecodeErrorCode.WRONG_SCHEMA, reason, details, 'a message of another kind reached this topic: check the producer that wrote it');
  }
}

export class TruncatedMessageError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(DecodeErrorCode.TRUNCATED, reason, details);
  }
}

export class CorruptMessageError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(DecodeErrorCode.CORRUPT, reason, details);
  }
}

export class MessageTooLargeError extends DecodeError {
  constructor(reason: string, details: DecodeErrorDetails) {
    super(DecodeErrorCode.TOO_LARGE, reason, details, 'raise maxBytes if the message is legitimate; otherwise dead-letter it');
  }
}

/** One thing wrong with a value handed to an encoder. */
export interface EncodeIssue {
  /** Field path, e.g. `payload.Turn.completion_logprobs`. Empty for the record itself. */
  path: string;
  message: string;
}

export const EncodeErrorCode = {
  /** The value does not match the schema, or breaks an event invariant (see checkTrajectoryEvent). */
  INVALID: 'TRAJ_E_ENCODE_INVALID',
  /** The encoded message is larger than the size limit. */
  TOO_LARGE: 'TRAJ_E_ENCODE_TOO_LARGE',
} as const;
export type EncodeErrorCode = (typeof EncodeErrorCode)[keyof typeof EncodeErrorCode];

/** A value the producer built does not fit its schema; nothing was written. */
export class EncodeError extends TrajstoreError {
  declare readonly code: EncodeErrorCode;
  readonly schemaName: string;
  readonly issues: readonly EncodeIssue[];

  constructor(code: EncodeErrorCode, schemaName: string, issues: readonly EncodeIssue[], hint?: string) {
    const lines = issues.map((i) => `  ${i.path || '(record)'}: ${i.message}`).join('\n');
    super(code, `cannot encode ${schemaName}:\n${lines}`, {
      retriable: false,
      hint:
        hint ??
        (code === EncodeErrorCode.TOO_LARGE
          ? 'move large content (screenshots, documents) to the blob store and reference it by hash'
          : 'fix the fields named above in the code that builds the event'),
    });
    this.schemaName = schemaName;
    this.issues = issues;
  }
}

export const SchemaErrorCode = {
  /** A schema file does not parse, is misnamed, or versions have a gap. */
  INVALID: 'TRAJ_E_SCHEMA_INVALID',
  /** A newer version cannot read data written with an older one. */
  INCOMPATIBLE: 'TRAJ_E_SCHEMA_INCOMPATIBLE',
  /** A shipped version was edited in place (its fingerprint or content differs from the lockfile). */
  MODIFIED: 'TRAJ_E_SCHEMA_MODIFIED',
  /** A version on disk is not pinned in fingerprints.json yet. */
  UNPINNED: 'TRAJ_E_SCHEMA_UNPINNED',
  /** A version pinned in fingerprints.json is missing from disk. */
  MISSING: 'TRAJ_E_SCHEMA_MISSING',
  /** Two versions share a fingerprint, so a reader could not tell them apart. */
  DUPLICATE: 'TRAJ_E_SCHEMA_DUPLICATE',
  /** types.generated.ts does not match the newest schemas. */
  TYPES_STALE: 'TRAJ_E_SCHEMA_TYPES_STALE',
} as const;
export type SchemaErrorCode = (typeof SchemaErrorCode)[keyof typeof SchemaErrorCode];

/** The schema directory itself is broken (raised at load; `trajstore schemas check` lists every problem). */
export class SchemaError extends TrajstoreError {
  declare readonly code: SchemaErrorCode;
  readonly schemaName: string | null;
  readonly version: number | null;

  constructor(code: SchemaErrorCode, message: string, where: { schemaName?: string | null; version?: number | null; hint?: string; cause?: unknown } = {}) {
    super(code, message, {
      retriable: false,
      hint: where.hint ?? 'run `trajstore schemas check` for the full list of problems',
      cause: where.cause,
    });
    this.schemaName = where.schemaName ?? null;
    this.version = where.version ?? null;
  }
}
