/**
 * The error hierarchy every trajstore module throws from.
 *
 * Each error has a stable code (`TRAJ_E_*`, listed in the README) that users can search for,
 * says whether retrying the same operation can help, and may carry a hint: what the user
 * should do next.
 */
export interface TrajstoreErrorOptions {
  retriable?: boolean;
  hint?: string;
  cause?: unknown;
}

export class TrajstoreError extends Error {
  readonly code: string;
  readonly retriable: boolean;
  readonly hint: string | undefined;

  constructor(code: string, message: string, options: TrajstoreErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retriable = options.retriable ?? false;
    this.hint = options.hint;
  }

  /** One block a terminal user can act on: the message, then what to do. */
  describe(): string {
    return this.hint ? `${this.code}: ${this.message}\n  → ${this.hint}` : `${this.code}: ${this.message}`;
  }
}

/** A configuration file or override that does not validate; `issues` name each bad field. */
export class ConfigError extends TrajstoreError {
  readonly issues: ReadonlyArray<{ path: string; message: string }>;

  constructor(source: string, issues: ReadonlyArray<{ path: string; message: string }>, hint?: string) {
    const lines = issues.map((i) => `  ${i.path || '(root)'}: ${i.message}`).join('\n');
    super('TRAJ_E_CONFIG', `invalid configuration in ${source}:\n${lines}`, {
      hint: hint ?? 'fix the fields named above; `trajstore config check FILE` re-validates',
    });
    this.issues = issues;
  }
}

/** A local service (Kafka, ClickHouse) that could not be installed, started or reached. */
export class ServiceError extends TrajstoreError {
  readonly service: string;

  constructor(service: string, code: string, message: string, options: TrajstoreErrorOptions = {}) {
    super(code, `${service}: ${message}`, options);
    this.service = service;
  }
}
