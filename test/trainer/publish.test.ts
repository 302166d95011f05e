/**
 * Versions: a streaming run publishes immutable adapter versions (here to the S3-compatible
 * store; the crash and replay tests use the local one), writes policy.versions, and the CPU
 * policy server (vLLM's API) loads each under `<run>-v<N>` and answers with it; versions past the
 * window are unloaded; a server that was down catches up on the newest version.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { adapterChecksum, LocalAdapterStore, S3AdapterStore } from '../../src/consumers/trainer/adapter-store.js';
import { adapterName, VersionPublisher } from '../../src/consumers/trainer/publisher.js';
import { runStreamingTrainer } from '../../src/consumers/trainer/stream.js';
import { ensureEngineVenv, ensureTinyModel, freePort, makeTestAdapter, startCpuPolicyServer } from '../../src/inference/cpu-policy-server.js';
import { policyApi } from '../../src/inference/vllm-api.js';
import { decodePolicyVersion, decodeTrainerStepMetrics, type PolicyVersion, type TrainerStepMetrics } from '../../src/schemas/index.js';
import { createLogger } from '../../src/util/logger.js';
import { testKafka, testS3, testTopic, uniqueName } from '../support/services.js';
import { groupEvents, produceGroups, readMessages, runTopics, testConfig } from './fixtures.js';

const logger = createLogger('test-publish', { level: 'warn', pretty: false });

describe('version publishing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-publish-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a streaming run publishes versions to S3 that the policy server loads and answers with; old ones are unloaded', { timeout: 600_000 }, async (t) => {
    await ensureEngineVenv({ install: true });
    const modelDir = await ensureTinyModel();
    const server = await startCpuPolicyServer({ maxLoras: 4 });
    t.after(() => server.stop());
    const kafka = testKafka();
    const topic = uniqueName('trpub');
    const runId = uniqueName('pub');
    const config = testConfig({ runId, topic, dir, modelDir, apiBases: [`${server.baseUrl}/v1`] });
    config.training.publish_every_steps = 1;
    config.training.max_steps = 3;
    config.inference.max_loaded_adapters = 2;
    const s3 = testS3('pub');
    config.storage.adapters = s3.location;
    config.storage.adapter_cache = join(dir, 'adapter-cache');
    config.storage.s3_endpoint = s3.options.endpoint;
    config.storage.s3_force_path_style = true;
    // One partition, the equal-reward group first: it is decided (and counted) before step 1.
    config.kafka.partitions = 1;
    await runTopics(t, kafka, config);
    await produceGroups(kafka, topic, [groupEvents({ runId, seed: 99, rewards: [0, 0] })]);
    await produceGroups(kafka, topic, Array.from({ length: 6 }, (_, i) => groupEvents({ runId, seed: i + 1 })), true);

    const result = await runStreamingTrainer({ config, logger });
    assert.equal(result.steps, 3);
    assert.equal(result.policyVersion, 3);

    // Versions in S3 (events name them there) with a local copy each, and one policy.versions event per version with their checksums.
    const cache = new LocalAdapterStore(config.storage.adapter_cache);
    const versions = (await readMessages(kafka, config.kafka.topics.policy_versions, decodePolicyVersion, (xs) => xs.filter((x) => x.run_id === runId).length >= 3))
      .filter((v: PolicyVersion) => v.run_id === runId);
    assert.deepEqual(versions.map((v) => v.version), [1, 2, 3]);
    assert.deepEqual(versions.map((v) => v.parent_version), [null, 1, 2]);
    for (const v of versions) {
      assert.equal(v.served_model_name, adapterName(runId, v.version));
      assert.equal(v.adapter_checksum, adapterChecksum(cache.versionDir(runId, v.version)));
      assert.ok(v.adapter_uri.startsWith(`${s3.location}/${runId}/v${v.version}/`), v.adapter_uri);
      assert.equal(v.training_step, v.version);
    }
    assert.notEqual(versions[0]!.adapter_checksum, versions[2]!.adapter_checksum, 'training changed the adapter');
    const fromS3 = await new S3AdapterStore(s3.location, new LocalAdapterStore(join(dir, 'fresh-cache')), s3.options).open(runId, 3, versions[2]!.adapter_checksum);
    assert.equal(adapterChecksum(fromS3.dir), versions[2]!.adapter_checksum, 'the bucket holds the same bytes');

    // The server has the newest two, and answers requests for the newest with it.
    const api = policyApi(server.baseUrl);
    const ids = (await api.models()).map((m) => m.id);
    assert.ok(ids.includes(adapterName(runId, 3)) && ids.includes(adapterName(runId, 2)), ids.join(','));
    assert.ok(!ids.includes(adapterName(runId, 1)), 'v1 unloaded (window 2)');
    const reply = await api.chat({ model: adapterName(runId, 3), messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, logprobs: true });
    assert.equal(reply.model, adapterName(runId, 3));

    // Metrics: one event per step, the equal-reward group counted, the load time measured.
    const metrics = (await readMessages(kafka, config.kafka.topics.trainer_metrics, decodeTrainerStepMetrics, (xs) => xs.length >= 3)) as TrainerStepMetrics[];
    assert.deepEqual(metrics.map((m) => m.step), [1, 2, 3]);
    assert.deepEqual(metrics.map((m) => m.groups_dropped.equal_rewards ?? 0), [1, 0, 0]);
    assert.ok(metrics.every((m) => m.policy_version === m.step && (m.extra.publish_load_ms ?? -1) >= 0));
    const worst = Math.max(...metrics.map((m) => m.extra.publish_load_ms!));
    t.diagnostic(`step done → policy server has the new version: max ${Math.round(worst)} ms over 3 versions`);
    assert.ok(worst < 10_000, `publishing took ${worst} ms`);
  });

  it('a policy server that was down catches up on the newest version when it returns', { timeout: 300_000 }, async (t) => {
    const modelDir = await ensureTinyModel();
    const kafka = testKafka();
    const topic = await testTopic(t, kafka, 'trpubv', 1);
    const port = await freePort();
    const producer = kafka.producer();
    await producer.connect();
    t.after(() => producer.disconnect());
    const runId = uniqueName('catch');
    const publisher = new VersionPublisher({ runId, baseModel: 'tiny', apiBases: [`http://127.0.0.1:${port}/v1`], window: 2, topic, producer, logger, requestTimeoutMs: 10_000 });
    const store = new LocalAdapterStore(join(dir, 'store2'));
    const adapters = await Promise.all([1, 2].map((v) => store.publish(runId, v, makeTestAdapter(join(dir, `a${v}`), { modelDir, seed: v, rank: 4 }))));
    for (const [i, a] of adapters.entries()) {
      const { loadMs } = await publisher.publish({ adapter: a, step: i + 1, parentVersion: i === 0 ? null : i, checkpointUri: null, metrics: {} });
      assert.deepEqual(loadMs, [null], 'the server is down');
    }
    assert.equal(publisher.behindCount, 1);

    const server = await startCpuPolicyServer({ port });
    t.after(() => server.stop());
    await publisher.catchUp();
    assert.equal(publisher.behindCount, 0);
    const ids = (await policyApi(server.baseUrl).models()).map((m) => m.id);
    assert.ok(ids.includes(adapterName(runId, 2)), 'the newest version is loaded');
    assert.ok(!ids.includes(adapterName(runId, 1)), 'only the newest: no replay of missed versions');
    assert.ok(existsSync(store.versionDir(runId, 1)), 'older versions stay in the store');
  });

});
