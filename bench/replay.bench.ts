/**
 * Replay read benchmark: a historical run of BENCH_TURNS turn events (default one million) is
 * read, decoded and assembled into groups by the trainer's replay path (`runReplay --dry-run`:
 * the LogReader, Avro decoding with its bounds guard, the GroupAssembler, filters, advantages
 * and batching; no engine), side by side in the same run with Kafka's own
 * `kafka-consumer-perf-test` (org.apache.kafka.tools.ConsumerPerformance) on the same topic.
 * Goal: at least 50% of Kafka's own consume rate.
 *
 * The replay runs with its default reader threads (one per CPU) and, as a baseline in the same
 * run, with one reader thread; CPU time per event counts every thread of this process.
 *
 *   npx tsx bench/replay.bench.ts      (env: BENCH_TURNS=1000000, BENCH_PARTITIONS=6, BENCH_READERS=<CPUs>)
 *   → RESULT {"events":..., "trajstore_events_per_s":..., "kafka_tool_records_per_s":..., "ratio":...}
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig } from '../src/config/index.js';
import { runReplay } from '../src/consumers/trainer/replay.js';
import { createKafka, ensureTopics } from '../src/kafka/client.js';
import { encodeTrajectoryEvent, newTrajectoryEvent, type TrajectoryEventPayload } from '../src/schemas/index.js';
import { LocalServices, servicesOptionsFromEnv } from '../src/services/manager.js';
import { createLogger } from '../src/util/logger.js';

const TURNS = Number(process.env.BENCH_TURNS ?? 1_000_000);
const PARTITIONS = Number(process.env.BENCH_PARTITIONS ?? 6);
const READERS = Number(process.env.BENCH_READERS ?? availableParallelism());
const G = 8; // episodes per group, one turn each: a group is 1 + 8 * 4 + 1 = 34 events, 8 of them turns
const logger = createLogger('bench-replay', { level: 'warn', pretty: false });
const services = new LocalServices(servicesOptionsFromEnv());
const opts = servicesOptionsFromEnv();
const brokers = [`${opts.host}:${opts.kafkaPort}`];

/** One group's events, encoded: small text-task turns (64 prompt, 16 completion tokens), as the CPU demo writes. */
function groupMessages(runId: string, n: number): Array<{ key: string; value: Buffer }> {
  const gid = randomUUID();
  const base = { run_id: runId, group_id: gid, producer_id: 'bench/1', policy_version: 1, purpose: 'train' } as const;
  const out: Array<{ key: string; value: Buffer }> = [];
  const add = (payload: TrajectoryEventPayload, episode_id: string | null, seq: number) =>
    out.push({ key: gid, value: encodeTrajectoryEvent(newTrajectoryEvent({ ...base, episode_id, seq, payload })) });
  add({ GroupStarted: { task: { task_id: `t${n}`, task_family: 'bench', environment: 'text', params_json: '{}', split: 'train' }, group_size: G,
    sampling: { temperature: 1, top_p: 1, top_k: null, max_tokens: 16, extra_json: null } } }, null, 0);
  const prompt = Array.from({ length: 64 }, (_, i) => 3 + ((n * 7 + i * 13) % 500));
  const ids: string[] = [];
  for (let e = 0; e < G; e++) {
    const eid = randomUUID();
    ids.push(eid);
    const completion = Array.from({ length: 16 }, (_, i) => 3 + ((n + e * 31 + i * 17) % 500));
    add({ EpisodeStarted: { episode_index: e, env_seed: e, env_instance_id: null } }, eid, 0);
    add({ Turn: { turn_index: 0, model: 'bench-v1', prompt_token_ids: prompt, completion_token_ids: completion, completion_logprobs: completion.map(() => -1.25),
      token_policy_versions: null, prompt_format: 'text', prompt: 'What is 12 + 30?', completion_text: '42', action: null, action_parse_error: null,
      observation: null, latency_ms: 20, env_latency_ms: null, finish_reason: 'stop', request_id: null, prompt_images: [], image_processing: null } }, eid, 1);
    add({ Reward: { value: e % 2, components: {}, source: 'env', turn_index: null } }, eid, 2);
    add({ EpisodeFinished: { status: 'success', num_turns: 1, prompt_tokens: 64, completion_tokens: 16, duration_ms: 20, error_code: null, error_message: null, final_observation: null } }, eid, 3);
  }
  add({ GroupCompleted: { status: 'complete', episode_ids: ids, duration_ms: 100 } }, null, 1);
  return out;
}

