import type { ClickHouseClient } from '@clickhouse/client';
import type { Logger } from '../../util/logger.js';
import { QUERIES } from '../catalog.js';
import { ClickHouseErrorCode, ClickHouseStoreError, toClickHouseError } from '../errors.js';
import { quoteIdentifier } from '../sql.js';
import { migration001 } from './001_initial.js';
import { migration002 } from './002_episode_summary_aliases.js';
import type { Migration } from './types.js';

export type { Migration } from './types.js';

/**
 * Every migration ever shipped, in order. Append; never edit or reorder. (The one edit: 001's
 * episode_summary, which current ClickHouse refuses, moved to 002, which replaces it where 001
 * created it; 002_episode_summary_aliases.ts says why.)
 */
export const MIGRATIONS: readonly Migration[] = [migration001, migration002];

/** The newest schema version this code writes. */
export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/**
 * Brings `database` to the newest version: creates it if needed, then applies, in order, each
 * migration not recorded in `schema_migrations`. Safe to run from several sinks at once: every
 * statement is idempotent and the record table collapses duplicate rows.
 * Returns the versions applied by this call.
 */
export async function migrate(client: ClickHouseClient, database: string, logger: Logger): Promise<number[]> {
  const db = quoteIdentifier(database);
  await run(client, `CREATE DATABASE IF NOT EXISTS ${db}`, 0);
  await run(
    client,
    `CREATE TABLE IF NOT EXISTS ${db}.schema_migrations (version UInt32, name String, applied_at DateTime) ENGINE = ReplacingMergeTree() ORDER BY version`,
    0,
  );
  const applied = await appliedVersions(client, db);
  const newest = Math.max(0, ...applied);
  if (newest > LATEST_SCHEMA_VERSION) {
    throw new ClickHouseStoreError(ClickHouseErrorCode.MIGRATION, `database ${database} is at schema version ${newest}, newer than this trajstore knows (${LATEST_SCHEMA_VERSION})`, {
      hint: 'upgrade trajstore, or point the sink at another database',
    });
  }
  const done: number[] = [];
  for (const migration of MIGRATIONS) {
    if (applied.has(migration.version)) continue;
    for (const statement of migration.statements(db)) await run(client, statement, migration.version);
    await client.insert({
      table: `${db}.schema_migrations`,
      values: [{ version: migration.version, name: migration.name, applied_at: Math.floor(Date.now() / 1000) }],
      format: 'JSONEachRow',
    });
    logger.info({ database, version: migration.version, migration: migration.name }, 'applied ClickHouse migration');
    done.push(migration.version);
  }
  return done;
}

/** Versions recorded as fully applied. */
export async function appliedVersions(client: ClickHouseClient, db: string): Promise<Set<number>> {
  const result = await client.query({ query: QUERIES.migrationVersions.sql(db, {}), format: 'JSONEachRow' });
  const rows = await result.json<{ version: number | string }>();
  return new Set(rows.map((r) => Number(r.version)));
}

async function run(client: ClickHouseClient, query: string, version: number): Promise<void> {
  try {
    await client.command({ query });
  } catch (err) {
    const typed = toClickHouseError(err, `migration ${version} statement failed`);
    if (typed.retriable) throw typed;
    throw new ClickHouseStoreError(ClickHouseErrorCode.MIGRATION, `${typed.message}\nstatement: ${query.slice(0, 300)}`, {
      serverCode: typed.serverCode,
      cause: err,
      hint: 'the database stays at the last fully applied version; fix the cause and run the sink again (migrations are idempotent)',
    });
  }
}
