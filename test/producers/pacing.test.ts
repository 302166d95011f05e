/**
 * Staleness-aware pacing and evaluation, with the trainer's progress read from the real log:
 * groups start only while the trainer can use them within max_staleness; a new policy version
 * admits more; each new version gets its held-out eval groups, marked eval.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import type { Environment, EnvironmentFactory, Split, TaskSpec } from '../../src/producers/environment.js';
import { TextTasks, textEnvOptions } from '../../src/producers/envs/text.js';
import { StalenessPacer } from '../../src/producers/pacing.js';
import { RolloutWorker } from '../../src/producers/rollout.js';
import { encodePolicyVersion, encodeTrainerStepMetrics, payloadAs } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka } from '../support/services.js';
import { countKind, readTopic, rolloutTopics, testConfig } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

function progress(version: number, step: number) {
  return { latestVersion: () => version, latestStep: () => step };
}

describe('staleness pacing', () => {
  test("admits groups up to AReaL's bound (version + η + 1) × groups per version", () => {
    const state = { version: 0, step: 0 };
    const view = { latestVersion: () => state.version, latestStep: () => state.step };
    const pacer = new StalenessPacer({ enabled: true, maxStaleness: 2, batchSize: 4, publishEverySteps: 1, producers: 1 }, view);
    let started = 0;
    while (pacer.canStart()) {
      pacer.onStarted();
      started++;
    }
    assert.equal(started, 12, '(0 + 2 + 1) × 4');
    state.version = 1;
    assert.equal(pacer.budget(), 4, 'each new version admits one more version worth');
    const off = new StalenessPacer({ enabled: false, maxStaleness: 0, batchSize: 1, publishEverySteps: 1, producers: 1 }, progress(0, 0));
    assert.equal(off.budget(), Number.POSITIVE_INFINITY, 'off means free running');
  });

  test('a finished group the trainer will drop frees its slot, so the producer never waits for a version that cannot come', () => {
    const pacer = new StalenessPacer({ enabled: true, maxStaleness: 1, batchSize: 2, publishEverySteps: 1, producers: 1 }, progress(0, 0));
    while (pacer.canStart()) pacer.onStarted();
    assert.equal(pacer.budget(), 0, '(0 + 1 + 1) × 2 groups started');
    // Every one of them failed on all episodes: equal rewards, dropped, no step, no new version.
    pacer.onUntrainable();
    pacer.onUntrainable();
    assert.equal(pacer.budget(), 2, 'dropped groups do not count against the bound');
  });

  test('a restarted producer counts what the trainer already consumed, and producers share the budget', () => {
    // Trainer at step 40 (version 40): 40 × 2 groups consumed; bound (40 + 1 + 1) × 2 = 84.
    const restarted = new StalenessPacer({ enabled: true, maxStaleness: 1, batchSize: 2, publishEverySteps: 1, producers: 1 }, progress(40, 40));
    assert.equal(restarted.budget(), 4);
    const shared = new StalenessPacer({ enabled: true, maxStaleness: 1, batchSize: 2, publishEverySteps: 1, producers: 2 }, progress(40, 40));
    assert.equal(shared.budget(), 2, 'two producers: half each');
  });

  describe('against the log', () => {
    let server: CpuPolicyServer;
    before(async () => {
      server = await startCpuPolicyServer({ logger });
    });
    after(async () => {
      await server?.stop();
    });

    test('groups wait for the trainer; a published version admits more; each version gets eval groups', async (t) => {
      const kafka = testKafka();
      const topics = await rolloutTopics(t, kafka);
      const config = testConfig({
        topics, apiBase: `${server.baseUrl}/v1`,
        training: { batch_size: 1, publish_every_steps: 1, max_staleness: 0 },
        rollout: { staleness_pacing: true, num_rollouts: 2, max_turns: 1, concurrency: 2, eval_tasks: 2, eval_temperature: 0, env_options: { families: ['copy_digit', 'add'] } },
      });
      const environments = new TrainableGroups(new TextTasks(5, textEnvOptions(config.rollout.env_options)));
      const worker = new RolloutWorker({ config, kafka, logger, maxGroups: 3, environments });
      const done = worker.run();

      const trainGroups = (es: Awaited<ReturnType<typeof readTopic>>) => es.filter((e) => payloadAs(e.event, 'GroupStarted') && e.event.purpose === 'train').length;
      // Budget (0 + 0 + 1) × 1 = 1 train group; it completes (trainable), and pacing holds the next.
      let events = await readTopic(kafka, topics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 3, 60_000);
      await sleep(1_500);
      events = await readTopic(kafka, topics.trajectories, () => false, 1_500);
      assert.equal(trainGroups(events), 1, 'one train group before the trainer moves');
      assert.equal(worker.snapshot().pacingBlocked, true);

      const producer = kafka.producer();
      await producer.connect();
      const publish = async (version: number) => {
        await producer.send({ topic: topics.trainer_metrics, messages: [{ value: metrics(config.run.id, version) }] });
        await producer.send({
          topic: topics.policy_versions,
          messages: [{
            key: `${config.run.id}:${version}`,
            // The base model under the version's name would need an adapter; the base name keeps the server answering.
            value: encodePolicyVersion({ run_id: config.run.id, version, parent_version: version > 1 ? version - 1 : null, base_model: 'tiny', served_model_name: 'tiny',
              adapter_uri: '/nowhere', adapter_checksum: `sha256:${'a'.repeat(64)}`, checkpoint_uri: null, training_step: version, metrics: {}, created_at: Date.now() }),
          }],
        });
      };
      await publish(1);
      events = await readTopic(kafka, topics.trajectories, (es) => trainGroups(es) >= 2, 60_000);
      assert.equal(trainGroups(events), 2, 'version 1 admits exactly one more');
      await publish(2);
      const final = await done;
      await producer.disconnect();
      assert.equal(final.groupsDone, 3);

      events = await readTopic(kafka, topics.trajectories, () => false, 2_000);
      const evalStarts = events.map((e) => ({ e, g: payloadAs(e.event, 'GroupStarted') })).filter((x) => x.g && x.e.event.purpose === 'eval');
      // Versions 0, 1 and (if it arrived before the worker finished) 2: two eval tasks each, one greedy episode per task.
      assert.ok(evalStarts.length >= 4, `eval groups for versions 0 and 1 (got ${evalStarts.length})`);
      for (const { g } of evalStarts) {
        assert.equal(g!.task.split, 'eval');
        assert.equal(g!.group_size, 1);
        assert.equal(g!.sampling.temperature, 0);
      }
      for (const e of events) if (e.event.purpose === 'eval') assert.notEqual(e.event.purpose, 'train');
      const reported = final.evals.map((r) => r.version);
      assert.ok(reported.includes(0) && reported.includes(1), `eval reported per version: ${JSON.stringify(final.evals)}`);
      for (const r of final.evals) assert.equal(r.episodes, 2);
    });
  });
});

/**
 * The text tasks with rewards 0, 1, 0, ... for a task's successive episodes: every group is one
 * the trainer would train, so pacing holds it (a group with equal rewards frees its slot at once).
 */
