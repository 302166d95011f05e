import type { Command } from 'commander';
import { loadConfig } from '../../config/index.js';
import { runStreamingTrainer } from '../../consumers/trainer/stream.js';
import { createLogger } from '../../util/logger.js';

/** `trajstore train -c FILE [--resume | --resume-from DIR]`: streaming GRPO from the trajectory topic. */
export function registerTrainCommand(program: Command): void {
  program
    .command('train')
    .description('train the policy from the trajectory topic (GRPO, LoRA), publishing versions to the policy servers')
    .requiredOption('-c, --config <file>', 'YAML config (configs/demo.yaml, configs/cua_grpo.yaml)')
    .option('--resume', 'continue from the newest checkpoint under checkpoint.dir (a fresh start when there is none)')
    .option('--resume-from <dir>', 'continue from this checkpoint directory (step-NNNNNNNN)')
    .option('--max-steps <n>', 'override training.max_steps', (v) => Number.parseInt(v, 10))
    .option('--stop-when-idle <seconds>', 'stop with a final checkpoint once no new event arrived for this long (drain a backlog, then exit)', Number.parseFloat)
    .action(async (opts: { config: string; resume?: boolean; resumeFrom?: string; maxSteps?: number; stopWhenIdle?: number }) => {
      const config = loadConfig(opts.config);
      if (opts.maxSteps !== undefined && Number.isFinite(opts.maxSteps)) config.training.max_steps = opts.maxSteps;
      const logger = createLogger('trainer');
      const stop = new AbortController();
      const onSignal = (sig: string) => {
        if (stop.signal.aborted) process.exit(130); // a second signal: do not wait for the checkpoint
        logger.warn({ signal: sig }, 'stopping after the current step with a final checkpoint (signal again to exit at once)');
        stop.abort();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const result = await runStreamingTrainer({
        config, resume: opts.resume, resumeFrom: opts.resumeFrom, logger, signal: stop.signal,
        ...(opts.stopWhenIdle !== undefined && Number.isFinite(opts.stopWhenIdle) ? { stopWhenIdleMs: opts.stopWhenIdle * 1000 } : {}),
      });
      console.log(JSON.stringify({ run: config.run.id, steps: result.steps, policy_version: result.policyVersion, resumed_from: result.resumedFrom, totals: result.totals }));
    });
}
