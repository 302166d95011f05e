/**
 * Pipeline benchmark: realistic GRPO rollout events (groups of 8 episodes, 4 turns each, turns
 * with 1,024 prompt and 256 completion token ids, behavior logprobs and chat text) encoded and
 * produced to Kafka by this process, consumed by a `trajstore sink` child process into
 * ClickHouse, and queried back. Reported:
 *
 * - end-to-end rate: events / (first produce → last event visible in `SELECT … FROM events`);
 * - freshness: for every 50th event, its produce time (event timestamp, stamped just before
 *   encoding) to the first poll (every 100 ms) of the `events` view that returns it; p50, p99;
 *   once with the producer at full speed (so it includes the backlog a saturated sink builds)
 *   and once for 15 s paced at half the measured end-to-end rate (latency at a sustained load);
 * - baseline, in the same run on the same broker: Kafka's own ProducerPerformance
 *   (kafka-producer-perf-test) with the same record count and the mean record size, acks=all.
 *
 *   npm run bench:pipeline            (env: BENCH_EVENTS, default 20000)
 *
 * The last line is `RESULT {json}`. Topics and database are the bench's own and are removed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Partitioners } from 'kafkajs';
import { createClickHouse } from '../src/clickhouse/client.js';
import { quoteString } from '../src/clickhouse/sql.js';
import { createKafka, ensureTopics } from '../src/kafka/client.js';
import { encodeTrajectoryEvent, type TrajectoryEvent } from '../src/schemas/index.js';
import { LocalServices, servicesOptionsFromEnv } from '../src/services/manager.js';
import { createLogger } from '../src/util/logger.js';
import { syntheticRun } from '../test/sink/events.js';

const EVENTS = Number(process.env.BENCH_EVENTS ?? 20_000);
const PARTITIONS = 3;
const SAMPLE_EVERY = 50;
const POLL_MS = 100;
const SEND_CHUNK = 50;
const SENDS_IN_FLIGHT = 8;
const PACED_FRACTION = 0.5;
const PACED_SECONDS = 15;

const services = new LocalServices(servicesOptionsFromEnv());
const brokers = [services.kafka.address];
const clickhouseUrl = services.clickhouse.url;
const logger = createLogger('bench', { level: 'warn', pretty: false });
const suffix = `${Date.now().toString(36)}${process.pid}`;
const topics = { trajectories: `bench.traj.${suffix}`, policy_versions: `bench.pv.${suffix}`, trainer_metrics: `bench.tm.${suffix}`, dead_letter: `bench.dlq.${suffix}`, baseline: `bench.baseline.${suffix}` };
const database = `bench_${suffix}`;
const runId = `bench-${suffix}`;

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** Events until EVENTS is reached, whole groups, as a rollout producer would write them. */
function makeEvents(run: string, count: number): TrajectoryEvent[] {
  const perGroup = syntheticRun({ runId: run, groups: 1, groupSize: 8, turns: 4, promptTokens: 1024, completionTokens: 256, seed: 0 }).length;
  const groups = Math.ceil(count / perGroup);
  return syntheticRun({ runId: run, groups, groupSize: 8, turns: 4, promptTokens: 1024, completionTokens: 256, seed: 1 }).slice(0, count);
}

/** Kafka's own producer perf tool; returns records/s from its summary line. */
async function kafkaBaseline(records: number, recordSize: number): Promise<{ recordsPerSec: number; mbPerSec: number; line: string }> {
  const { command, args } = services.kafka.toolCommand('org.apache.kafka.tools.ProducerPerformance', [
    '--topic', topics.baseline, '--num-records', String(records), '--record-size', String(recordSize), '--throughput', '-1',
    '--producer-props', `bootstrap.servers=${brokers[0]}`, 'acks=all',
  ]);
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  // The summary is the line with percentiles; the lines before it are 5-second windows.
  const line = out.trim().split('\n').find((l) => /records sent, [\d.]+ records\/sec/.test(l) && /50th/.test(l)) ?? '';
  const match = /records sent, ([\d.]+) records\/sec \(([\d.]+) MB\/sec\)/.exec(line);
  if (code !== 0 || !match) throw new Error(`ProducerPerformance failed (exit ${code}):\n${out.slice(-2000)}`);
  return { recordsPerSec: Number(match[1]), mbPerSec: Number(match[2]), line };
}

