/**
 * `npm run demo`: streaming GRPO training on one machine, every part a real process.
 *
 *   setup (services, engine venv, model) → CPU policy server → sink, trainer, producer
 *   → live status from ClickHouse every few seconds → stop after `minutes` or Ctrl-C
 *   → producers stop first, then the trainer (final checkpoint), then the sink once ClickHouse
 *     has every event → how to query the run → `RESULT {json}` as the last line.
 */
import { mkdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { QUERIES } from '../clickhouse/catalog.js';
import { createClickHouse } from '../clickhouse/client.js';
import { loadConfig } from '../config/index.js';
import { createKafka, ensureTopics } from '../kafka/client.js';
import { topicSpecs } from '../kafka/topics.js';
import { startCpuPolicyServer, type CpuPolicyServer } from '../inference/cpu-policy-server.js';
import { ANSWER_SYSTEM, READ_DIGIT_INSTRUCTION } from '../producers/tasks/browser-pages.js';
import { projectRoot } from '../services/paths.js';
import { createLogger } from '../util/logger.js';
import { noteworthy, spawnTrajstore, type Child } from './children.js';
import { DemoError } from './errors.js';
import { databaseFor, makeRunId, writeRunConfig } from './run-config.js';
import { demoModel, demoVisionModel, engineVenv, servicesUp } from './setup.js';
import { DemoReader, firstAndLast, recentSuccess, round, type Snapshot, type VersionStat } from './status.js';

export interface DemoOptions {
  config: string;
  minutes: number;
  seed: number;
  /** Seconds between status lines. */
  statusEveryS: number;
  /** The demo model's output scale (see make_demo_model.py). */
  outputScale: number;
}

/**
 * A vision config (inference.image_processing set, e.g. configs/demo-vision.yaml) runs the vision
 * demo: its model is the tiny VL one, and its runs are named demo-vision-s<seed>-<time>.
 */
export function isVisionDemo(config: { inference: { image_processing?: unknown } }): boolean {
  return config.inference.image_processing !== undefined;
}

export interface DemoResult {
  run_id: string;
  seed: number;
  database: string;
  minutes: number;
  wall_s: number;
  first?: VersionStat;
  last?: VersionStat;
  recent?: ReturnType<typeof recentSuccess>;
  versions: VersionStat[];
}

const say = (line: string) => process.stdout.write(`${line}\n`);

export async function runDemo(opts: DemoOptions): Promise<DemoResult> {
  const root = projectRoot();
  const base = loadConfig(opts.config);
  const vision = isVisionDemo(base);
  const runId = makeRunId(opts.seed, new Date(), vision ? 'demo-vision' : 'demo');
  const runDir = join(root, '.trajstore', 'demo', runId);
  mkdirSync(join(runDir, 'logs'), { recursive: true });
  say(`demo ${runId}: ${opts.minutes} min, seed ${opts.seed}, config ${relative(root, resolve(opts.config))}, files in ${relative(root, runDir)}`);

  await servicesUp(say);
  const python = await engineVenv(say);
  const models = join(root, '.trajstore', 'models');
  const modelDir = vision
    ? demoVisionModel(python, join(models, `demo-tiny-vl-x${opts.outputScale}`), { outputScale: opts.outputScale, system: ANSWER_SYSTEM, instruction: READ_DIGIT_INSTRUCTION }, say)
    : demoModel(python, join(models, `demo-tiny-x${opts.outputScale}`), opts.outputScale, say);

  say('policy server: starting the CPU policy server (the stand-in for vLLM)');
  const server = await startCpuPolicyServer({
    modelDir, servedModelName: base.model.name, threads: 1, seed: opts.seed,
    maxLoras: base.inference.max_loaded_adapters + 1, maxLoraRank: Math.max(16, base.lora.r),
  });
  say(`  ${server.baseUrl} serving ${server.model} (pid ${server.pid})`);

  const { file, config } = writeRunConfig({ baseConfig: opts.config, runId, seed: opts.seed, runDir, apiBase: `${server.baseUrl}/v1`, modelDir });
  const database = config.clickhouse.database;
  const reader = new DemoReader(createClickHouse({ ...config.clickhouse, database: undefined, requestTimeoutMs: 30_000 }), database, runId);
  // Created here, once: the three children would otherwise race to create them, and kafkajs logs
  // the loser's TOPIC_ALREADY_EXISTS at error level.
  const kafkaLogger = createLogger('demo', { level: 'warn' });
  await ensureTopics(createKafka({ brokers: config.kafka.brokers, clientId: `${config.kafka.client_id}-demo` }, kafkaLogger), topicSpecs(config));
  const started = Date.now();
  const children = startChildren(file, database, join(runDir, 'logs'));
  say(`running: sink, trainer, producer (logs: ${relative(root, join(runDir, 'logs'))}/*.log); Ctrl-C stops early`);

  const reason = await watch(children, reader, opts, started);
  say(`stopping (${reason}): producer, then trainer (final checkpoint), then sink once ClickHouse holds every event`);
  await shutdown(children, server, reader);

  const snapshot = await reader.snapshot();
  const minEpisodes = config.rollout.num_rollouts * 2;
  const { first, last } = firstAndLast(snapshot.versions, minEpisodes);
  const result: DemoResult = {
    run_id: runId, seed: opts.seed, database, minutes: opts.minutes, wall_s: Math.round((Date.now() - started) / 1000),
    first, last, recent: recentSuccess(snapshot.versions, 64), versions: snapshot.versions,
  };
  printHowToQuery(file, database, runId, config.checkpoint.dir);
  if (snapshot.versions.length === 0) {
    throw new DemoError('TRAJ_E_DEMO_NO_DATA', `no episodes of ${runId} reached ClickHouse database ${database}`, {
      hint: `read ${relative(root, join(runDir, 'logs'))}/*.log (producer.log, sink.log) for the first error`,
    });
  }
  return result;
}

function startChildren(configFile: string, database: string, logDir: string): Child[] {
  const onLine = (name: string, line: string) => {
    const note = noteworthy(line);
    if (note) say(`  [${name}] ${note}`);
  };
  // JSON logs in the files (greppable, what a log shipper would get); the terminal gets the status view.
  const env = { ...process.env, TRAJSTORE_LOG_FORMAT: 'json' };
  return [
    spawnTrajstore('sink', ['sink', '-c', configFile, '--database', database, '--no-progress'], logDir, onLine, env),
    spawnTrajstore('trainer', ['train', '-c', configFile], logDir, onLine, env),
    spawnTrajstore('producer', ['rollout', '-c', configFile, '--grace-s', '10', '--progress-s', '10'], logDir, onLine, env),
  ];
}

/** Prints a status line every few seconds until the time is up, Ctrl-C, or a child dies. */
async function watch(children: Child[], reader: DemoReader, opts: DemoOptions, started: number): Promise<string> {
  const deadline = started + opts.minutes * 60_000;
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
  };
  // `on`, not `once`: a Ctrl-C can arrive twice (the terminal's, and the one tsx relays to its
  // child); the second one must not find the default handler and kill the demo before it cleans up.
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  let previous: Snapshot | undefined;
  try {
    while (true) {
      const waitUntil = Math.min(deadline, Date.now() + opts.statusEveryS * 1000);
      while (Date.now() < waitUntil && !interrupted && !children.some((c) => c.crashed())) await sleep(200);
      const crashed = children.find((c) => c.crashed());
      if (crashed) {
        throw new DemoError('TRAJ_E_DEMO_CHILD', `${crashed.name} exited early (code ${crashed.process.exitCode})`, {
          hint: `its log: ${crashed.logFile}; the other processes were stopped`,
        });
      }
      if (interrupted) return 'Ctrl-C';
      const snap = await reader.snapshot().catch(() => undefined);
      if (snap) {
        say(statusLine(snap, previous, started));
        previous = snap;
      }
      if (Date.now() >= deadline) return `${opts.minutes} min are up`;
    }
  } catch (err) {
    await Promise.all(children.map((c) => c.stop(5_000)));
    throw err;
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigint);
  }
}

