import type { Command } from 'commander';
import { positiveInt } from '../arguments.js';
import { loadConfig } from '../../config/index.js';
import { runReplay } from '../../consumers/trainer/replay.js';
import { createLogger } from '../../util/logger.js';

/** `trajstore replay --source-run ID --run NEW --config FILE [--from X] [--to Y] [--dry-run] [--resume]`. */
export function registerReplayCommand(program: Command): void {
  program
    .command('replay')
    .description('train a new run from the logged events of another run, with this config\'s hyperparameters (deterministic for the same input)')
    .requiredOption('--source-run <id>', 'the run whose trajectory events are replayed')
    .requiredOption('--run <id>', 'the new run (outputs under training.output_dir/replay/<run>, checkpoints under checkpoint.dir/replay/<run>)')
    .requiredOption('-c, --config <file>', 'YAML config of the new run (hyperparameters, topics, stores)')
    .option('--from <bound>', 'start: an offset (123), offsets per partition (0:120,1:98), an ISO time, or epoch ms (1700000000000ms)')
    .option('--to <bound>', 'end (exclusive), same forms; default: the end of the topic when the replay starts')
    .option('--dry-run', 'print what would be trained (groups, tokens, steps, staleness, drops) without training')
    .option('--push', 'also load each new version on the config\'s policy servers')
    .option('--resume', 'go on from the newest checkpoint of --run (same range; every group still trained once)')
    .option('--readers <n>', 'threads that fetch, decode and assemble partitions side by side (default: one per CPU, at most one per partition)', positiveInt)
    .action(async (opts: { sourceRun: string; run: string; config: string; from?: string; to?: string; dryRun?: boolean; push?: boolean; readers?: number; resume?: boolean }) => {
      const config = loadConfig(opts.config);
      const logger = createLogger('replay');
      const result = await runReplay({
        config, sourceRunId: opts.sourceRun, runId: opts.run, from: opts.from, to: opts.to, dryRun: opts.dryRun, push: opts.push, readers: opts.readers, resume: opts.resume, logger,
      });
      console.log(JSON.stringify(result, null, opts.dryRun ? 2 : undefined));
    });
}
