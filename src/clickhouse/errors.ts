import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';

/** Stable codes of the ClickHouse layer, listed in src/consumers/clickhouse-sink/README.md. */
export const ClickHouseErrorCode = {
  /** The server could not be reached, or answered with a transient error (overload, timeout). */
  UNAVAILABLE: 'TRAJ_E_CLICKHOUSE_UNAVAILABLE',
  /** The server refused the statement (syntax, unknown table, bad data); retrying will not help. */
  QUERY: 'TRAJ_E_CLICKHOUSE_QUERY',
  /** A read-only query tried to write or change settings. */
  READONLY: 'TRAJ_E_CLICKHOUSE_READONLY',
  /** A read-only query hit its row or time limit. */
  LIMIT: 'TRAJ_E_CLICKHOUSE_LIMIT',
  /** A migration failed; the database is left at the last version that applied fully. */
  MIGRATION: 'TRAJ_E_CLICKHOUSE_MIGRATION',
} as const;

export class ClickHouseStoreError extends TrajstoreError {
  /** ClickHouse's own numeric error code, when the server answered with one. */
  readonly serverCode: number | undefined;

  constructor(code: string, message: string, options: TrajstoreErrorOptions & { serverCode?: number } = {}) {
    super(code, message, options);
    this.serverCode = options.serverCode;
  }
}

/**
 * Server error codes that say "try again later" rather than "this statement is wrong":
 * timeouts, network errors, memory limits, too many parts or queries, a query cancelled by an
 * administrator, a table being readonly for a moment (ZooKeeper). Anything else the server answers with is final.
 */
const TRANSIENT_SERVER_CODES = new Set([202, 203, 209, 210, 241, 242, 252, 285, 319, 394, 425, 999]);
const READONLY_CODE = 164;
const LIMIT_CODES = new Set([158, 159, 396]);
const UNKNOWN_TABLE = 60;
const UNKNOWN_DATABASE = 81;

/** ClickHouse 18.16 answers `Code: 164, e.displayText() = DB::Exception: ...`, current ones `Code: 164. DB::Exception: ...`. */
export function serverErrorCode(err: unknown): number | undefined {
  const fromClient = (err as { code?: unknown }).code;
  if (typeof fromClient === 'string' && /^\d+$/.test(fromClient)) return Number(fromClient);
  const match = /Code: (\d+)[.,]/.exec(err instanceof Error ? err.message : String(err));
  return match ? Number(match[1]) : undefined;
}

/** The server's message without the exception boilerplate, for a person to read. */
function serverMessage(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/^Code: \d+[.,]\s*(e\.displayText\(\) = )?/, '').replace(/,? e\.what\(\) = DB::Exception\s*$/, '').trim();
}

/** Turns whatever the client threw into a typed error that says whether retrying can help. */
export function toClickHouseError(err: unknown, what: string): ClickHouseStoreError {
  if (err instanceof ClickHouseStoreError) return err;
  const serverCode = serverErrorCode(err);
  const message = `${what}: ${serverMessage(err)}`;
  if (serverCode === undefined || TRANSIENT_SERVER_CODES.has(serverCode)) {
    return new ClickHouseStoreError(ClickHouseErrorCode.UNAVAILABLE, message, {
      retriable: true,
      serverCode,
      cause: err,
      hint: 'check that ClickHouse runs (`trajstore services status`) and answers at the configured clickhouse.url',
    });
  }
  if (serverCode === READONLY_CODE) {
    return new ClickHouseStoreError(ClickHouseErrorCode.READONLY, message, {
      serverCode,
      cause: err,
      hint: '`trajstore sql` only reads: SELECT, SHOW, DESCRIBE, EXISTS; writes go through the sink',
    });
  }
  if (LIMIT_CODES.has(serverCode)) {
    return new ClickHouseStoreError(ClickHouseErrorCode.LIMIT, message, {
      serverCode,
      cause: err,
      hint: 'add a LIMIT or a narrower WHERE, or raise --max-rows / --timeout',
    });
  }
  const missing = serverCode === UNKNOWN_DATABASE || serverCode === UNKNOWN_TABLE;
  return new ClickHouseStoreError(ClickHouseErrorCode.QUERY, message, {
    serverCode,
    cause: err,
    hint: missing
      ? '`trajstore sink` creates and migrates the database; or name another with --database (tables: see src/consumers/clickhouse-sink/README.md)'
      : 'fix the statement named above',
  });
}