export function statusLine(snap: Snapshot, previous: Snapshot | undefined, started: number): string {
  const t = Math.round((snap.atMs - started) / 1000);
  const clock = `${String(Math.floor(t / 60)).padStart(2, '0')}:${String(t % 60).padStart(2, '0')}`;
  const rate = previous ? Math.max(0, (snap.events - previous.events) / ((snap.atMs - previous.atMs) / 1000)) : 0;
  // The newest version has few episodes at first; the rate over the last ~32 episodes is steadier.
  const recent = recentSuccess(snap.versions, 32);
  const success = recent ? `success ${(recent.rate * 100).toFixed(0)}% (v${recent.fromVersion === recent.toVersion ? recent.toVersion : `${recent.fromVersion}-${recent.toVersion}`}, ${recent.episodes} ep)` : 'success -';
  return `[${clock}] versions ${snap.versionsPublished} (newest v${snap.newestVersion ?? 0}) · steps ${snap.trainerSteps} · groups trained ${snap.groupsTrained} · ${success} · ${rate.toFixed(0)} events/s · ${snap.events} events`;
}

/** Producers first (no new groups), trainer next (it checkpoints), sink last (it drains). */
async function shutdown(children: Child[], server: CpuPolicyServer, reader: DemoReader): Promise<void> {
  const byName = (n: string) => children.find((c) => c.name === n)!;
  const ignore = () => undefined;
  // A second Ctrl-C (or a SIGTERM) must not kill the demo halfway through its cleanup.
  process.on('SIGINT', ignore);
  process.on('SIGTERM', ignore);
  try {
    say(`  producer exited ${await byName('producer').stop(30_000)}`);
    say(`  trainer exited ${await byName('trainer').stop(90_000)}`);
    await waitForSink(reader, 60_000);
    say(`  sink exited ${await byName('sink').stop(30_000)}`);
    await server.stop();
    say('  policy server stopped');
  } finally {
    process.removeListener('SIGINT', ignore);
    process.removeListener('SIGTERM', ignore);
  }
}

