import type { Command } from 'commander';
import { LocalServices, servicesOptionsFromEnv } from '../../services/manager.js';
import { LOCAL_S3_BUCKET, LOCAL_S3_CREDENTIALS } from '../../services/s3.js';
import type { ServiceStatus } from '../../services/types.js';

export function registerServicesCommand(program: Command): void {
  const services = program
    .command('services')
    .description('install, start and stop the local Kafka and ClickHouse, and optionally an S3-compatible store (machines without Docker)');

  services
    .command('up')
    .description('install what is missing and start every service that is not running (idempotent)')
    .option('--s3', 'also start a local S3-compatible object store (s3proxy) for s3:// adapter and blob stores')
    .action(async (opts: { s3?: boolean }) => {
      const local = new LocalServices(servicesOptionsFromEnv());
      const started = Date.now();
      const { started: which } = await local.up((line) => console.error(line), { s3: Boolean(opts.s3) });
      console.error(which.length ? `started ${which.join(', ')} in ${((Date.now() - started) / 1000).toFixed(1)} s` : 'all services already running');
      printStatus(await local.status(), false);
      if (opts.s3) {
        console.error(`s3: point a config at it with storage: { adapters: s3://${LOCAL_S3_BUCKET}/adapters, s3_endpoint: ${local.s3.endpoint}, s3_force_path_style: true }`);
        console.error(`s3: and export AWS_ACCESS_KEY_ID=${LOCAL_S3_CREDENTIALS.accessKeyId} AWS_SECRET_ACCESS_KEY=${LOCAL_S3_CREDENTIALS.secretAccessKey}`);
      }
    });

  services
    .command('status')
    .description('report each service: state, address, version, pid, data directory')
    .option('--json', 'print JSON instead of a table')
    .action(async (opts: { json?: boolean }) => {
      const statuses = await new LocalServices(servicesOptionsFromEnv()).status();
      printStatus(statuses, Boolean(opts.json));
      if (statuses.some((s) => s.state !== 'running')) process.exitCode = 3;
    });

  services
    .command('down')
    .description('stop every service (or only the ones named: kafka, clickhouse, s3) and the processes it started; data is kept')
    .argument('[services...]', 'services to stop (default: all)')
    .action(async (names: string[]) => {
      const { stopped } = await new LocalServices(servicesOptionsFromEnv()).down((line) => console.error(line), names);
      console.error(stopped.length ? `stopped ${stopped.join(', ')}` : 'no service was running');
    });
}

function printStatus(statuses: ServiceStatus[], json: boolean): void {
  if (json) {
    console.log(JSON.stringify(statuses, null, 2));
    return;
  }
  const rows = [
    ['SERVICE', 'STATE', 'ADDRESS', 'VERSION', 'PID', 'DATA'],
    ...statuses.map((s) => [s.name, s.state, s.address, s.version ?? '-', s.pid?.toString() ?? '-', s.dataDir]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
  for (const s of statuses) if (s.detail) console.log(`  ${s.name}: ${s.detail}`);
}
