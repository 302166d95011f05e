import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testKafka, testTopic, uniqueName } from '../support/services.js';

test('a message produced through the local broker is consumed back with its key and value', async (t) => {
  const kafka = testKafka();
  const topic = await testTopic(t, kafka);
  const producer = kafka.producer({ idempotent: true });
  await producer.connect();
  const sent = Array.from({ length: 10 }, (_, i) => ({ key: `group-${i % 3}`, value: `event-${i}` }));
  await producer.send({ topic, acks: -1, messages: sent });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: uniqueName('group') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const received: { key: string; value: string; partition: number }[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${received.length} of ${sent.length} messages arrived in 30 s`)), 30_000);
    consumer
      .run({
        eachMessage: async ({ partition, message }) => {
          received.push({ key: message.key!.toString(), value: message.value!.toString(), partition });
          if (received.length === sent.length) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();

  assert.deepEqual(received.map((m) => m.value).sort(), sent.map((m) => m.value).sort());
  // Keyed messages: one key always lands in one partition (the order guarantee groups rely on).
  const partitionsByKey = new Map<string, Set<number>>();
  for (const m of received) partitionsByKey.set(m.key, (partitionsByKey.get(m.key) ?? new Set()).add(m.partition));
  for (const [key, partitions] of partitionsByKey) assert.equal(partitions.size, 1, `key ${key} spread over partitions ${[...partitions]}`);
});
