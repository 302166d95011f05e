import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';

/**
 * Errors of `npm run demo`. Codes:
 *   TRAJ_E_DEMO_SETUP     a prerequisite (services, engine venv, model) could not be made ready
 *   TRAJ_E_DEMO_CHILD     a child process (producer, sink, trainer, policy server) exited early
 *   TRAJ_E_DEMO_NO_DATA   the run ended without episodes in ClickHouse, so there is no RESULT
 */
export class DemoError extends TrajstoreError {
  constructor(code: 'TRAJ_E_DEMO_SETUP' | 'TRAJ_E_DEMO_CHILD' | 'TRAJ_E_DEMO_NO_DATA', message: string, options: TrajstoreErrorOptions = {}) {
    super(code, message, options);
  }
}