function startSink(dir: string): ChildProcess {
  const config = join(dir, 'bench.yaml');
  writeFileSync(config, [
    'model: { name: bench }',
    `kafka: { brokers: [${brokers[0]}], partitions: ${PARTITIONS}, topics: { trajectories: ${topics.trajectories}, policy_versions: ${topics.policy_versions}, trainer_metrics: ${topics.trainer_metrics}, dead_letter: ${topics.dead_letter} } }`,
    `clickhouse: { url: ${clickhouseUrl}, database: ${database} }`,
  ].join('\n'));
  const child = spawn(process.execPath, ['bin/trajstore.mjs', 'sink', '-c', config, '--no-progress'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn', TRAJSTORE_LOG_FORMAT: 'json' },
  });
  return child;
}

async function main(): Promise<void> {
  const kafka = createKafka({ brokers, clientId: 'bench' }, logger);
  const clickhouse = createClickHouse({ url: clickhouseUrl, username: 'default', password: '' });
  await ensureTopics(kafka, [
    { topic: topics.trajectories, numPartitions: PARTITIONS },
    { topic: topics.policy_versions, numPartitions: 1 },
    { topic: topics.trainer_metrics, numPartitions: 1 },
    { topic: topics.dead_letter, numPartitions: 1 },
    { topic: topics.baseline, numPartitions: PARTITIONS },
  ]);
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-bench-'));
  let sink: ChildProcess | undefined;
  try {
    const events = makeEvents(runId, EVENTS);
    const sizes = events.map((e) => encodeTrajectoryEvent(e).length);
    const meanSize = Math.round(sizes.reduce((a, b) => a + b, 0) / sizes.length);
    const turns = events.filter((e) => 'Turn' in e.payload).length;
    console.log(`events: ${events.length} (${turns} turns), mean record ${meanSize} B, ${PARTITIONS} partitions, ${new Date().toISOString()}`);

    const baseline = await kafkaBaseline(events.length, meanSize);
    console.log(`baseline: ${baseline.line}`);

    sink = startSink(dir);
    await waitForSinkReady(kafka, clickhouse);

    const result = await runPipeline(kafka, clickhouse, events, runId);
    // Freshness at saturation is mostly backlog; at a load the pipeline sustains it is latency.
    const paceRate = Math.max(100, Math.round(result.eventsPerSec * PACED_FRACTION));
    const pacedRun = `${runId}-paced`;
    const paced = await runPipeline(kafka, clickhouse, makeEvents(pacedRun, paceRate * PACED_SECONDS), pacedRun, paceRate);
    const ratio = result.eventsPerSec / baseline.recordsPerSec;
    const row = (name: string, value: string, base: string) => console.log(`${name.padEnd(34)} ${value.padStart(14)}   ${base}`);
    console.log('');
    row('', 'trajstore', "Kafka's ProducerPerformance");
    row('events/s into ClickHouse (e2e)', result.eventsPerSec.toFixed(0), `${baseline.recordsPerSec.toFixed(0)} records/s into Kafka`);
    row('MB/s', ((result.eventsPerSec * meanSize) / 1e6).toFixed(1), baseline.mbPerSec.toFixed(1));
    row('produce-only events/s (this process)', result.produceEventsPerSec.toFixed(0), '');
    row('ratio e2e / Kafka producer', `${(ratio * 100).toFixed(1)}%`, 'goal >= 40%');
    row('freshness p50 / p99 at saturation', `${result.freshnessP50} / ${result.freshnessP99}`, 'ms; producer at full speed, backlog included');
    row(`freshness p50 / p99 at ${paceRate} ev/s`, `${paced.freshnessP50} / ${paced.freshnessP99}`, `ms; ${PACED_SECONDS} s paced at ${PACED_FRACTION * 100}% of the e2e rate; goal p99 < 3000`);
    console.log(`RESULT ${JSON.stringify({
      events: events.length,
      turns,
      record_bytes_mean: meanSize,
      partitions: PARTITIONS,
      events_per_s_e2e: Math.round(result.eventsPerSec),
      produce_events_per_s: Math.round(result.produceEventsPerSec),
      kafka_perf_records_per_s: Math.round(baseline.recordsPerSec),
      ratio_vs_kafka: Number(ratio.toFixed(3)),
      freshness_saturated_p50_ms: result.freshnessP50,
      freshness_saturated_p99_ms: result.freshnessP99,
      freshness_saturated_samples: result.samples,
      paced_events_per_s: paceRate,
      freshness_paced_p50_ms: paced.freshnessP50,
      freshness_paced_p99_ms: paced.freshnessP99,
      freshness_paced_samples: paced.samples,
      goal_ratio_met: ratio >= 0.4,
      goal_freshness_p99_met: paced.freshnessP99 < 3000,
    })}`);
  } finally {
    sink?.kill('SIGTERM');
    if (sink) await new Promise((resolve) => sink!.once('exit', resolve));
    await clickhouse.command({ query: `DROP DATABASE IF EXISTS ${database}` }).catch(() => undefined);
    await clickhouse.close();
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: Object.values(topics) }).catch(() => undefined);
    await admin.disconnect();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** One warm-up group through the whole pipeline: the sink has migrated, joined and fetched. */
