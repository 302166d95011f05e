/**
 * A replay reader: a worker thread that reads some partitions' ranges of the trajectory topic,
 * decodes and assembles them (PartitionAssembly) and posts complete groups to the main thread.
 * Started by ReplayReaders (replay-readers.ts), which also defines the messages.
 *
 * kafkajs has no manual partition assignment: the reader joins a consumer group of its own
 * (nobody else in it, deleted on exit), pauses the partitions it does not own and seeks the ones
 * it does. Memory is bounded by credit: once the bytes posted for a partition and not yet taken
 * by the main thread pass `creditBytes`, that partition is paused until credit comes back; the
 * other partitions keep flowing, so the main thread's merge never waits on a paused one.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import type { Consumer } from 'kafkajs';
import { createKafka } from '../../kafka/client.js';
import { createLogger } from '../../util/logger.js';
import { PartitionAssembly } from './partition-assembly.js';
import type { FromReader, ReaderWorkerData, ToReader } from './replay-readers.js';
import type { AssembledGroup } from './types.js';

interface PartitionState {
  partition: number;
  next: number;
  end: number;
  assembly: PartitionAssembly;
  outstandingBytes: number;
  creditPaused: boolean;
  ended: boolean;
  lastProgressMs: number;
}

const data = workerData as ReaderWorkerData;
const port = parentPort!;
const logger = createLogger('replay-reader', { level: data.logLevel, pretty: false });
const kafka = createKafka({ brokers: data.brokers, clientId: data.clientId }, logger);
const groupId = `${data.groupPrefix}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
const states = new Map<number, PartitionState>(data.ranges.map((r) => [r.partition, {
  partition: r.partition, next: r.start, end: r.end, assembly: new PartitionAssembly(data.assembly),
  outstandingBytes: 0, creditPaused: false, ended: false, lastProgressMs: Date.now(),
}]));
let consumer: Consumer | null = null;
let closing: Promise<void> | null = null;
let idleTimer: NodeJS.Timeout | undefined;

function post(msg: FromReader): void {
  port.postMessage(msg);
}

function pause(partition: number): void {
  consumer?.pause([{ topic: data.topic, partitions: [partition] }]);
}

/**
 * Moves the token ids, logprobs and versions of a post's groups into two typed arrays (turns keep
 * views into them). Structured clone copies a plain array number by number, which cost more than
 * decoding them; a typed array is one block, and views of one buffer share it.
 */
function pack(groups: AssembledGroup[]): void {
  let ints = 0;
  let floats = 0;
  for (const g of groups) {
    for (const ep of g.episodes) {
      for (const t of ep.turns) {
        ints += t.promptTokenIds.length + t.completionTokenIds.length + (t.tokenPolicyVersions?.length ?? 0);
        floats += t.completionLogprobs.length;
      }
    }
  }
  const intBuf = new Int32Array(ints);
  const floatBuf = new Float64Array(floats);
  let i = 0;
  let f = 0;
  const ints32 = (values: ArrayLike<number>): Int32Array => {
    intBuf.set(values, i);
    return intBuf.subarray(i, (i += values.length));
  };
  for (const g of groups) {
    for (const ep of g.episodes) {
      for (const t of ep.turns) {
        t.promptTokenIds = ints32(t.promptTokenIds);
        t.completionTokenIds = ints32(t.completionTokenIds);
        if (t.tokenPolicyVersions) t.tokenPolicyVersions = ints32(t.tokenPolicyVersions);
        floatBuf.set(t.completionLogprobs, f);
        t.completionLogprobs = floatBuf.subarray(f, (f += t.completionLogprobs.length));
      }
    }
  }
}

/** Posts what the partition's assembly produced since the last post. */
function flush(st: PartitionState, records: number, bytes: number): void {
  const { items, undecodable, counters } = st.assembly.take();
  if (records === 0 && items.length === 0 && undecodable.length === 0) return;
  pack(items.map((item) => item.group));
  st.outstandingBytes += bytes;
  post({ type: 'batch', partition: st.partition, items, undecodable, counters, records, bytes });
}

