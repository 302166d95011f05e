import type { Command } from 'commander';
import { loadConfig } from '../../config/index.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import { createLogger } from '../../util/logger.js';

export function registerTopicsCommand(program: Command): void {
  program
    .command('topics')
    .description("create the run's Kafka topics that do not exist yet (trajectories, policy versions, metrics, dead letters)")
    .requiredOption('-c, --config <file>', 'YAML config')
    .action(async (opts: { config: string }) => {
      const config = loadConfig(opts.config);
      const kafka = createKafka({ brokers: config.kafka.brokers, clientId: config.kafka.client_id }, createLogger('topics'));
      const specs = topicSpecs(config);
      const created = await ensureTopics(kafka, specs);
      for (const spec of specs) console.log(`${spec.topic.padEnd(32)} ${created.includes(spec.topic) ? 'created' : 'exists'}`);
    });
}
