/**
 * Producer benchmark: realistic Turn events (1,024 prompt + 256 completion tokens with behavior
 * logprobs and chat text) written through trajstore's EventWriter (Avro encoding of every event,
 * the idempotent producer with acks=all, keyed by group id, one request in flight), side by side
 * in the same run with Kafka's own `kafka-producer-perf-test` (org.apache.kafka.tools.ProducerPerformance)
 * at the same record size, on the same broker, with the same guarantees (acks=all, idempotence,
 * no compression: the perf tool's random payload does not compress, so gzip would not compare
 * like with like; the gzip figure of our producer is reported on its own).
 *
 * Rounds alternate the two producers; medians are reported. Each side gets a fresh topic.
 *
 *   npm run bench:produce        (env: BENCH_EVENTS=20000, BENCH_ROUNDS=3)
 *   → RESULT {"trajstore_events_per_s":..., "kafka_tool_records_per_s":..., "ratio":..., ...}
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createKafka, ensureTopics } from '../src/kafka/client.js';
import { EventWriter } from '../src/producers/event-writer.js';
import { mulberry32 } from '../src/util/random.js';
import { encodeTrajectoryEvent, newTrajectoryEvent, type TrajectoryEvent } from '../src/schemas/index.js';
import { LocalServices, servicesOptionsFromEnv } from '../src/services/manager.js';
import { createLogger } from '../src/util/logger.js';

const EVENTS = Number(process.env.BENCH_EVENTS ?? 20_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const GROUPS = 256; // distinct keys: events spread over partitions as real groups do
const rand = mulberry32(20251123);

function tokenIds(n: number): number[] {
  return Array.from({ length: n }, () => (rand() < 0.02 ? 151643 + Math.floor(rand() * 12) : Math.min(151_935, Math.floor(Math.exp(rand() * Math.log(151_936))))));
}

function prose(chars: number): string {
  const words = ['the', 'button', 'click', 'page', 'form', 'submit', 'screenshot', 'observation', 'task', 'agent', 'answer', 'value', 'field', 'next'];
  let s = '';
  while (s.length < chars) s += `${words[Math.floor(rand() * words.length)]} `;
  return s.slice(0, chars);
}

/** A Turn as a browser episode's later turn writes it: ids, logprobs, delta prompt, completion, screenshot ref. */
function turn(groupId: string, seq: number): TrajectoryEvent {
  return newTrajectoryEvent({
    run_id: 'bench', group_id: groupId, episode_id: randomUUID(), seq, producer_id: 'bench/1', policy_version: 3, purpose: 'train',
    payload: {
      Turn: {
        turn_index: seq - 1, model: 'run-v3', prompt_token_ids: tokenIds(1024), completion_token_ids: tokenIds(256),
        completion_logprobs: Array.from({ length: 256 }, () => Math.fround(-(rand() ** 4) * 6)), token_policy_versions: null,
        prompt_format: 'messages_delta_json', prompt: JSON.stringify([{ role: 'user', content: prose(1200) }]), completion_text: prose(900),
        action: { type: 'click', args_json: '{"x":120,"y":340}' }, action_parse_error: null,
        observation: { sha256: 'a'.repeat(64), uri: `file:///blobs/sha256/aa/${'a'.repeat(64)}`, media_type: 'image/png', byte_size: 40_000, width: 1280, height: 800 },
        latency_ms: 850, env_latency_ms: 120, finish_reason: 'stop', request_id: `chatcmpl-${randomUUID()}`, prompt_images: [], image_processing: null,
      },
    },
  });
}

async function ours(kafka: ReturnType<typeof createKafka>, topic: string, templates: TrajectoryEvent[], compression: 'none' | 'gzip'): Promise<{ eventsPerSec: number; mbPerSec: number; bytes: number }> {
  const writer = new EventWriter({ kafka, topic, compression });
  await writer.connect();
  const started = process.hrtime.bigint();
  let bytes = 0;
  for (let i = 0; i < EVENTS; i++) {
    // A fresh envelope per event (new id and time), encoded by the writer as production does.
    const t = templates[i % templates.length]!;
    const event = { ...t, event_id: randomUUID(), timestamp: Date.now(), group_id: `g-${i % GROUPS}` };
    await writer.append(event);
    if (i < 50) bytes += encodeTrajectoryEvent(event).length;
  }
  await writer.flush();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await writer.close();
  const avg = bytes / Math.min(50, EVENTS);
  return { eventsPerSec: EVENTS / seconds, mbPerSec: (EVENTS * avg) / seconds / 2 ** 20, bytes: avg };
}

