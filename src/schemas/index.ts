/**
 * trajstore's event schemas and their codec: the only module other parts of trajstore import
 * for events. See src/schemas/README.md for the event model, versioning and error codes.
 */

// Types of the newest version of every schema (generated from the .avsc files).
export * from './types.generated.js';

// Typed encode/decode for each message family.
export {
  decodeDeadLetter,
  decodeMessage,
  decodePolicyVersion,
  decodeTrainerStepMetrics,
  decodeTrajectoryEvent,
  encodeDeadLetter,
  encodePolicyVersion,
  encodeTrainerStepMetrics,
  encodeTrajectoryEvent,
  type AnyDecodedMessage,
} from './messages.js';

// Trajectory helpers.
export {
  checkPolicyVersion,
  checkTrajectoryEvent,
  GROUP_LEVEL_KINDS,
  newTrajectoryEvent,
  payloadAs,
  payloadKind,
  type NewTrajectoryEvent,
  type PayloadKind,
  type PayloadOf,
} from './trajectory.js';

// Dead letters.
export {
  buildDeadLetter,
  DEAD_LETTER_HEADERS,
  DEFAULT_MAX_DEAD_LETTER_ORIGINAL_BYTES,
  type DeadLetterInput,
  type DeadLetterMessage,
  type DeadLetterSource,
} from './dead-letter.js';

// The codec itself, fingerprints, and the schema directory (tools, tests, `schemas check`).
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  defaultCodec,
  HEADER_BYTES,
  SchemaCodec,
  SINGLE_OBJECT_MAGIC,
  type DecodedMessage,
  type DecodeOptions,
  type EncodeOptions,
} from './codec.js';
export { fingerprintHex, fingerprintToLong, parsingCanonicalForm, rabin64, schemaFingerprint } from './fingerprint.js';
export { loadSchemaDir, scanSchemaDir, SCHEMA_DIR, type SchemaFamily, type SchemaVersion } from './registry.js';
export { checkSchemas, lockSchemas, type SchemaCheckIssue, type SchemaCheckReport } from './check.js';
export { generateTypes } from './codegen.js';

// Errors.
export {
  BadMagicError,
  CorruptMessageError,
  DecodeError,
  DecodeErrorCode,
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
