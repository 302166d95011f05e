/**
 * Poison messages: whatever cannot be decoded or stored goes to the dead-letter topic with the
 * reason and its source partition and offset, and the sink keeps going with the rest.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Partitioners } from 'kafkajs';
import {
  DEAD_LETTER_HEADERS,
  decodeDeadLetter,
  encodePolicyVersion,
  encodeTrainerStepMetrics,
  encodeTrajectoryEvent,
  type DeadLetter,
} from '../../src/schemas/index.js';
import { testKafka, uniqueName } from '../support/services.js';
import { syntheticRun } from './events.js';
import { count, rows, sinkTopics, startSink, testDatabase, waitFor } from './harness.js';

test('poison messages land in the dead-letter topic with reason and source, and the sink keeps going', { timeout: 120_000 }, async (t) => {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka, 1);
  const { database, client } = await testDatabase(t);
  const events = syntheticRun({ runId: uniqueName('run'), groups: 2, groupSize: 2, turns: 2, promptTokens: 16, completionTokens: 8, seed: 5 });
  const valid = events.map((e) => encodeTrajectoryEvent(e));
  const policyVersion = encodePolicyVersion({
    run_id: 'r', version: 1, parent_version: null, base_model: 'm', served_model_name: 'm-v1', adapter_uri: 'file:///a', adapter_checksum: `sha256:${'c'.repeat(64)}`,
    checkpoint_uri: null, training_step: 1, metrics: {}, created_at: Date.now(),
  });
  const poison: Array<{ value: Buffer | null; code: string }> = [
    { value: randomBytes(64), code: 'TRAJ_E_DECODE_BAD_MAGIC' },
    { value: Buffer.from('{"event_id":"not avro"}'), code: 'TRAJ_E_DECODE_BAD_MAGIC' },
    { value: valid[3]!.subarray(0, 40), code: 'TRAJ_E_DECODE_TRUNCATED' },
    { value: policyVersion, code: 'TRAJ_E_DECODE_WRONG_SCHEMA' },
    { value: null, code: 'TRAJ_E_DECODE_TRUNCATED' },
  ];

  // Valid events with poison in between, one partition, so offsets are known in order.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  t.after(() => producer.disconnect());
  const poisonOffsets = new Map<string, string>();
  const send = async (topic: string, value: Buffer | null) => {
    const [meta] = await producer.send({ topic, messages: [{ key: 'k', value }] });
    return meta!.baseOffset!;
  };
  for (let i = 0; i < valid.length; i++) {
    await send(topics.trajectories, valid[i]!);
    const bad = poison[i];
    if (bad) poisonOffsets.set(`${topics.trajectories}/${await send(topics.trajectories, bad.value)}`, bad.code);
  }
  const nanLoss = encodeTrainerStepMetrics({
    run_id: 'r', step: 1, timestamp: Date.now(), policy_version: 0, loss: Number.NaN, kl_ref: null, entropy: null, clip_fraction: 0,
    importance_weight_mean: 1, importance_weight_max: 1, behavior_logprob_abs_diff_mean: 0, behavior_logprob_abs_diff_max: 0, behavior_kl: 0,
    grad_norm: 0, learning_rate: 1e-5, tokens_per_second: 0, step_time_ms: 1, num_tokens: 1, num_sequences: 1, num_groups: 1,
    reward_mean: 0, reward_std: 0, staleness_histogram: [], groups_dropped: {}, extra: {},
  });
  poisonOffsets.set(`${topics.trainerMetrics}/${await send(topics.trainerMetrics, nanLoss)}`, 'TRAJ_E_SINK_UNSTORABLE');

  const sink = await startSink(t, kafka, topics, database);
  await waitFor('valid events stored and poison dead-lettered', async () => sink.stats.deadLetters === poisonOffsets.size
    && (await count(client, `SELECT count() AS n FROM ${database}.events`)) === events.length);

  const deadLetters = await consumeAll(kafka, topics.deadLetter, poisonOffsets.size);
  const seen = new Map(deadLetters.map(({ record }) => [`${record.source_topic}/${record.source_offset}`, record.error_code]));
  assert.deepEqual(seen, poisonOffsets, 'each poison message, by source topic and offset, with its error code');
  for (const { record, headers } of deadLetters) {
    assert.equal(record.source_partition, 0);
    assert.equal(record.rejected_by, sink.groupId);
    assert.ok(record.reason.length > 0);
    assert.equal(headers[DEAD_LETTER_HEADERS.sourceOffset], String(record.source_offset));
    assert.equal(headers[DEAD_LETTER_HEADERS.errorCode], record.error_code);
  }
  const random = deadLetters.find((d) => d.record.source_offset === Number([...poisonOffsets.keys()][0]!.split('/')[1]));
  assert.deepEqual(random?.record.original_bytes, poison[0]!.value, 'the original bytes are kept for replay');

  const ids = await rows<{ event_id: string }>(client, `SELECT event_id FROM ${database}.events ORDER BY event_id`);
  assert.deepEqual(ids.map((r) => r.event_id), events.map((e) => e.event_id).sort(), 'every valid event around the poison is stored');
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.trainer_steps`), 0);
});

async function consumeAll(kafka: ReturnType<typeof testKafka>, topic: string, expected: number): Promise<Array<{ record: DeadLetter; headers: Record<string, string> }>> {
  const consumer = kafka.consumer({ groupId: uniqueName('dlq-reader') });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const out: Array<{ record: DeadLetter; headers: Record<string, string> }> = [];
  await consumer.run({
    eachMessage: async ({ message }) => {
      const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
      out.push({ record: decodeDeadLetter(message.value!), headers });
    },
  });
  try {
    await waitFor(`${expected} dead letters`, async () => out.length >= expected, 30_000);
  } finally {
    await consumer.disconnect();
  }
  return out;
}
