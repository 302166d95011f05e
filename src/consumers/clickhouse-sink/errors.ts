import { TrajstoreError } from '../../util/errors.js';

export const SinkErrorCode = {
  /** A message decoded but its rows cannot be stored (a non-finite number in a non-nullable column). */
  UNSTORABLE: 'TRAJ_E_SINK_UNSTORABLE',
  /** The sink was asked to stop while a flush was still retrying; nothing of that flush was committed. */
  STOPPED: 'TRAJ_E_SINK_STOPPED',
} as const;

export class SinkError extends TrajstoreError {}
