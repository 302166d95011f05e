import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import type { Kafka } from 'kafkajs';
import { createClickHouse } from '../../clickhouse/client.js';
import { createKafka, ensureTopics } from '../../kafka/client.js';
import { topicSpecs } from '../../kafka/topics.js';
import { loadSinkSettings, sinkGroupId, type SinkSettings } from '../../consumers/clickhouse-sink/settings.js';
import { ClickHouseSink } from '../../consumers/clickhouse-sink/sink.js';
import { createLogger, type Logger } from '../../util/logger.js';

interface SinkCommandOptions {
  config?: string;
  database?: string;
  fromBeginning?: boolean;
  untilCaughtUp?: boolean;
  progress: boolean;
}

/** Offsets of one partition: where its log starts and where it ended when we looked. */
interface PartitionRange {
  key: string;
  low: bigint;
  high: bigint;
}

export function registerSinkCommand(program: Command): void {
  program
    .command('sink')
    .description('consume trajectories, policy versions and trainer metrics into ClickHouse (runs until stopped)')
    .option('-c, --config <file>', 'YAML config (kafka, clickhouse, sink sections); default: the local services')
    .option('--database <name>', 'write into this database (created and migrated if new); its own consumer group')
    .option('--from-beginning', "replay the topics from their first offset (rebuild): resets the group's offsets; events already in the database are skipped")
    .option('--until-caught-up', 'exit once every partition is stored up to where it ended at start')
    .option('--no-progress', 'no progress bar (log lines instead)')
    .action(async (opts: SinkCommandOptions) => {
      const settings = loadSinkSettings(opts.config, opts.database);
      // Info lines would tear the progress bar apart; with the bar, only warnings (unless asked).
      const showBar = opts.progress && Boolean(process.stderr.isTTY);
      const logger = createLogger('sink', showBar && !process.env.TRAJSTORE_LOG_LEVEL ? { level: 'warn' } : {});
      const kafka = createKafka({ brokers: settings.kafka.brokers, clientId: `${settings.kafka.client_id}-sink` }, logger);
      const groupId = sinkGroupId(settings);
      const { topics } = settings.kafka;
      await ensureTopics(kafka, topicSpecs(settings));
      if (opts.fromBeginning) await resetToEarliest(kafka, groupId, [topics.trajectories, topics.policy_versions, topics.trainer_metrics], logger);
      const clickhouse = createClickHouse({ ...settings.clickhouse, database: undefined, requestTimeoutMs: 30_000 });
      const sink = createSink(settings, kafka, clickhouse, groupId, logger);
      const ranges = await partitionRanges(kafka, [topics.trajectories, topics.policy_versions, topics.trainer_metrics]);
      const done = watchProgress(sink, ranges, { ...opts, progress: showBar }, logger);
      const stop = async () => {
        await sink.stop();
        await clickhouse.close();
      };
      // A signal is the normal way to end a sink: a clean stop (offsets committed) exits 0.
      process.once('SIGINT', () => void stop().then(() => process.exit(0)));
      process.once('SIGTERM', () => void stop().then(() => process.exit(0)));
      await sink.start();
      await done;
      await stop();
    });
}

function createSink(settings: SinkSettings, kafka: Kafka, clickhouse: ReturnType<typeof createClickHouse>, groupId: string, logger: Logger): ClickHouseSink {
  const { topics } = settings.kafka;
  return new ClickHouseSink({
    kafka,
    clickhouse,
    database: settings.clickhouse.database,
    topics: { trajectories: topics.trajectories, policyVersions: topics.policy_versions, trainerMetrics: topics.trainer_metrics, deadLetter: topics.dead_letter },
    groupId,
    batchMaxRows: settings.sink.batch_max_rows,
    batchMaxMs: settings.sink.batch_max_ms,
    lingerMs: settings.sink.linger_ms,
    retryMaxMs: settings.sink.retry_max_ms,
    sessionTimeoutMs: settings.sink.session_timeout_ms,
    logger,
  });
}

/** A rebuild must read everything, even if this group committed offsets before. */
async function resetToEarliest(kafka: Kafka, groupId: string, topics: string[], logger: Logger): Promise<void> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    for (const topic of topics) await admin.resetOffsets({ groupId, topic, earliest: true });
    logger.info({ groupId, topics }, 'consumer group reset to the earliest offsets');
  } finally {
    await admin.disconnect();
  }
}

async function partitionRanges(kafka: Kafka, topics: string[]): Promise<PartitionRange[]> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const ranges: PartitionRange[] = [];
    for (const topic of topics) {
      for (const p of await admin.fetchTopicOffsets(topic)) {
        ranges.push({ key: `${topic}/${p.partition}`, low: BigInt(p.low), high: BigInt(p.high) });
      }
    }
    return ranges;
  } finally {
    await admin.disconnect();
  }
}

/**
 * A progress bar over the messages that were in the topics at start (stored / total), or log
 * lines when stderr is not a terminal. Resolves when everything present at start is stored, if
 * --until-caught-up; otherwise never (the sink runs until a signal).
 */
function watchProgress(sink: ClickHouseSink, ranges: PartitionRange[], opts: SinkCommandOptions, logger: Logger): Promise<void> {
  const total = Number(ranges.reduce((n, r) => n + (r.high - r.low), 0n));
  const stored = () => {
    const positions = new Map(sink.positions().map((p) => [`${p.topic}/${p.partition}`, p.nextOffset]));
    let count = 0n;
    let caughtUp = true;
    for (const r of ranges) {
      const at = positions.get(r.key) ?? r.low;
      const clamped = at < r.low ? r.low : at > r.high ? r.high : at;
      count += clamped - r.low;
      if (clamped < r.high) caughtUp = false;
    }
    return { count: Number(count), caughtUp };
  };
  const bar = opts.progress
    ? new SingleBar({ format: 'sink |{bar}| {value}/{total} messages stored · {rate} msg/s · eta {eta_formatted}', hideCursor: true, stream: process.stderr })
    : undefined;
  const started = Date.now();
  let lastLog = 0;
  let loggedCaughtUp = false;
  return new Promise<void>((resolve) => {
    const update = () => {
      const { count, caughtUp } = stored();
      const rate = Math.round(sink.stats.messages / Math.max(0.001, (Date.now() - started) / 1000));
      if (bar) bar.update(count, { rate });
      else if (Date.now() - lastLog > 5000 || (caughtUp && !loggedCaughtUp)) {
        // Every 5 s, and once when caught up (not on every tick while it stays so).
        loggedCaughtUp = caughtUp;
        lastLog = Date.now();
        logger.info({ stored: count, total, rate, dead_letters: sink.stats.deadLetters }, 'sink progress');
      }
      if (caughtUp && opts.untilCaughtUp) {
        clearInterval(timer);
        bar?.stop();
        resolve();
      }
    };
    bar?.start(total, 0, { rate: 0 });
    const timer = setInterval(update, 250);
    sink.onFlush(update);
  });
}
