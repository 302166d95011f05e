import type { ClickHouseClient } from '@clickhouse/client';
import { ClickHouseErrorCode, ClickHouseStoreError, toClickHouseError } from './errors.js';

export interface ReadOnlyLimits {
  /** The query fails (TRAJ_E_CLICKHOUSE_LIMIT) rather than return more rows than this. */
  maxRows: number;
  /** Seconds the server may spend on it. */
  timeoutS: number;
  /** UInt64/Int64 as JSON numbers (counts in reports) instead of exact strings. */
  numbersAsJson?: boolean;
}

export interface QueryResult {
  columns: Array<{ name: string; type: string }>;
  rows: Array<Record<string, unknown>>;
}

/** The settings a read-only query is sent with (exported for the compatibility test, which sends the same). */
export function readOnlySettings(limits: ReadOnlyLimits) {
  return {
    max_result_rows: String(limits.maxRows),
    result_overflow_mode: 'throw',
    max_execution_time: limits.timeoutS,
    output_format_json_quote_64bit_integers: limits.numbersAsJson ? 0 : 1,
    default_format: 'JSON',
    readonly: '1',
  } as const;
}

/**
 * Runs one statement as a read-only user would: ClickHouse's `readonly=1` refuses writes, DDL,
 * SET and table functions on the server, whatever the text says, so nothing here parses SQL
 * to guess. The limits are sent before `readonly` because readonly=1 forbids changing settings
 * after it. The statement is sent as written (no FORMAT appended, so an INSERT is refused for
 * being a write rather than for a syntax error); the server's default_format gives JSON.
 */
export async function queryReadOnly(client: ClickHouseClient, sql: string, limits: ReadOnlyLimits): Promise<QueryResult> {
  const query = sql.trim().replace(/;\s*$/, '');
  // readonly=1 still lets KILL QUERY through (it is not a write), and the sink inserts as the
  // same user: a reader must not be able to cancel them.
  if (/^(?:\s|--[^\n]*\n|\/\*[\s\S]*?\*\/)*KILL\b/i.test(query)) {
    throw new ClickHouseStoreError(ClickHouseErrorCode.READONLY, 'KILL is refused: queries run read-only', {
      hint: 'stop a query from an administrator session (clickhouse-client), not through `trajstore sql`',
    });
  }
  let text: string;
  try {
    const result = await client.exec({
      query,
      clickhouse_settings: readOnlySettings(limits),
    });
    text = await readAll(result.stream);
  } catch (err) {
    throw toClickHouseError(err, 'query failed');
  }
  return parseJsonResult(text);
}

function parseJsonResult(text: string): QueryResult {
  if (text.trim() === '') return { columns: [], rows: [] };
  let parsed: { meta?: unknown; data?: unknown } | undefined;
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    parsed = undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray(parsed.meta) || !Array.isArray(parsed.data)) {
    throw new ClickHouseStoreError(ClickHouseErrorCode.QUERY, `the server's answer is not ClickHouse JSON: ${text.slice(0, 200)}`, {
      hint: 'remove any FORMAT clause from the query; choose the output with --format table|json|csv',
    });
  }
  return { columns: parsed.meta as QueryResult['columns'], rows: parsed.data as QueryResult['rows'] };
}

async function readAll(stream: AsyncIterable<Buffer | string>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks).toString('utf8');
}
