import { defaultCodec, type DecodedMessage, type DecodeOptions, type EncodeOptions } from './codec.js';
import { checkPolicyVersion, checkTrajectoryEvent } from './trajectory.js';
import type { DeadLetter, PolicyVersion, SchemaName, SchemaTypes, TrainerStepMetrics, TrajectoryEvent } from './types.generated.js';

/**
 * The typed entry points producers, the sink and the trainer use. Each decoder accepts what
 * kafkajs hands over (`message.value`, possibly null) and either returns the value in the
 * newest schema version's shape or throws a DecodeError (never anything else for bad bytes).
 * Each encoder validates the value (shape and invariants) and throws EncodeError rather than
 * write something consumers would choke on.
 */

type Bytes = Uint8Array | null | undefined;

/**
 * Encodes a trajectory event. `schema_version` is stamped with the version actually written
 * (the newest, or `options.writerVersion`), whatever the caller put there.
 */
export function encodeTrajectoryEvent(event: TrajectoryEvent, options?: EncodeOptions): Buffer {
  const codec = defaultCodec();
  const version = options?.writerVersion ?? codec.families.get('trajectory_event')!.latest.version;
  const stamped = event.schema_version === version ? event : { ...event, schema_version: version };
  return codec.encode('trajectory_event', stamped, options, checkTrajectoryEvent);
}

export function decodeTrajectoryEvent(bytes: Bytes, options?: DecodeOptions): TrajectoryEvent {
  return defaultCodec().decode(bytes, { ...options, expect: 'trajectory_event' }).value as TrajectoryEvent;
}

export function encodePolicyVersion(record: PolicyVersion, options?: EncodeOptions): Buffer {
  return defaultCodec().encode('policy_version', record, options, checkPolicyVersion);
}

export function decodePolicyVersion(bytes: Bytes, options?: DecodeOptions): PolicyVersion {
  return defaultCodec().decode(bytes, { ...options, expect: 'policy_version' }).value as PolicyVersion;
}

export function encodeTrainerStepMetrics(record: TrainerStepMetrics, options?: EncodeOptions): Buffer {
  return defaultCodec().encode('trainer_step_metrics', record, options);
}

export function decodeTrainerStepMetrics(bytes: Bytes, options?: DecodeOptions): TrainerStepMetrics {
  return defaultCodec().decode(bytes, { ...options, expect: 'trainer_step_metrics' }).value as TrainerStepMetrics;
}

export function encodeDeadLetter(record: DeadLetter, options?: EncodeOptions): Buffer {
  return defaultCodec().encode('dead_letter', record, options);
}

export function decodeDeadLetter(bytes: Bytes, options?: DecodeOptions): DeadLetter {
  return defaultCodec().decode(bytes, { ...options, expect: 'dead_letter' }).value as DeadLetter;
}

/** Any trajstore message, discriminated by `schema`. */
export type AnyDecodedMessage = { [N in SchemaName]: DecodedMessage<N, SchemaTypes[N]> }[SchemaName];

/** Decodes a message of any family (tools, dead-letter inspection, replay of mixed topics). */
export function decodeMessage(bytes: Bytes, options?: DecodeOptions): AnyDecodedMessage {
  return defaultCodec().decode(bytes, options) as AnyDecodedMessage;
}
