/**
 * A stand-in for the trajstore CLI entry with only the schemas command registered, so the tests
 * can run `trajstore schemas ...` as a real process (exit codes, stdout/stderr) without depending
 * on the rest of the CLI.
 */
import { Command } from 'commander';
import { registerSchemasCommand } from '../../src/cli/commands/schemas.js';

const program = new Command('trajstore').exitOverride();
registerSchemasCommand(program);
try {
  await program.parseAsync(process.argv);
} catch (err) {
  const e = err as { exitCode?: number; code?: string; describe?: () => string; message?: string };
  if (typeof e.describe === 'function') console.error(`error ${e.describe()}`);
  else if (!String(e.code ?? '').startsWith('commander.')) console.error(e.message ?? String(err));
  process.exitCode = e.exitCode ?? 2;
}