function endPartition(st: PartitionState): void {
  if (st.ended) return;
  st.ended = true;
  pause(st.partition);
  st.assembly.finish();
  flush(st, 0, 0);
  post({ type: 'end', partition: st.partition });
  if ([...states.values()].every((s) => s.ended)) void close();
}

async function close(): Promise<void> {
  closing ??= (async () => {
    clearInterval(idleTimer);
    const c = consumer;
    consumer = null;
    await c?.disconnect().catch((err) => logger.warn({ err: String(err) }, 'consumer disconnect failed'));
    // The group was only a vehicle for the start offsets; leave nothing behind.
    const admin = kafka.admin();
    await admin.connect().then(() => admin.deleteGroups([groupId])).catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
    post({ type: 'closed' });
  })();
  return closing;
}

/**
 * Offsets without a record (transaction markers, compacted-away records) can leave a range's end
 * out of reach: a partition that is not paused and has not moved for `idleEndMs` is over. Counted
 * from when the consumer has joined and sought, so a slow start never ends a range early.
 */
function watchIdlePartitions(): NodeJS.Timeout {
  for (const st of states.values()) st.lastProgressMs = Date.now();
  return setInterval(() => {
    const now = Date.now();
    for (const st of states.values()) if (!st.ended && !st.creditPaused && now - st.lastProgressMs > data.idleEndMs) endPartition(st);
  }, 500);
}

port.on('message', (msg: ToReader) => {
  if (msg.type === 'stop') {
    void close();
    return;
  }
  const st = states.get(msg.partition);
  if (!st) return;
  st.outstandingBytes -= msg.bytes;
  if (st.creditPaused && st.outstandingBytes < data.creditBytes) {
    st.creditPaused = false;
    st.lastProgressMs = Date.now();
    if (!st.ended) consumer?.resume([{ topic: data.topic, partitions: [st.partition] }]);
  }
});

async function run(): Promise<void> {
  const c = kafka.consumer({ groupId, sessionTimeout: 60_000, rebalanceTimeout: 60_000, maxWaitTimeInMs: 200 });
  consumer = c;
  await c.connect();
  await c.subscribe({ topic: data.topic, fromBeginning: true });
  c.on(c.events.CRASH, (e) => post({ type: 'failed', message: String(e.payload.error?.message ?? e.payload.error) }));
  await c.run({
    autoCommit: false,
    eachBatch: async ({ batch }) => {
      const st = states.get(batch.partition);
      if (!st || st.ended) return pause(batch.partition);
      let records = 0;
      let bytes = 0;
      for (const m of batch.messages) {
        const offset = Number(m.offset);
        // Before the seek takes effect a fetch may start at the beginning: only offsets at or
        // past the next expected one are taken.
        if (offset < st.next) continue;
        if (offset >= st.end) break;
        st.next = offset + 1;
        records++;
        bytes += m.value?.length ?? 0;
        st.assembly.push({ partition: st.partition, offset, timestamp: Number(m.timestamp), value: m.value });
      }
      if (records > 0) st.lastProgressMs = Date.now();
      flush(st, records, bytes);
      if (st.next >= st.end) return endPartition(st);
      if (st.outstandingBytes >= data.creditBytes) {
        st.creditPaused = true;
        pause(st.partition);
      }
    },
  });
  const others = data.topicPartitions.filter((p) => !states.has(p));
  if (others.length > 0) c.pause([{ topic: data.topic, partitions: others }]);
  for (const st of states.values()) c.seek({ topic: data.topic, partition: st.partition, offset: String(st.next) });
  if (!closing) idleTimer = watchIdlePartitions();
}

run().catch((err: unknown) => post({ type: 'failed', message: err instanceof Error ? err.message : String(err) }));
