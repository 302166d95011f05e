import type { ITopicConfig } from 'kafkajs';
import type { TrajstoreConfig } from '../config/index.js';

/**
 * The topics a run uses and how each is kept:
 * - trajectories: the source of truth; kept forever (replay re-trains and rebuilds from it);
 * - policy.versions: compacted by version key, so a new producer reads every version cheaply;
 * - trainer.metrics and the dead-letter topic: kept forever too; they are small.
 */
export function topicSpecs(config: Pick<TrajstoreConfig, 'kafka'>): ITopicConfig[] {
  const { topics, partitions, replication_factor: replicationFactor } = config.kafka;
  const keepForever = [
    { name: 'retention.ms', value: '-1' },
    { name: 'retention.bytes', value: '-1' },
  ];
  return [
    { topic: topics.trajectories, numPartitions: partitions, replicationFactor, configEntries: keepForever },
    {
      topic: topics.policy_versions,
      numPartitions: 1, // one total order of versions
      replicationFactor,
      configEntries: [{ name: 'cleanup.policy', value: 'compact' }],
    },
    { topic: topics.trainer_metrics, numPartitions: 1, replicationFactor, configEntries: keepForever },
    { topic: topics.dead_letter, numPartitions: 1, replicationFactor, configEntries: keepForever },
  ];
}
