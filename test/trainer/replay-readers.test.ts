/**
 * Replay reader threads against the real broker: every group of the range arrives once, merged
 * in the order the source run completed them, the same order whatever the number of readers;
 * flow control never loses or stalls a group; undecodable records come out with their position;
 * readers leave no consumer group behind.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Partitioners } from 'kafkajs';
import { ReplayReaders, type ReplayInput } from '../../src/consumers/trainer/replay-readers.js';
import { topicWatermarks } from '../../src/consumers/trainer/source.js';
import { ensureTopics } from '../../src/kafka/client.js';
import type { TrajectoryEvent } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { KAFKA_BROKERS, testKafka, uniqueName } from '../support/services.js';
import { groupEvents, produceGroups } from './fixtures.js';

const logger = createLogger('test-replay-readers', { level: 'warn', pretty: false });
const RUN = 'src-readers';
const PARTITIONS = 3;

describe('replay readers', () => {
  const kafka = testKafka();
  const topic = uniqueName('trreaders');
  const prefix = uniqueName('readers');
  let groups: TrajectoryEvent[][] = [];
  let ranges: Array<{ partition: number; start: number; end: number }> = [];

  before(async () => {
    await ensureTopics(kafka, [{ topic, numPartitions: PARTITIONS }]);
    // 30 groups, one after another in time; keyed by group id they spread over the partitions.
    const t0 = Date.now() - 3_600_000;
    groups = Array.from({ length: 30 }, (_, i) => groupEvents({ runId: RUN, seed: i + 1, startMs: t0 + i * 1_000 }));
    await produceGroups(kafka, topic, groups);
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    await producer.send({ topic, messages: [{ key: 'junk', value: Buffer.from('not an avro event') }] });
    await producer.disconnect();
    const marks = await topicWatermarks(kafka, topic);
    ranges = [...marks].map(([partition, m]) => ({ partition, start: m.low, end: m.high }));
  });
  after(async () => {
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
  });

  async function readAll(opts: { readers: number; creditBytes?: number }): Promise<{ inputs: ReplayInput[]; records: number }> {
    const r = new ReplayReaders({
      brokers: KAFKA_BROKERS, clientId: 'test-readers', topic, topicPartitions: [...Array(PARTITIONS).keys()], ranges, groupPrefix: prefix,
      assembly: { sourceRunId: RUN, timeoutMs: 600_000, maxOpenGroups: 100 }, logger, idleEndMs: 5_000,
      readers: opts.readers, ...(opts.creditBytes === undefined ? {} : { creditBytes: opts.creditBytes }),
    });
    r.start();
    const inputs: ReplayInput[] = [];
    try {
      for await (const x of r.inputs()) inputs.push(x);
    } finally {
      await r.stop();
    }
    return { inputs, records: r.records };
  }

  const groupIds = (inputs: ReplayInput[]) => inputs.flatMap((x) => (x.type === 'group' ? [x.group.groupId] : []));

  it('every group arrives once, in the order the source run completed them, whatever the number of readers', { timeout: 120_000 }, async () => {
    const inOrder = groups.map((g) => g[0]!.group_id);
    const total = groups.reduce((n, g) => n + g.length, 0) + 1;
    for (const readers of [1, 2, 3]) {
      const { inputs, records } = await readAll({ readers });
      assert.deepEqual(groupIds(inputs), inOrder, `${readers} reader(s)`);
      assert.equal(records, total, `${readers} reader(s): every record read once`);
      assert.ok(inputs.every((x) => x.type !== 'group' || x.group.closedBy === 'complete'));
    }
  });

  it('a credit smaller than one fetch still delivers every group: partitions pause and resume, none stalls', { timeout: 60_000 }, async () => {
    const { inputs } = await readAll({ readers: 2, creditBytes: 1 });
    assert.deepEqual(groupIds(inputs), groups.map((g) => g[0]!.group_id));
  });

  it('an undecodable record comes out with its position and the codec reason', { timeout: 60_000 }, async () => {
    const { inputs } = await readAll({ readers: 2 });
    const bad = inputs.filter((x) => x.type === 'undecodable');
    assert.equal(bad.length, 1);
    const b = bad[0]!;
    assert.ok(b.type === 'undecodable');
    assert.equal(b.record.value?.toString(), 'not an avro event');
    assert.ok(ranges.some((r) => r.partition === b.record.partition && b.record.offset >= r.start && b.record.offset < r.end));
    assert.ok(b.reason.length > 0);
  });

  it('readers leave no consumer group behind', { timeout: 30_000 }, async () => {
    const admin = kafka.admin();
    await admin.connect();
    const { groups: left } = await admin.listGroups();
    await admin.disconnect();
    assert.deepEqual(left.filter((g) => g.groupId.startsWith(prefix)), []);
  });
});