async function produce(kafka: ReturnType<typeof createKafka>, topic: string, runId: string): Promise<number> {
  const producer = kafka.producer({ allowAutoTopicCreation: false });
  await producer.connect();
  let events = 0;
  let pending: Array<{ key: string; value: Buffer }> = [];
  const groups = Math.ceil(TURNS / G);
  for (let n = 0; n < groups; n++) {
    pending.push(...groupMessages(runId, n));
    if (pending.length >= 2_000 || n === groups - 1) {
      await producer.send({ topic, acks: 1, messages: pending });
      events += pending.length;
      pending = [];
      process.stderr.write(`\rproducing: ${events} events (${Math.round((100 * (n + 1)) / groups)}%)`);
    }
  }
  process.stderr.write('\n');
  await producer.disconnect();
  return events;
}

/** Kafka's own consumer perf tool over the whole topic; records/s from its CSV line. */
async function kafkaBaseline(topic: string, records: number): Promise<{ recordsPerSec: number; mbPerSec: number }> {
  const { command, args } = services.kafka.toolCommand('org.apache.kafka.tools.ConsumerPerformance', [
    '--bootstrap-server', brokers[0]!, '--topic', topic, '--messages', String(records), '--timeout', '60000',
  ]);
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { out += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  // start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
  const line = out.trim().split('\n').reverse().find((l) => /^\d{4}-\d\d-\d\d/.test(l.trim())) ?? '';
  const cols = line.split(',').map((c) => c.trim());
  if (code !== 0 || cols.length < 6) throw new Error(`ConsumerPerformance failed (exit ${code}):\n${out.slice(-2000)}`);
  return { mbPerSec: Number(cols[3]), recordsPerSec: Number(cols[5]) };
}

async function main(): Promise<void> {
  const kafka = createKafka({ brokers, clientId: 'bench-replay' }, logger);
  const topic = `bench_replay_${randomUUID().slice(0, 8)}`;
  const runId = `bench-${randomUUID().slice(0, 8)}`;
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-bench-replay-'));
  await ensureTopics(kafka, [{ topic, numPartitions: PARTITIONS }]);
  try {
    const events = await produce(kafka, topic, runId);
    const config = parseConfig([
      'model: { name: bench }',
      'training: { batch_size: 8, group_timeout_s: 600 }',
      `kafka: { brokers: [${brokers[0]}], partitions: ${PARTITIONS}, topics: { trajectories: ${topic}, policy_versions: ${topic}.v, trainer_metrics: ${topic}.m, dead_letter: ${topic}.d } }`,
      `checkpoint: { dir: ${dir}/ck }`,
      `storage: { adapters: ${dir}/adapters }`,
    ].join('\n'), 'bench', {});
    config.training.output_dir = join(dir, 'out');

    const replay = async (readers: number) => {
      const t0 = process.hrtime.bigint();
      const cpu0 = process.cpuUsage();
      const r = await runReplay({ config, sourceRunId: runId, runId: `bench-replay-${readers}`, dryRun: true, logger, progress: process.stderr, readers });
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      if (r.records !== events || r.plan?.groups !== Math.ceil(TURNS / G)) throw new Error(`replay read ${r.records} of ${events} events, assembled ${r.plan?.groups} groups`);
      return { perSec: r.records / seconds, seconds, cpuUsPerEvent: (cpu.user + cpu.system) / r.records };
    };
    const kafkaTool = await kafkaBaseline(topic, events);
    const ours = await replay(READERS);
    const oneReader = READERS === 1 ? ours : await replay(1);
    const result = {
      events, turn_events: Math.ceil(TURNS / G) * G, partitions: PARTITIONS, groups_assembled: Math.ceil(TURNS / G), readers: READERS,
      trajstore_events_per_s: Math.round(ours.perSec), trajstore_seconds: Math.round(ours.seconds * 10) / 10,
      trajstore_cpu_us_per_event: Math.round(ours.cpuUsPerEvent * 10) / 10,
      one_reader_events_per_s: Math.round(oneReader.perSec), one_reader_cpu_us_per_event: Math.round(oneReader.cpuUsPerEvent * 10) / 10,
      kafka_tool_records_per_s: Math.round(kafkaTool.recordsPerSec), kafka_tool_mb_per_s: kafkaTool.mbPerSec,
      ratio: Math.round((ours.perSec / kafkaTool.recordsPerSec) * 1000) / 1000, goal: 0.5,
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
  } finally {
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteTopics({ topics: [topic, `${topic}.v`, `${topic}.m`, `${topic}.d`] }).catch(() => undefined);
    await admin.disconnect();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
