import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import {
  checkSchemas,
  defaultCodec,
  generateTypes,
  loadSchemaDir,
  lockSchemas,
  SCHEMA_DIR,
  SchemaCodec,
  type SchemaCheckReport,
} from '../../schemas/index.js';

/**
 * `trajstore schemas ...`: keep the event schemas evolvable.
 *
 *   check    fail (exit 1) when a version cannot read an older one, a shipped version was
 *            edited, a version is unpinned, or the generated types are stale
 *   lock     pin new versions in fingerprints.json (the "ship it" step)
 *   codegen  regenerate types.generated.ts from the newest versions
 *   list     every version and its fingerprint
 *   decode   decode one message from a file, stdin or hex (dead-letter inspection)
 */
export function registerSchemasCommand(program: Command): Command {
  const schemas = program.command('schemas').description('event schemas: compatibility check, lockfile, type generation, decoding');

  schemas
    .command('check')
    .description('fail when a schema change would leave old messages undecodable, or a shipped version was edited')
    .option('--dir <dir>', 'schema directory', SCHEMA_DIR)
    .option('--json', 'print the report as JSON')
    .action((opts: { dir: string; json?: boolean }) => {
      const report = checkSchemas(opts.dir);
      printReport(report, Boolean(opts.json));
      if (!report.ok) process.exitCode = 1;
    });

  schemas
    .command('lock')
    .description('pin every new schema version in fingerprints.json (never changes an existing pin)')
    .option('--dir <dir>', 'schema directory', SCHEMA_DIR)
    .action((opts: { dir: string }) => {
      const { added, report } = lockSchemas(opts.dir);
      for (const a of added) console.log(`pinned ${a}`);
      if (added.length === 0 && report.ok) console.log('nothing to pin');
      const blocking = report.issues.filter((i) => i.code !== 'TRAJ_E_SCHEMA_UNPINNED');
      if (blocking.length > 0) {
        console.error('refusing to pin while the schemas have problems:');
        printIssues(report);
        process.exitCode = 1;
      }
    });

  schemas
    .command('codegen')
    .description('regenerate src/schemas/types.generated.ts from the newest schema versions')
    .option('--dir <dir>', 'schema directory', SCHEMA_DIR)
    .action((opts: { dir: string }) => {
      const text = generateTypes(loadSchemaDir(opts.dir));
      const file = join(opts.dir, 'types.generated.ts');
      let old = '';
      try {
        old = readFileSync(file, 'utf8');
      } catch {
        // first generation
      }
      if (old === text) {
        console.log(`${file} is up to date`);
        return;
      }
      writeFileSync(file, text);
      console.log(`wrote ${file}`);
    });

  schemas
    .command('list')
    .description('list every schema version with its fingerprint')
    .option('--dir <dir>', 'schema directory', SCHEMA_DIR)
    .option('--json', 'print JSON')
    .action((opts: { dir: string; json?: boolean }) => {
      const report = checkSchemas(opts.dir, { types: false });
      if (opts.json) {
        console.log(JSON.stringify(report.versions, null, 2));
        return;
      }
      for (const v of report.versions) {
        console.log(`${v.schema.padEnd(24)} v${String(v.version).padEnd(4)} ${v.fingerprint}${v.latest ? '  (newest)' : ''}`);
      }
    });

  schemas
    .command('decode')
    .description('decode one single-object-encoded message and print it as JSON (bytes as base64)')
    .argument('[file]', 'file holding the message bytes; stdin when absent')
    .option('--hex <hex>', 'the message as a hex string instead of a file')
    .option('--dir <dir>', 'schema directory (default: the shipped schemas)')
    .action((file: string | undefined, opts: { hex?: string; dir?: string }) => {
      const bytes = opts.hex !== undefined ? Buffer.from(opts.hex.replace(/\s+/g, ''), 'hex') : readFileSync(file ?? 0);
      const codec = opts.dir ? SchemaCodec.fromDir(opts.dir) : defaultCodec();
      const decoded = codec.decode(bytes);
      console.log(JSON.stringify(decoded, jsonBytes, 2));
    });

  return schemas;
}

/** JSON.stringify replacer: Buffers as base64 strings instead of arrays of numbers. */
function jsonBytes(_key: string, value: unknown): unknown {
  if (value && typeof value === 'object' && (value as { type?: unknown }).type === 'Buffer' && Array.isArray((value as { data?: unknown }).data)) {
    return `base64:${Buffer.from((value as { data: number[] }).data).toString('base64')}`;
  }
  return value;
}

function printIssues(report: SchemaCheckReport): void {
  for (const i of report.issues) {
    const where = [i.schema, i.version !== null ? `v${i.version}` : null, i.field].filter((x) => x !== null).join(' ');
    console.error(`✗ ${i.code}${where ? ` [${where}]` : ''}: ${i.message}`);
  }
}

function printReport(report: SchemaCheckReport, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  if (!report.ok) {
    printIssues(report);
    console.error(`schemas check failed: ${report.issues.length} problem${report.issues.length === 1 ? '' : 's'} in ${report.dir}`);
    return;
  }
  const families = new Set(report.versions.map((v) => v.schema));
  const newest = report.versions
    .filter((v) => v.latest)
    .map((v) => `${v.schema} v${v.version}`)
    .join(', ');
  console.log(`schemas ok: ${report.versions.length} versions of ${families.size} schemas, all readable by the newest (${newest}); pins and generated types current`);
}
