/**
 * Errors of the rollout producers. Every code is listed in src/producers/README.md; each says
 * whether retrying can help and what to do next.
 */
import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';

export type ProducerErrorCode =
  /** The policy server could not be reached (connection refused, DNS, reset) after every retry. */
  | 'TRAJ_E_POLICY_UNREACHABLE'
  /** A policy request took longer than inference.request_timeout_s, every attempt. */
  | 'TRAJ_E_POLICY_TIMEOUT'
  /** The policy server answered with an error status that retrying cannot fix (4xx). */
  | 'TRAJ_E_POLICY_REJECTED'
  /** The answer lacked token ids or logprobs (server not vLLM-compatible, or too old). */
  | 'TRAJ_E_POLICY_BAD_RESPONSE'
  /** The model's output is not one of the environment's actions. */
  | 'TRAJ_E_ACTION_MALFORMED'
  /** The environment failed (browser crashed, page did not load, GBox API error). */
  | 'TRAJ_E_ENV'
  /** The environment cannot start: a missing browser, key or option. */
  | 'TRAJ_E_ENV_CONFIG'
  /** The episode ran past rollout.episode_timeout_s. */
  | 'TRAJ_E_EPISODE_DEADLINE'
  /** The blob store could not store or read a blob. */
  | 'TRAJ_E_BLOB_STORE'
  /** Kafka refused or could not take the events. */
  | 'TRAJ_E_PRODUCE';

export class ProducerError extends TrajstoreError {
  declare readonly code: ProducerErrorCode;

  constructor(code: ProducerErrorCode, message: string, options: TrajstoreErrorOptions = {}) {
    super(code, message, options);
  }
}

/** A stable code and a one-line reason for any thrown value (episode error events need both). */
export function describeFailure(err: unknown): { code: string; message: string } {
  if (err instanceof TrajstoreError) return { code: err.code, message: err.hint ? `${err.message} (${err.hint})` : err.message };
  if (err instanceof Error) return { code: 'TRAJ_E_UNHANDLED', message: `${err.name}: ${err.message}` };
  return { code: 'TRAJ_E_UNHANDLED', message: String(err) };
}