async function kafkaTool(services: LocalServices, brokers: string, topic: string, recordSize: number): Promise<{ recordsPerSec: number; mbPerSec: number; line: string }> {
  const { command, args } = services.kafka.toolCommand('org.apache.kafka.tools.ProducerPerformance', [
    '--topic', topic, '--num-records', String(EVENTS), '--record-size', String(recordSize), '--throughput', '-1',
    '--producer-props', `bootstrap.servers=${brokers}`, 'acks=all', 'enable.idempotence=true', 'compression.type=none', 'linger.ms=5',
  ]);
  const out = await new Promise<string>((done, fail) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (c: Buffer) => (text += c.toString()));
    child.stderr.on('data', (c: Buffer) => (text += c.toString()));
    child.once('exit', (code) => (code === 0 ? done(text) : fail(new Error(`ProducerPerformance exited ${code}:\n${text.slice(-2000)}`))));
  });
  // Final line: "20000 records sent, 12345.6 records/sec (105.23 MB/sec), ..."
  const line = out.trim().split('\n').reverse().find((l) => /records sent/.test(l));
  const m = line && /records sent, ([\d.]+) records\/sec \(([\d.]+) MB\/sec\)/.exec(line);
  if (!m) throw new Error(`could not read ProducerPerformance output:\n${out.slice(-2000)}`);
  return { recordsPerSec: Number(m[1]), mbPerSec: Number(m[2]), line };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const options = servicesOptionsFromEnv();
  const services = new LocalServices(options);
  const brokers = `${options.host}:${options.kafkaPort}`;
  const logger = createLogger('bench', { level: 'warn' });
  const kafka = createKafka({ brokers: [brokers], clientId: 'bench-produce' }, logger);
  const templates = Array.from({ length: 64 }, (_, i) => turn(`g-${i}`, 1 + (i % 8)));
  const created: string[] = [];
  const topic = async (name: string) => {
    const t = `bench-produce-${name}-${randomUUID().slice(0, 8)}`;
    await ensureTopics(kafka, [{ topic: t, numPartitions: 6, replicationFactor: 1 }]);
    created.push(t);
    return t;
  };
  const rounds: Array<{ ours: number; oursMb: number; tool: number; toolMb: number; gzip: number }> = [];
  let recordSize = 0;
  try {
    for (let r = 0; r < ROUNDS; r++) {
      const mine = await ours(kafka, await topic('ours'), templates, 'none');
      recordSize = Math.round(mine.bytes);
      const tool = await kafkaTool(services, brokers, await topic('tool'), recordSize);
      const gz = await ours(kafka, await topic('gzip'), templates, 'gzip');
      rounds.push({ ours: mine.eventsPerSec, oursMb: mine.mbPerSec, tool: tool.recordsPerSec, toolMb: tool.mbPerSec, gzip: gz.eventsPerSec });
      console.error(`round ${r + 1}: trajstore ${mine.eventsPerSec.toFixed(0)} events/s (${mine.mbPerSec.toFixed(1)} MiB/s), kafka tool ${tool.recordsPerSec.toFixed(0)} records/s (${tool.mbPerSec.toFixed(1)} MB/s), trajstore gzip ${gz.eventsPerSec.toFixed(0)} events/s`);
    }
  } finally {
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: created }).catch(() => undefined);
    await admin.disconnect();
  }
  const result = {
    events: EVENTS, rounds: ROUNDS, record_bytes: recordSize,
    trajstore_events_per_s: Math.round(median(rounds.map((r) => r.ours))),
    trajstore_mib_per_s: Number(median(rounds.map((r) => r.oursMb)).toFixed(1)),
    kafka_tool_records_per_s: Math.round(median(rounds.map((r) => r.tool))),
    kafka_tool_mb_per_s: Number(median(rounds.map((r) => r.toolMb)).toFixed(1)),
    ratio: Number((median(rounds.map((r) => r.ours / r.tool))).toFixed(2)),
    trajstore_gzip_events_per_s: Math.round(median(rounds.map((r) => r.gzip))),
    goal: 'trajstore >= 0.5 x kafka tool',
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
}

await main();
