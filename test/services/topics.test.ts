import assert from 'node:assert/strict';
import { test } from 'node:test';
import kafkajs from 'kafkajs';
import { parseConfig } from '../../src/config/index.js';
import { ensureTopics } from '../../src/kafka/client.js';
import { topicSpecs } from '../../src/kafka/topics.js';
import { testKafka, uniqueName } from '../support/services.js';

test('ensureTopics creates the run topics once, with policy versions compacted and trajectories kept forever', async (t) => {
  const prefix = uniqueName('run');
  const config = parseConfig(
    `model: {name: m}\nkafka:\n  partitions: 2\n  topics: {trajectories: ${prefix}.traj, policy_versions: ${prefix}.versions, trainer_metrics: ${prefix}.metrics, dead_letter: ${prefix}.dlq}\n`,
    'inline',
    {},
  );
  const kafka = testKafka();
  const specs = topicSpecs(config);
  const names = specs.map((s) => s.topic);
  const admin = kafka.admin();
  await admin.connect();
  t.after(async () => {
    await admin.deleteTopics({ topics: names }).catch(() => undefined);
    await admin.disconnect();
  });

  assert.deepEqual((await ensureTopics(kafka, specs)).sort(), [...names].sort());
  assert.deepEqual(await ensureTopics(kafka, specs), [], 'the second call creates nothing');

  const metadata = await admin.fetchTopicMetadata({ topics: [`${prefix}.traj`] });
  assert.equal(metadata.topics[0]!.partitions.length, 2);
  const configs = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [
      { type: kafkajs.ConfigResourceTypes.TOPIC, name: `${prefix}.versions`, configNames: ['cleanup.policy'] },
      { type: kafkajs.ConfigResourceTypes.TOPIC, name: `${prefix}.traj`, configNames: ['retention.ms'] },
    ],
  });
  const value = (topic: string, key: string) =>
    configs.resources.find((r) => r.resourceName === topic)!.configEntries.find((e) => e.configName === key)!.configValue;
  assert.equal(value(`${prefix}.versions`, 'cleanup.policy'), 'compact');
  assert.equal(value(`${prefix}.traj`, 'retention.ms'), '-1');
});
