import type { Command } from 'commander';
import { nonNegativeInt, positiveInt, seconds } from '../arguments.js';
import { loadConfig } from '../../config/index.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import { createEnvironments } from '../../producers/envs/index.js';
import { formatProgress, RolloutWorker } from '../../producers/rollout.js';
import { createLogger } from '../../util/logger.js';

interface RolloutFlags {
  config: string;
  groups?: number;
  graceS: number;
  taskOffset?: number;
  progressS: number;
  evalOnly?: boolean;
}

/**
 * `trajstore rollout -c FILE`: a rollout producer. Runs until `--groups` train groups are done
 * or SIGTERM/SIGINT: then it starts no new group, lets running episodes finish for `--grace-s`,
 * marks the rest interrupted, flushes every event to Kafka and exits 0.
 */
export function registerRolloutCommand(program: Command): void {
  program
    .command('rollout')
    .description('run agents against the configured environment and write every turn to Kafka')
    .requiredOption('-c, --config <file>', 'YAML config')
    .option('--groups <n>', 'stop after this many train groups (default: until SIGTERM)', positiveInt)
    .option('--grace-s <seconds>', 'on SIGTERM, time running episodes get to finish before they are interrupted', seconds, 30)
    .option('--task-offset <n>', 'index of the first train task (tasks are seeded by run.seed and their index)', nonNegativeInt)
    .option('--progress-s <seconds>', 'seconds between progress lines on stderr', seconds, 5)
    .option('--eval-only', 'eval mode: run the held-out tasks (rollout.eval_tasks) against each new policy version, nothing to train on')
    .action(async (flags: RolloutFlags) => {
      const config = loadConfig(flags.config);
      const logger = createLogger('rollout');
      // The environment first: a missing browser or GBOX_API_KEY is refused before anything starts.
      const environments = await createEnvironments(config, logger);
      try {
        const kafka = createKafka({ brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-rollout` }, logger);
        await ensureTopics(kafka, topicSpecs(config));
        const worker = new RolloutWorker({
          config, kafka, environments, logger,
          maxGroups: flags.groups,
          evalOnly: flags.evalOnly ?? false,
          graceMs: flags.graceS * 1000,
          taskOffset: flags.taskOffset,
          progressEveryMs: Math.max(0.1, flags.progressS) * 1000,
          onProgress: (p) => process.stderr.write(`${formatProgress(p)}\n`),
        });
        const onSignal = (signal: NodeJS.Signals) => worker.stop(signal);
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
        try {
          await worker.run();
        } finally {
          process.off('SIGTERM', onSignal);
          process.off('SIGINT', onSignal);
        }
      } finally {
        await environments.close();
      }
    });
}