async function waitForSinkReady(kafka: ReturnType<typeof createKafka>, clickhouse: ReturnType<typeof createClickHouse>): Promise<void> {
  const warm = syntheticRun({ runId: `${runId}-warmup`, groups: 1, groupSize: 2, turns: 1, promptTokens: 8, completionTokens: 4, seed: 9 });
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  await producer.send({ topic: topics.trajectories, messages: warm.map((e) => ({ key: e.group_id, value: encodeTrajectoryEvent(e) })) });
  await producer.disconnect();
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const n = await countWhere(clickhouse, `run_id = ${quoteString(`${runId}-warmup`)}`).catch(() => 0);
    if (n === warm.length) return;
    await sleep(200);
  }
  throw new Error('the sink did not store the warm-up events within 120 s; run it by hand to see why');
}

async function countWhere(clickhouse: ReturnType<typeof createClickHouse>, where: string): Promise<number> {
  const result = await clickhouse.query({ query: `SELECT count() AS n FROM ${database}.events WHERE ${where}`, format: 'JSONEachRow' });
  const [row] = await result.json<{ n: string }>();
  return Number(row?.n ?? 0);
}

/** Produces `events` (as fast as possible, or `pace` events/s) and waits until all are visible. */
async function runPipeline(kafka: ReturnType<typeof createKafka>, clickhouse: ReturnType<typeof createClickHouse>, events: TrajectoryEvent[], run: string, pace?: number) {
  const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  const sentAt = new Map<string, number>();
  const visibleAt = new Map<string, number>();
  let producing = true;
  const started = Date.now();
  let produceDone = started;

  // Poll the view for the sampled events that are not visible yet.
  const poller = (async () => {
    while (producing || visibleAt.size < sentAt.size) {
      const pending = [...sentAt.keys()].filter((id) => !visibleAt.has(id)).slice(0, 500);
      if (pending.length > 0) {
        const result = await clickhouse.query({ query: `SELECT event_id FROM ${database}.events WHERE event_id IN (${pending.map(quoteString).join(',')})`, format: 'JSONEachRow' });
        const now = Date.now();
        for (const { event_id } of await result.json<{ event_id: string }>()) visibleAt.set(event_id, now);
      }
      if (Date.now() - started > 600_000) throw new Error('events still not visible after 10 minutes');
      await sleep(POLL_MS);
    }
  })();

  const chunks: TrajectoryEvent[][] = [];
  for (let i = 0; i < events.length; i += SEND_CHUNK) chunks.push(events.slice(i, i + SEND_CHUNK));
  let next = 0;
  const sender = async () => {
    while (next < chunks.length) {
      const index = next++;
      const chunk = chunks[index]!;
      if (pace) await sleep(started + (index * SEND_CHUNK * 1000) / pace - Date.now());
      const now = Date.now();
      const messages = chunk.map((e, i) => {
        e.timestamp = now;
        if (i % SAMPLE_EVERY === 0) sentAt.set(e.event_id, now);
        return { key: e.group_id, value: encodeTrajectoryEvent(e) };
      });
      await producer.send({ topic: topics.trajectories, acks: -1, messages });
    }
  };
  await Promise.all(Array.from({ length: pace ? 1 : SENDS_IN_FLIGHT }, sender));
  produceDone = Date.now();
  producing = false;
  await producer.disconnect();

  // End to end: until the last event is visible.
  const where = `run_id = ${quoteString(run)}`;
  while ((await countWhere(clickhouse, where)) < events.length) {
    if (Date.now() - started > 600_000) throw new Error('events still not stored after 10 minutes');
    await sleep(POLL_MS);
  }
  const finished = Date.now();
  await poller;
  const freshness = [...sentAt].map(([id, at]) => visibleAt.get(id)! - at).sort((a, b) => a - b);
  return {
    eventsPerSec: events.length / ((finished - started) / 1000),
    produceEventsPerSec: events.length / ((produceDone - started) / 1000),
    freshnessP50: quantile(freshness, 0.5),
    freshnessP99: quantile(freshness, 0.99),
    samples: freshness.length,
  };
}

await main();
