import type { Command } from 'commander';
import { createClickHouse } from '../../clickhouse/client.js';
import { buildRunReport, REPORT_SECTIONS } from '../../consumers/clickhouse-sink/report.js';
import { loadSinkSettings } from '../../consumers/clickhouse-sink/settings.js';
import { render } from './sql.js';

const TITLES: Record<(typeof REPORT_SECTIONS)[number], string> = {
  summary: 'Run',
  by_version: 'Reward and success by policy version',
  by_task: 'By task (50 most played)',
  staleness: 'Staleness of trained data (policy versions behind, from trainer steps)',
  throughput: 'Throughput per minute',
  latency: 'Inference latency by policy version',
  errors: 'Errors, timeouts and interruptions',
};

export function registerReportCommand(program: Command): void {
  program
    .command('report')
    .description("print a run's standard views: reward and success by version and task, staleness, throughput, latency, errors")
    .requiredOption('--run <id>', 'run id')
    .option('-c, --config <file>', 'YAML config (clickhouse section); default: the local services')
    .option('--database <name>', 'database to read (default: clickhouse.database)')
    .option('--json', 'one JSON object: {run_id, <section>: {columns, rows}}, numbers as numbers (for charts)')
    .action(async (opts: { run: string; config?: string; database?: string; json?: boolean }) => {
      const settings = loadSinkSettings(opts.config, opts.database);
      const client = createClickHouse({ ...settings.clickhouse });
      try {
        const report = await buildRunReport(client, settings.clickhouse.database, opts.run);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
          return;
        }
        for (const section of REPORT_SECTIONS) process.stdout.write(`\n== ${TITLES[section]}\n${render(report[section], 'table')}`);
      } finally {
        await client.close();
      }
    });
}