/** Waits until the event count in ClickHouse has not moved for three polls (the sink has drained). */
async function waitForSink(reader: DemoReader, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = -1;
  let still = 0;
  while (Date.now() < until && still < 3) {
    const n = (await reader.snapshot().catch(() => undefined))?.events ?? -1;
    still = n === last ? still + 1 : 0;
    last = n;
    await sleep(1000);
  }
}

function printHowToQuery(configFile: string, database: string, runId: string, checkpoints: string): void {
  const root = projectRoot();
  const cfg = relative(root, configFile);
  say('');
  say('query this run:');
  say(`  npx trajstore report --database ${database}`);
  say(`  npx trajstore sql --database ${database} "${QUERIES.demoHintByVersion.sql(database, { runId })}"`);
  say(`  npx trajstore sql --database ${database} "${QUERIES.demoHintSteps.sql(database, {})}"`);
  say(`continue training from the last checkpoint (${relative(root, checkpoints)}):`);
  say(`  npx trajstore train -c ${cfg} --resume`);
  say(`re-train from the logged events with other settings: npx trajstore replay --help`);
  say('');
}

export function resultLine(result: DemoResult): string {
  const summary = {
    run_id: result.run_id, seed: result.seed, minutes: result.minutes, wall_s: result.wall_s, database: result.database,
    first_version: result.first && { version: result.first.version, success_rate: result.first.success_rate, episodes: result.first.episodes },
    last_version: result.last && { version: result.last.version, success_rate: result.last.success_rate, episodes: result.last.episodes },
    recent: result.recent,
    success_by_version: Object.fromEntries(result.versions.map((v) => [String(v.version), { success_rate: v.success_rate, episodes: v.episodes }])),
  };
  return `RESULT ${JSON.stringify(summary)}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export { round };
