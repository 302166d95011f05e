import { TrajstoreError, type TrajstoreErrorOptions } from '../../util/errors.js';

/**
 * Error codes of the trainer consumer (listed in src/consumers/trainer/README.md). Each says
 * whether retrying can help and, in its hint, what to do next.
 */
export const TrainerErrorCode = {
  /** A run already has checkpoints and neither --resume nor --resume-from was given. */
  RUN_EXISTS: 'TRAJ_E_TRAINER_RUN_EXISTS',
  /** --resume-from names a directory that is not a complete trainer checkpoint. */
  CHECKPOINT: 'TRAJ_E_TRAINER_CHECKPOINT',
  /** An adapter version already in the store has other bytes than the one being published. */
  VERSION_CONFLICT: 'TRAJ_E_TRAINER_VERSION_CONFLICT',
  /** The engine child process failed a command or died. */
  ENGINE: 'TRAJ_E_TRAINER_ENGINE',
  /** A replay range or source run selects nothing, or a flag does not parse. */
  REPLAY_RANGE: 'TRAJ_E_TRAINER_REPLAY_RANGE',
  /** The adapter store location is not supported (e.g. s3:// without credentials). */
  ADAPTER_STORE: 'TRAJ_E_TRAINER_ADAPTER_STORE',
} as const;

export type TrainerErrorCodeValue = (typeof TrainerErrorCode)[keyof typeof TrainerErrorCode];

export class TrainerError extends TrajstoreError {
  constructor(code: TrainerErrorCodeValue, message: string, options: TrajstoreErrorOptions = {}) {
    super(code, message, options);
  }
}
