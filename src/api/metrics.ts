/**
 * /metrics: Prometheus text. The API's own figures come from prom-client instruments. The
 * producers, the sink and the trainer keep no Prometheus registry of their own (they are batch
 * processes whose durable output is the log and ClickHouse), so their figures are read at scrape
 * time from what they leave behind: ClickHouse's tables (events, episodes, trainer steps,
 * published versions, the sink's watermarks) and Kafka's watermarks (sink lag, dead letters).
 * Per-run series are limited to the most recently active runs, to bound cardinality.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from '../util/logger.js';
import type { Dependencies } from './dependencies.js';
import { QUERIES } from '../clickhouse/catalog.js';
import { queryReadOnly } from '../clickhouse/readonly.js';
import { quoteIdentifier } from '../clickhouse/sql.js';

export class ApiMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'method' | 'route' | 'status_code'>;
  readonly duration: Histogram<'method' | 'route'>;
  private readonly g: Record<string, Gauge<string>>;

  constructor(private readonly logger: Logger) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'trajstore_api_' });
    this.requests = new Counter({ name: 'trajstore_api_requests_total', help: 'HTTP requests answered', labelNames: ['method', 'route', 'status_code'], registers });
    this.duration = new Histogram({
      name: 'trajstore_api_request_duration_seconds', help: 'HTTP request duration', labelNames: ['method', 'route'], registers,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    });
    const gauge = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name, help, labelNames, registers });
    this.g = {
      jobs: gauge('trajstore_api_replay_jobs', 'replay jobs started by this API process, by state', ['state']),
      sourceUp: gauge('trajstore_metrics_source_up', '1 when the source of the figures below answered this scrape', ['source']),
      runEvents: gauge('trajstore_producer_events', 'trajectory events stored for the run (producer output as the sink stored it)', ['run_id']),
      runEpisodes: gauge('trajstore_producer_episodes_finished', 'finished episodes of the run', ['run_id']),
      runTurns: gauge('trajstore_producer_turns', 'policy turns of the run', ['run_id']),
      runLastEvent: gauge('trajstore_producer_last_event_timestamp_seconds', 'time of the run\'s newest event', ['run_id']),
      runVersion: gauge('trajstore_producer_max_policy_version', 'newest behavior policy version in the run\'s events', ['run_id']),
      trainerStep: gauge('trajstore_trainer_step', 'newest optimizer step of the run', ['run_id']),
      trainerLoss: gauge('trajstore_trainer_loss', 'loss at the newest step', ['run_id']),
      trainerTps: gauge('trajstore_trainer_tokens_per_second', 'training throughput at the newest step', ['run_id']),
      trainerPublished: gauge('trajstore_trainer_published_version', 'newest published adapter version', ['run_id']),
      sinkLag: gauge('trajstore_sink_lag_messages', 'messages in Kafka not yet stored in ClickHouse (high watermark - sink watermark)', ['topic', 'partition']),
      deadLetters: gauge('trajstore_dead_letter_messages', 'messages in the dead-letter topic'),
    };
  }

  /** Refreshes the figures read from ClickHouse and Kafka, then renders everything. */
  async render(deps: Dependencies, jobs: Record<string, number>): Promise<string> {
    for (const [state, n] of Object.entries(jobs)) this.g.jobs!.set({ state }, n);
    const failed = (source: string) => (err: unknown) => {
      this.logger.warn({ source, err: (err as Error).message }, 'metrics: a source did not answer; its figures keep their last values');
      return 0;
    };
    const [ch, kafka] = await Promise.all([
      this.fromClickHouse(deps).then(() => 1, failed('clickhouse')),
      this.fromKafka(deps).then(() => 1, failed('kafka')),
    ]);
    this.g.sourceUp!.set({ source: 'clickhouse' }, ch);
    this.g.sourceUp!.set({ source: 'kafka' }, kafka);
    return this.registry.metrics();
  }

  private async fromClickHouse(deps: Dependencies): Promise<void> {
    const db = quoteIdentifier(deps.database);
    const q = async <T>(sql: string) => (await queryReadOnly(deps.clickhouse, sql, { maxRows: 10_000, timeoutS: 10, numbersAsJson: true })).rows as T[];
    const runs = await q<{ run_id: string; events: number; episodes: number; turns: number; last_event_ms: number; max_policy_version: number }>(
      QUERIES.metricsRuns.sql(db, {}));
    const steps = await q<{ run_id: string; last_step: number; last_loss: number; last_tps: number }>(QUERIES.metricsSteps.sql(db, {}));
    const versions = await q<{ run_id: string; newest: number }>(QUERIES.metricsVersions.sql(db, {}));
    for (const name of ['runEvents', 'runEpisodes', 'runTurns', 'runLastEvent', 'runVersion', 'trainerStep', 'trainerLoss', 'trainerTps', 'trainerPublished']) this.g[name]!.reset();
    for (const r of runs) {
      const l = { run_id: r.run_id };
      this.g.runEvents!.set(l, r.events);
      this.g.runEpisodes!.set(l, r.episodes);
      this.g.runTurns!.set(l, r.turns);
      this.g.runLastEvent!.set(l, r.last_event_ms / 1000);
      this.g.runVersion!.set(l, r.max_policy_version);
    }
    for (const s of steps) {
      this.g.trainerStep!.set({ run_id: s.run_id }, s.last_step);
      this.g.trainerLoss!.set({ run_id: s.run_id }, s.last_loss);
      this.g.trainerTps!.set({ run_id: s.run_id }, s.last_tps);
    }
    for (const v of versions) this.g.trainerPublished!.set({ run_id: v.run_id }, v.newest);
  }

  private async fromKafka(deps: Dependencies): Promise<void> {
    const watermarks = await deps.sinkWatermarks().catch(() => []);
    const stored = new Map(watermarks.map((w) => [`${w.topic}/${w.partition}`, w.next_offset]));
    // Only topics that exist: asking Kafka about a missing one makes kafkajs log errors at every scrape.
    const existing = await deps.listTopics();
    this.g.sinkLag!.reset();
    this.g.deadLetters!.reset();
    for (const topic of [deps.topics.trajectories, deps.topics.policyVersions, deps.topics.trainerMetrics].filter((t) => existing.has(t))) {
      for (const p of await deps.topicOffsets(topic)) {
        const next = stored.get(`${topic}/${p.partition}`) ?? p.low;
        this.g.sinkLag!.set({ topic, partition: String(p.partition) }, Math.max(0, p.high - next));
      }
    }
    if (!existing.has(deps.topics.deadLetter)) return;
    const dead = await deps.topicOffsets(deps.topics.deadLetter);
    this.g.deadLetters!.set(dead.reduce((n, p) => n + p.high - p.low, 0));
  }
}