class TrainableGroups implements EnvironmentFactory {
  readonly name = 'text';
  private readonly episodesOf = new Map<string, number>();

  constructor(private readonly inner: TextTasks) {}

  task(split: Split, index: number): TaskSpec {
    return this.inner.task(split, index);
  }

  async create(): Promise<Environment> {
    const env = await this.inner.create();
    let value = 0;
    return {
      reset: (task, seed) => {
        const n = this.episodesOf.get(task.id) ?? 0;
        this.episodesOf.set(task.id, n + 1);
        value = n % 2;
        return env.reset(task, seed);
      },
      step: (reply) => env.step(reply),
      reward: async () => ({ ...(await env.reward()), value }),
      close: () => env.close(),
    };
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

function metrics(runId: string, step: number): Buffer {
  return encodeTrainerStepMetrics({
    run_id: runId, step, timestamp: Date.now(), policy_version: step - 1, loss: 0, kl_ref: null, entropy: null, clip_fraction: 0,
    importance_weight_mean: 1, importance_weight_max: 1, behavior_logprob_abs_diff_mean: 0, behavior_logprob_abs_diff_max: 0, behavior_kl: 0,
    grad_norm: 0, learning_rate: 1e-3, tokens_per_second: 0, step_time_ms: 0, num_tokens: 0, num_sequences: 2, num_groups: 1,
    reward_mean: 0, reward_std: 0, staleness_histogram: [], groups_dropped: {}, extra: {},
  });
}
