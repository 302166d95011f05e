/**
 * Errors of the engine client. Two families:
 *
 * - the engine replied with an error (`EngineError`, code `TRAJ_E_ENGINE_*` from the engine,
 *   listed in engine/PROTOCOL.md); the engine is still running and usable;
 * - the client could not talk to the engine (`EngineProcessError`): it would not start, it exited
 *   or was killed, it wrote something that is not the protocol, or a command timed out.
 *   The message carries the last lines of the engine's stderr.
 *
 * | Code | Meaning |
 * | --- | --- |
 * | `TRAJ_E_ENGINE_START` | the python is missing, or the engine exited before its ready line |
 * | `TRAJ_E_ENGINE_EXITED` | the engine process exited or was killed while (or before) a command ran |
 * | `TRAJ_E_ENGINE_PROTOCOL` | the engine wrote a line that is not the protocol, or speaks another protocol version |
 * | `TRAJ_E_ENGINE_TIMEOUT` | a command got no reply within its timeout (the engine is then killed) |
 * | `TRAJ_E_BATCH_FILE` | batch-file.ts refused to write a batch that breaks the format's rules |
 */
import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';
import type { EngineErrorBody, EngineErrorCode } from './protocol.js';

/** An error reply from the engine. `code` is one of ENGINE_ERROR_CODES (or a newer engine's). */
export class EngineError extends TrajstoreError {
  declare readonly code: EngineErrorCode | (string & {});
  /** The command that failed. */
  readonly command: string;
  /** Structured facts the engine attached (e.g. peak_gib and micro_batch_tokens for an OOM). */
  readonly details: Record<string, unknown>;

  constructor(command: string, body: EngineErrorBody) {
    super(body.code, `engine '${command}' failed: ${body.message}`, { retriable: body.retriable, hint: body.hint || undefined });
    this.command = command;
    this.details = body.details ?? {};
  }
}

/** CUDA ran out of memory; the hint names the knobs (training.micro_batch_tokens first). The step was not applied. */
export class EngineOutOfMemoryError extends EngineError {}

/** The batch file was refused (missing tensors, wrong lengths, token ids outside the vocabulary, ...). */
export class EngineBatchError extends EngineError {}

/**
 * The engine refused a vision batch for one of its images: placeholder runs that do not match the
 * image's grid (`TRAJ_E_ENGINE_IMAGE_TOKENS`, details.sequence: the sequence's index), or an image
 * missing from vision.blob_root or corrupted (`TRAJ_E_ENGINE_IMAGE_MISSING`, details.sha256).
 * Nothing was applied; the same batch would be refused again.
 */
export class EngineImageError extends EngineError {
  /** The batch sequence at fault, when the engine named one. */
  get sequence(): number | null {
    return typeof this.details.sequence === 'number' ? this.details.sequence : null;
  }

  /** The image at fault, when the engine named one. */
  get sha256(): string | null {
    return typeof this.details.sha256 === 'string' ? this.details.sha256 : null;
  }
}

/** A checkpoint could not be written or read (exists already, incomplete, corrupted, other LoRA shape). */
export class EngineCheckpointError extends EngineError {}

/** The reply's error as the most specific class for its code. */
export function engineErrorFrom(command: string, body: EngineErrorBody): EngineError {
  switch (body.code) {
    case 'TRAJ_E_ENGINE_OOM':
      return new EngineOutOfMemoryError(command, body);
    case 'TRAJ_E_ENGINE_BATCH_INVALID':
      return new EngineBatchError(command, body);
    case 'TRAJ_E_ENGINE_CHECKPOINT':
      return new EngineCheckpointError(command, body);
    case 'TRAJ_E_ENGINE_IMAGE_TOKENS':
    case 'TRAJ_E_ENGINE_IMAGE_MISSING':
      return new EngineImageError(command, body);
    default:
      return new EngineError(command, body);
  }
}

export type EngineProcessErrorCode = 'TRAJ_E_ENGINE_START' | 'TRAJ_E_ENGINE_EXITED' | 'TRAJ_E_ENGINE_PROTOCOL' | 'TRAJ_E_ENGINE_TIMEOUT';

/** The engine process could not be started, died, broke the protocol, or did not answer in time. */
export class EngineProcessError extends TrajstoreError {
  declare readonly code: EngineProcessErrorCode;
  /** The last lines the engine wrote to stderr. */
  readonly stderr: string;
  /** The exit code or signal, when the process has exited. */
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;

  constructor(
    code: EngineProcessErrorCode,
    message: string,
    options: TrajstoreErrorOptions & { stderr?: string; exitCode?: number | null; signal?: NodeJS.Signals | null } = {},
  ) {
    const tail = options.stderr?.trim();
    super(code, tail ? `${message}\n--- engine stderr (last lines) ---\n${tail}` : message, options);
    this.stderr = options.stderr ?? '';
    this.exitCode = options.exitCode ?? null;
    this.signal = options.signal ?? null;
  }
}

/** batch-file.ts refused a batch before writing it. */
export class BatchFileError extends TrajstoreError {
  constructor(message: string, hint = 'see engine/PROTOCOL.md, "Batch files", for the rules') {
    super('TRAJ_E_BATCH_FILE', message, { hint });
  }
}
