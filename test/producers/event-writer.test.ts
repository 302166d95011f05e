/**
 * The Kafka event writer against the real broker: events of a group stay in order in one
 * partition across many batches, and a full buffer makes append wait (backpressure).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { EventWriter } from '../../src/producers/event-writer.js';
import { newTrajectoryEvent } from '../../src/schemas/index.js';
import { testKafka, testTopic } from '../support/services.js';
import { readTopic } from './helpers.js';

function reward(groupId: string, episodeId: string, seq: number) {
  return newTrajectoryEvent({
    run_id: 'r', group_id: groupId, episode_id: episodeId, seq, producer_id: 'p', policy_version: 0, purpose: 'train',
    payload: { Reward: { value: seq, components: {}, source: 'test', turn_index: seq } },
  });
}

test('events of a group land in order in one partition, across many batches', async (t) => {
  const kafka = testKafka();
  const topic = await testTopic(t, kafka, 'writer', 6);
  // Small batches: order must hold across many produce requests, not only within one.
  const writer = new EventWriter({ kafka, topic, maxBatchBytes: 2_000, compression: 'gzip' });
  await writer.connect();
  const groups = Array.from({ length: 12 }, () => ({ group: randomUUID(), episode: randomUUID() }));
  const perGroup = 60;
  for (let seq = 0; seq < perGroup; seq++) for (const g of groups) await writer.append(reward(g.group, g.episode, seq));
  await writer.close();
  assert.equal(writer.acked, groups.length * perGroup);
  const events = await readTopic(kafka, topic, (es) => es.length >= groups.length * perGroup);
  assert.equal(events.length, groups.length * perGroup);
  const partitions = new Set<number>();
  for (const g of groups) {
    const mine = events.filter((e) => e.event.group_id === g.group).sort((a, b) => a.offset - b.offset);
    assert.deepEqual(mine.map((e) => e.event.seq), Array.from({ length: perGroup }, (_, i) => i));
    assert.equal(new Set(mine.map((e) => e.partition)).size, 1);
    assert.ok(mine.every((e) => e.key === g.group));
    partitions.add(mine[0]!.partition);
  }
  assert.ok(partitions.size > 1, 'groups spread over partitions');
});

test('a full buffer makes append wait until Kafka has taken the events (backpressure)', async (t) => {
  const kafka = testKafka();
  const topic = await testTopic(t, kafka, 'writer', 1);
  const writer = new EventWriter({ kafka, topic, maxBufferedBytes: 1, lingerMs: 1 });
  await writer.connect();
  const group = randomUUID();
  const episode = randomUUID();
  let appended = 0;
  for (let seq = 0; seq < 20; seq++) {
    let settled = false;
    const pending = writer.append(reward(group, episode, seq)).then(() => (settled = true));
    await Promise.resolve();
    assert.equal(settled, false, 'append does not return while the buffer is over its limit');
    await pending;
    appended++;
    // Over the limit at every append: it returned only once its own event was sent and acknowledged.
    assert.equal(writer.acked, appended);
  }
  await writer.close();
});
