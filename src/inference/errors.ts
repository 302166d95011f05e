/**
 * Errors of the CPU policy server's launcher. Codes (listed in the README's error table):
 *
 * | Code | Meaning |
 * | --- | --- |
 * | `TRAJ_E_POLICY_SERVER_PYTHON_MISSING` | the engine's virtualenv (engine/.venv) is missing or cannot import the server |
 * | `TRAJ_E_POLICY_SERVER_MODEL` | the model directory is missing, or the tiny model could not be made |
 * | `TRAJ_E_POLICY_SERVER_START` | the server process exited before it answered `/health`; the message holds its stderr |
 * | `TRAJ_E_POLICY_SERVER_UNHEALTHY` | the server did not answer `/health` within the startup timeout |
 * | `TRAJ_E_POLICY_SERVER_ADAPTER` | a test adapter could not be written |
 */
import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';

export type PolicyServerErrorCode =
  | 'TRAJ_E_POLICY_SERVER_PYTHON_MISSING'
  | 'TRAJ_E_POLICY_SERVER_MODEL'
  | 'TRAJ_E_POLICY_SERVER_START'
  | 'TRAJ_E_POLICY_SERVER_UNHEALTHY'
  | 'TRAJ_E_POLICY_SERVER_ADAPTER';

export class PolicyServerError extends TrajstoreError {
  /** The last lines the server (or helper) wrote to stderr, when there was a process. */
  readonly stderr: string | undefined;

  constructor(code: PolicyServerErrorCode, message: string, options: TrajstoreErrorOptions & { stderr?: string } = {}) {
    const tail = options.stderr?.trim();
    super(code, tail ? `${message}\n--- server stderr (last lines) ---\n${tail}` : message, options);
    this.stderr = options.stderr;
  }
}
