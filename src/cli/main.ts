import { Command, CommanderError } from 'commander';
import { TrajstoreError } from '../util/errors.js';
import { registerConfigCommand } from './commands/config.js';
import { registerRolloutCommand } from './commands/rollout.js';
import { registerSchemasCommand } from './commands/schemas.js';
import { registerServicesCommand } from './commands/services.js';
import { registerSinkCommand } from './commands/sink.js';
import { registerSqlCommand } from './commands/sql.js';
import { registerReportCommand } from './commands/report.js';
import { registerReplayCommand } from './commands/replay.js';
import { registerTopicsCommand } from './commands/topics.js';
import { registerTrainCommand } from './commands/train.js';
import { registerAdaptersCommand } from './commands/adapters.js';
import { registerApiCommand } from './commands/api.js';

/** `trajstore`: one entry point, a subcommand per role (services, config, rollout, sink, train, …). */
export function buildProgram(): Command {
  const program = new Command('trajstore')
    .description('event-sourced trajectory store and replay trainer for RL on LLM agents')
    .version(process.env.npm_package_version ?? '0.1.0')
    .showHelpAfterError();
  registerServicesCommand(program);
  registerConfigCommand(program);
  registerTopicsCommand(program);
  registerSchemasCommand(program);
  registerRolloutCommand(program);
  registerSinkCommand(program);
  registerSqlCommand(program);
  registerReportCommand(program);
  registerTrainCommand(program);
  registerReplayCommand(program);
  registerAdaptersCommand(program);
  registerApiCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err);
  }
}

/** Prints an error for a person at a terminal; returns the exit code. */
function reportError(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode;
  if (err instanceof TrajstoreError) {
    console.error(`error ${err.describe()}`);
    return 2;
  }
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  return 1;
}
