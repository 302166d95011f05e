/**
 * Text-task groups against the real Kafka and the real CPU policy server: complete, ordered
 * event sequences carrying exactly the token ids and logprobs the server returned; the policy
 * version followed from policy.versions; a policy server killed mid-run.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeTestAdapter, startCpuPolicyServer, type CpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { policyApi, type ChatCompletionResponse } from '../../src/inference/vllm-api.js';
import { TextTasks, textEnvOptions } from '../../src/producers/envs/text.js';
import { RolloutWorker } from '../../src/producers/rollout.js';
import { encodePolicyVersion, payloadAs } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka, testTopic, uniqueName } from '../support/services.js';
import { byGroup, countKind, groupProblems, readTopic, testConfig } from './helpers.js';

const logger = createLogger('test', { level: process.env.TRAJSTORE_LOG_LEVEL ?? 'warn', pretty: false });

describe('text-task groups', () => {
  let server: CpuPolicyServer;
  let adapterDir: string;
  before(async () => {
    server = await startCpuPolicyServer({ logger });
    // Made before any request: spawnSync blocks the event loop, and a pooled keep-alive
    // connection the server closes meanwhile would fail the next fetch.
    adapterDir = makeTestAdapter(join(mkdtempSync(join(tmpdir(), 'adapter-')), 'v2'), { modelDir: server.modelDir, seed: 3 });
  });
  after(async () => {
    await server?.stop();
  });

  async function topics(t: Parameters<typeof testTopic>[0], kafka: ReturnType<typeof testKafka>) {
    return {
      trajectories: await testTopic(t, kafka, 'traj'),
      policy_versions: await testTopic(t, kafka, 'pv', 1),
      trainer_metrics: await testTopic(t, kafka, 'tm', 1),
      dead_letter: uniqueName('dlq'),
    };
  }

  test('every episode is a complete ordered event sequence with the token ids and logprobs the server returned', async (t) => {
    const kafka = testKafka();
    const cfgTopics = await topics(t, kafka);
    const config = testConfig({ topics: cfgTopics, apiBase: `${server.baseUrl}/v1` });
    const responses = new Map<string, ChatCompletionResponse>();
    const worker = new RolloutWorker({
      config, kafka, logger, maxGroups: 3,
      environments: new TextTasks(config.run.seed, textEnvOptions(config.rollout.env_options)),
      onPolicyResponse: (r) => responses.set(r.id, r),
    });
    const final = await worker.run();
    assert.equal(final.groupsDone, 3);

    const events = await readTopic(kafka, cfgTopics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 3);
    const groups = byGroup(events);
    assert.equal(groups.size, 3);
    for (const list of groups.values()) assert.deepEqual(groupProblems(list), []);
    assert.equal(countKind(events, 'EpisodeStarted'), 9);
    assert.equal(countKind(events, 'EpisodeFinished'), 9);

    const turns = events.map((e) => payloadAs(e.event, 'Turn')).filter((x) => x !== undefined);
    assert.ok(turns.length >= 9, `at least one turn per episode, got ${turns.length}`);
    assert.equal(turns.length, responses.size, 'one Turn per policy answer');
    for (const turn of turns) {
      const r = responses.get(turn.request_id!);
      assert.ok(r, `the Turn cites a request the server answered (${turn.request_id})`);
      assert.deepEqual(turn.prompt_token_ids, r.prompt_token_ids);
      assert.deepEqual(turn.completion_token_ids, r.choices[0]!.token_ids);
      // float32 in Avro: equal to the server's double within float32 rounding.
      const served = r.choices[0]!.logprobs!.content!.map((l) => l.logprob);
      assert.equal(turn.completion_logprobs.length, served.length);
      turn.completion_logprobs.forEach((lp, i) => assert.equal(lp, Math.fround(served[i]!)));
      assert.equal(turn.completion_text, r.choices[0]!.message.content);
      assert.equal(turn.model, 'tiny');
    }
    // Multi-turn episodes store only the new messages after their first turn.
    for (const turn of turns) assert.equal(turn.prompt_format, turn.turn_index === 0 ? 'messages_json' : 'messages_delta_json');
    for (const e of events) assert.equal(e.event.policy_version, 0);
  });

  test('the policy client asks for the newest version on policy.versions and records it on every turn', async (t) => {
    const kafka = testKafka();
    const cfgTopics = await topics(t, kafka);
    const config = testConfig({ topics: cfgTopics, apiBase: `${server.baseUrl}/v1`, rollout: { max_turns: 1, env_options: { families: ['copy_digit'] } } });
    // A real adapter served under the version's name, published the way the trainer does.
    const served = `${config.run.id}-v2`;
    await policyApi(server.baseUrl).loadAdapter(served, adapterDir);
    const producer = kafka.producer();
    await producer.connect();
    const pv = (version: number, name: string, runId = config.run.id) => ({
      key: `${runId}:${version}`,
      value: encodePolicyVersion({
        run_id: runId, version, parent_version: version > 1 ? version - 1 : null, base_model: 'tiny', served_model_name: name,
        adapter_uri: adapterDir, adapter_checksum: `sha256:${'0'.repeat(64)}`, checkpoint_uri: null, training_step: version, metrics: {}, created_at: Date.now(),
      }),
    });
    // v1 then v2 of this run, and a higher version of another run that must be ignored.
    await producer.send({ topic: cfgTopics.policy_versions, messages: [pv(1, 'not-loaded'), pv(2, served), pv(9, 'other-run', 'someone-else')] });
    await producer.disconnect();

    const worker = new RolloutWorker({ config, kafka, logger, maxGroups: 1, environments: new TextTasks(1, textEnvOptions(config.rollout.env_options)) });
    await worker.run();
    const events = await readTopic(kafka, cfgTopics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 1);
    const turns = events.filter((e) => payloadAs(e.event, 'Turn'));
    assert.equal(turns.length, 3);
    for (const e of turns) {
      assert.equal(payloadAs(e.event, 'Turn')!.model, served);
      assert.equal(e.event.policy_version, 2);
    }
  });

  test('killing the policy server mid-run yields error episodes, not lost or half-written groups', async (t) => {
    const kafka = testKafka();
    const cfgTopics = await topics(t, kafka);
    const victim = await startCpuPolicyServer({ logger });
    t.after(() => victim.stop());
    const config = testConfig({ topics: cfgTopics, apiBase: `${victim.baseUrl}/v1`, rollout: { max_turns: 1, concurrency: 2, num_rollouts: 2, env_options: { families: ['copy_digit'] } } });
    let answered = 0;
    const worker = new RolloutWorker({
      config, kafka, logger, maxGroups: 4,
      environments: new TextTasks(2, textEnvOptions(config.rollout.env_options)),
      onPolicyResponse: () => {
        if (++answered === 2) void victim.stop(0);
      },
    });
    const final = await worker.run();
    assert.equal(final.groupsDone, 4, 'every group finishes');
    const events = await readTopic(kafka, cfgTopics.trajectories, (es) => countKind(es, 'GroupCompleted') >= 4);
    const groups = byGroup(events);
    assert.equal(groups.size, 4);
    for (const list of groups.values()) assert.deepEqual(groupProblems(list), []);
    const finished = events.map((e) => payloadAs(e.event, 'EpisodeFinished')).filter((x) => x !== undefined);
    assert.equal(finished.length, 8);
    const errors = finished.filter((f) => f.status === 'error');
    assert.ok(errors.length >= 4, `episodes after the kill end as errors (got ${errors.length})`);
    for (const f of errors) {
      assert.equal(f.error_code, 'TRAJ_E_POLICY_UNREACHABLE');
      assert.match(f.error_message!, /unreachable/);
    }
    assert.ok(finished.some((f) => f.status !== 'error'), 'episodes before the kill are not errors');
  });
});
