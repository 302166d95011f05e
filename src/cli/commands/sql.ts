import type { Command } from 'commander';
import { createClickHouse } from '../../clickhouse/client.js';
import { queryReadOnly, type QueryResult } from '../../clickhouse/readonly.js';
import { loadSinkSettings } from '../../consumers/clickhouse-sink/settings.js';
import { ConfigError } from '../../util/errors.js';

type Format = 'table' | 'json' | 'csv';

export function registerSqlCommand(program: Command): void {
  program
    .command('sql')
    .description('run one read-only SQL query against the trajectory database (writes are refused by ClickHouse)')
    .argument('<query>', 'the SQL statement, e.g. "SELECT policy_version, avg(reward) FROM episode_summary GROUP BY policy_version"')
    .option('-c, --config <file>', 'YAML config (clickhouse section); default: the local services')
    .option('--database <name>', 'database to query (default: clickhouse.database)')
    .option('-f, --format <format>', 'table | json | csv', 'table')
    .option('--max-rows <n>', 'refuse results longer than this', '10000')
    .option('--timeout <seconds>', 'server-side time limit', '30')
    .action(async (query: string, opts: { config?: string; database?: string; format: string; maxRows: string; timeout: string }) => {
      const format = parseFormat(opts.format);
      const settings = loadSinkSettings(opts.config, opts.database);
      const client = createClickHouse({ ...settings.clickhouse });
      try {
        const result = await queryReadOnly(client, query, { maxRows: positive(opts.maxRows, '--max-rows'), timeoutS: positive(opts.timeout, '--timeout') });
        process.stdout.write(render(result, format));
      } finally {
        await client.close();
      }
    });
}

function parseFormat(value: string): Format {
  if (value === 'table' || value === 'json' || value === 'csv') return value;
  throw new ConfigError('--format', [{ path: 'format', message: `expected table, json or csv, got "${value}"` }]);
}

function positive(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new ConfigError(flag, [{ path: flag, message: `expected a positive integer, got "${value}"` }]);
  return n;
}

/** Renders a result; exported for `trajstore report`, which prints the same tables. */
export function render(result: QueryResult, format: Format): string {
  if (format === 'json') return `${JSON.stringify(result.rows, null, 2)}\n`;
  const names = result.columns.map((c) => c.name);
  const cells = result.rows.map((row) => names.map((n) => cellText(row[n])));
  if (format === 'csv') return [names, ...cells].map((line) => line.map(csvField).join(',')).join('\n') + '\n';
  return table(names, cells);
}

function cellText(value: unknown): string {
  if (value === null || value === undefined) return value === null ? 'NULL' : '';
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** RFC 4180: quote fields holding a comma, quote or line break; double the quotes. */
function csvField(text: string): string {
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

const MAX_CELL = 80;

/** Aligned columns; long cells and line breaks are shortened so each row stays one line. */
export function table(names: string[], rows: string[][]): string {
  const shown = rows.map((r) => r.map((c) => {
    const flat = c.replace(/\s*[\r\n]+\s*/g, ' ');
    return flat.length > MAX_CELL ? `${flat.slice(0, MAX_CELL - 1)}…` : flat;
  }));
  const widths = names.map((n, i) => Math.max(n.length, ...shown.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  const out = [line(names), widths.map((w) => '-'.repeat(w)).join('  '), ...shown.map(line)];
  return `${out.join('\n')}\n(${rows.length} row${rows.length === 1 ? '' : 's'})\n`;
}
