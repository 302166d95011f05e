/**
 * Follows the trainer through the log: `policy.versions` (the newest published adapter, which
 * the policy client asks for) and the trainer-metrics topic (optimizer steps taken, which pacing
 * reads). Producers never talk to the trainer directly; a restarted producer reads both topics
 * from the beginning and knows where the run stands before it starts a group.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Consumer, Kafka } from 'kafkajs';
import { decodePolicyVersion, decodeTrainerStepMetrics, type PolicyVersion } from '../schemas/index.js';
import type { Logger } from '../util/logger.js';
import type { PolicySource, PolicyTarget } from './policy-client.js';

export interface TrainerProgressOptions {
  kafka: Kafka;
  runId: string;
  baseModel: string;
  policyVersionsTopic: string;
  trainerMetricsTopic: string;
  logger?: Logger;
}

export interface TrainerProgressEvents {
  version: [PolicyVersion];
  step: [number];
}

/** The newest version and step of one run, kept current by a Kafka consumer. */
export class TrainerProgress extends EventEmitter<TrainerProgressEvents> implements PolicySource {
  private latest: PolicyVersion | undefined;
  private step = 0;
  private consumer: Consumer | undefined;
  private readonly groupId = `trajstore-progress-${randomBytes(6).toString('hex')}`;

  constructor(private readonly opts: TrainerProgressOptions) {
    super();
  }

  /** The policy to ask for now: the newest published adapter, or the base model (version 0). */
  current(): PolicyTarget {
    return this.latest ? { model: this.latest.served_model_name, version: this.latest.version } : { model: this.opts.baseModel, version: 0 };
  }

  latestVersion(): number {
    return this.latest?.version ?? 0;
  }

  latestStep(): number {
    return this.step;
  }

  /** Records a version (also the consumer's path). Older or equal versions are ignored: the compacted topic may replay them. */
  observeVersion(pv: PolicyVersion): void {
    if (pv.run_id !== this.opts.runId || pv.version <= this.latestVersion()) return;
    this.latest = pv;
    this.opts.logger?.info({ version: pv.version, model: pv.served_model_name }, 'new policy version');
    this.emit('version', pv);
  }

  observeStep(step: number): void {
    if (step <= this.step) return;
    this.step = step;
    this.emit('step', step);
  }

  /**
   * Starts following both topics from their beginning and resolves once it has read everything
   * that was there when it started, so the first group already uses the newest version.
   */
  async start(): Promise<void> {
    const { kafka, policyVersionsTopic, trainerMetricsTopic } = this.opts;
    const topics = [policyVersionsTopic, trainerMetricsTopic];
    const targets = await endOffsets(kafka, topics);
    const consumer = kafka.consumer({ groupId: this.groupId, maxWaitTimeInMs: 200, allowAutoTopicCreation: false });
    this.consumer = consumer;
    await consumer.connect();
    await consumer.subscribe({ topics, fromBeginning: true });
    let caughtUp!: () => void;
    const ready = new Promise<void>((done) => (caughtUp = done));
    const check = () => {
      if ([...targets.values()].every((left) => left <= 0)) caughtUp();
    };
    check();
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic, partition, message }) => {
        try {
          if (topic === policyVersionsTopic) this.observeVersion(decodePolicyVersion(message.value));
          else {
            const m = decodeTrainerStepMetrics(message.value);
            if (m.run_id === this.opts.runId) this.observeStep(m.step);
          }
        } catch (err) {
          // A record we cannot read is not ours to dead-letter; the trainer owns these topics.
          this.opts.logger?.warn({ topic, partition, offset: message.offset, err: (err as Error).message }, 'skipping an unreadable trainer record');
        }
        const key = `${topic}:${partition}`;
        const end = targets.get(key);
        if (end !== undefined && Number(message.offset) + 1 >= end) targets.set(key, 0);
        check();
      },
    });
    await ready;
  }

  async stop(): Promise<void> {
    const consumer = this.consumer;
    this.consumer = undefined;
    if (!consumer) return;
    await consumer.disconnect();
    // Our group id is throwaway (nothing is committed); leave no group behind on the broker.
    const admin = this.opts.kafka.admin();
    await admin.connect();
    await admin.deleteGroups([this.groupId]).catch(() => undefined);
    await admin.disconnect();
  }
}

/** `topic:partition` -> high watermark, for partitions that hold anything (others are caught up already). */
async function endOffsets(kafka: Kafka, topics: string[]): Promise<Map<string, number>> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const out = new Map<string, number>();
    for (const topic of topics) {
      for (const p of await admin.fetchTopicOffsets(topic)) {
        if (Number(p.high) > Number(p.low)) out.set(`${topic}:${p.partition}`, Number(p.high));
      }
    }
    return out;
  } finally {
    await admin.disconnect();
  }
}
