/**
 * One schema change of the analytics database. A shipped migration is never edited: a change
 * is a new file with the next version. Statements must be idempotent (IF NOT EXISTS, ...) so a
 * migration interrupted half-way re-runs cleanly, and must run on ClickHouse 18.16 and current.
 */
export interface Migration {
  version: number;
  name: string;
  /** The statements, with every table name qualified by `database` (already a safe identifier). */
  statements(database: string): string[];
}
