/**
 * The sink end to end on the shared Kafka and ClickHouse: typed tables hold the right rows and
 * values, redelivery never shows twice, migrations re-run as no-ops, the report and `sql`
 * commands read them, and `sql` refuses writes.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { Partitioners } from 'kafkajs';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { migrate } from '../../src/clickhouse/migrations/index.js';
import { quoteString } from '../../src/clickhouse/sql.js';
import { encodePolicyVersion, encodeTrainerStepMetrics, payloadAs, type TrajectoryEvent } from '../../src/schemas/index.js';
import { CLICKHOUSE_URL, testKafka, uniqueName } from '../support/services.js';
import { produceEvents, syntheticRun } from './events.js';
import { count, logger, rows, sinkTopics, startSink, testDatabase, waitFor } from './harness.js';

const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/trajstore.mjs', ...args], { encoding: 'utf8', timeout: 60_000 });

/** Expected per-version aggregates, computed from the produced events. */
function expectedByVersion(events: TrajectoryEvent[]): Map<number, { episodes: number; reward: number; success: number }> {
  const out = new Map<number, { episodes: number; reward: number; success: number }>();
  const rewardOf = new Map<string, number>();
  for (const e of events) {
    const r = payloadAs(e, 'Reward');
    if (r && r.turn_index === null) rewardOf.set(e.episode_id!, (rewardOf.get(e.episode_id!) ?? 0) + r.value);
  }
  for (const e of events) {
    const f = payloadAs(e, 'EpisodeFinished');
    if (!f) continue;
    const v = out.get(e.policy_version) ?? { episodes: 0, reward: 0, success: 0 };
    v.episodes++;
    v.reward += rewardOf.get(e.episode_id!) ?? 0;
    if (f.status === 'success') v.success++;
    out.set(e.policy_version, v);
  }
  return out;
}

test('produced events appear in the typed tables with the right counts and values; a redelivered event is stored once', { timeout: 180_000 }, async (t) => {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const { database, client } = await testDatabase(t);
  const runId = uniqueName('run');
  const events = syntheticRun({ runId, groups: 6, groupSize: 3, turns: 2, promptTokens: 64, completionTokens: 16, seed: 7 });
  await produceEvents(kafka, topics.trajectories, events);
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  t.after(() => producer.disconnect());
  await producer.send({ topic: topics.policyVersions, messages: [1, 2].map((version) => ({ key: String(version), value: encodePolicyVersion({
    run_id: runId, version, parent_version: version === 1 ? null : version - 1, base_model: 'Qwen/Qwen3-0.6B', served_model_name: `lora-v${version}`,
    adapter_uri: `file:///adapters/v${version}`, adapter_checksum: `sha256:${'b'.repeat(64)}`, checkpoint_uri: null, training_step: version * 10,
    metrics: { loss: 0.5 / version }, created_at: Date.now(),
  }) })) });
  await producer.send({ topic: topics.trainerMetrics, messages: [{ value: encodeTrainerStepMetrics({
    run_id: runId, step: 1, timestamp: Date.now(), policy_version: 1, loss: 0.25, kl_ref: null, entropy: 1.5, clip_fraction: 0.1,
    importance_weight_mean: 1, importance_weight_max: 1.3, behavior_logprob_abs_diff_mean: 0.01, behavior_logprob_abs_diff_max: 0.2,
    behavior_kl: 0.001, grad_norm: 0.9, learning_rate: 1e-5, tokens_per_second: 1000, step_time_ms: 500, num_tokens: 4096,
    num_sequences: 12, num_groups: 4, reward_mean: 0.5, reward_std: 0.5,
    staleness_histogram: [{ versions_behind: 0, groups: 3, tokens: 3000 }, { versions_behind: 1, groups: 1, tokens: 1096 }],
    groups_dropped: { zero_variance: 2 }, extra: {},
  }) }] });

  const sink = await startSink(t, kafka, topics, database);
  const db = database;
  await waitFor('every event stored', async () => (await count(client, `SELECT count() AS n FROM ${db}.events`)) === events.length
    && (await count(client, `SELECT count() AS n FROM ${db}.trainer_steps`)) === 1 && (await count(client, `SELECT count() AS n FROM ${db}.policy_versions`)) === 2);

  const ids = await rows<{ event_id: string }>(client, `SELECT event_id FROM ${db}.events ORDER BY event_id`);
  assert.deepEqual(ids.map((r) => r.event_id), events.map((e) => e.event_id).sort(), 'the stored ids are exactly the produced ones');
  const kindCount = (kind: string) => events.filter((e) => kind in e.payload).length;
  for (const [view, kind] of [['groups', 'GroupStarted'], ['group_completions', 'GroupCompleted'], ['episode_starts', 'EpisodeStarted'], ['episodes', 'EpisodeFinished'], ['turns', 'Turn'], ['rewards', 'Reward']] as const) {
    assert.equal(await count(client, `SELECT count() AS n FROM ${db}.${view}`), kindCount(kind), `${view} holds one row per ${kind}`);
  }

  const turnEvent = events.find((e) => 'Turn' in e.payload)!;
  const turn = payloadAs(turnEvent, 'Turn')!;
  const [stored] = await rows<Record<string, unknown>>(client, `SELECT * FROM ${db}.turns WHERE event_id = ${quoteString(turnEvent.event_id)}`);
  assert.ok(stored);
  assert.deepEqual(stored.completion_token_ids, turn.completion_token_ids);
  assert.deepEqual((stored.completion_logprobs as number[]).map(Math.fround), turn.completion_logprobs, 'float32 logprobs are stored exactly');
  assert.equal(stored.prompt_tokens, 64);
  assert.equal(stored.completion_tokens, 16);
  assert.ok(Math.abs((stored.logprob_sum as number) - turn.completion_logprobs.reduce((a, b) => a + b, 0)) < 1e-9);
  assert.equal(stored.action_type, 'click');
  assert.equal(stored.action_args_json, turn.action!.args_json);
  assert.equal(stored.completion_text, turn.completion_text);
  assert.equal(stored.prompt_format, 'messages_delta_json');
  assert.equal(stored.request_id, turn.request_id);
  assert.equal(stored.timestamp_ms, turnEvent.timestamp);
  assert.equal(stored.episode_id, turnEvent.episode_id);

  const [eventRow] = await rows<Record<string, unknown>>(client, `SELECT * FROM ${db}.events WHERE event_id = ${quoteString(turnEvent.event_id)}`);
  assert.deepEqual([eventRow!.kind, eventRow!.tag_keys, eventRow!.tag_values, eventRow!.kafka_topic], ['Turn', ['suite'], ['sink'], topics.trajectories]);

  const [group] = await rows<Record<string, unknown>>(client, `SELECT task_id, task_family, group_size, top_k, task_params_json FROM ${db}.groups WHERE group_id = ${quoteString(`${runId}-g1`)}`);
  assert.deepEqual(group, { task_id: 'task-1', task_family: 'browser.fill_form', group_size: 3, top_k: null, task_params_json: '{"a":1,"b":2}' });

  const [step] = await rows<Record<string, unknown>>(client, `SELECT staleness_versions_behind, staleness_groups, dropped_reasons, dropped_counts, kl_ref, entropy FROM ${db}.trainer_steps`);
  assert.deepEqual(step, { staleness_versions_behind: [0, 1], staleness_groups: [3, 1], dropped_reasons: ['zero_variance'], dropped_counts: [2], kl_ref: null, entropy: 1.5 });
  const versions = await rows<Record<string, unknown>>(client, `SELECT version, parent_version, served_model_name, metric_names FROM ${db}.policy_versions ORDER BY version`);
  assert.deepEqual(versions, [
    { version: 1, parent_version: null, served_model_name: 'lora-v1', metric_names: ['loss'] },
    { version: 2, parent_version: 1, served_model_name: 'lora-v2', metric_names: ['loss'] },
  ]);

  // The report reads the same numbers back through the views.
  const report = cli('report', '--run', runId, '--database', db, '--json');
  assert.equal(report.status, 0, report.stderr);
  const parsed = JSON.parse(report.stdout) as Record<string, { rows: Array<Record<string, number>> }>;
  assert.equal(parsed.summary!.rows[0]!.events, events.length);
  const expected = expectedByVersion(events);
  assert.deepEqual(
    parsed.by_version!.rows.map((r) => [r.policy_version, r.episodes, r.reward_mean, r.success_rate]),
    [...expected].sort((a, b) => a[0] - b[0]).map(([v, e]) => [v, e.episodes, Number((e.reward / e.episodes).toFixed(4)), Number((e.success / e.episodes).toFixed(4))]),
  );
  assert.deepEqual(parsed.staleness!.rows, [{ versions_behind: 0, groups: 3, tokens: 3000 }, { versions_behind: 1, groups: 1, tokens: 1096 }]);
  const errorsExpected = events.filter((e) => payloadAs(e, 'EpisodeFinished')?.status === 'error').length;
  assert.equal(parsed.errors!.rows.find((r) => (r.status as unknown) === 'error')?.episodes ?? 0, errorsExpected);

  // Redelivery: the same events again at new offsets (a producer retry, a replay). The views
  // still show each event once.
  await produceEvents(kafka, topics.trajectories, events);
  await waitFor('the duplicates reach ClickHouse', async () => (await count(client, `SELECT count() AS n FROM ${db}.events_data`)) >= 2 * events.length);
  assert.equal(await count(client, `SELECT count() AS n FROM ${db}.events`), events.length);
  assert.equal(await count(client, `SELECT count() AS n FROM ${db}.turns`), kindCount('Turn'));
  assert.equal(await count(client, `SELECT count() AS n FROM ${db}.episode_summary`), kindCount('EpisodeFinished'));
  assert.equal(sink.stats.deadLetters, 0);
});

test('a second sink on the same database skips what the watermark says is stored', { timeout: 120_000 }, async (t) => {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const { database, client } = await testDatabase(t);
  const events = syntheticRun({ runId: uniqueName('run'), groups: 4, groupSize: 2, turns: 1, promptTokens: 8, completionTokens: 4, seed: 3 });
  await produceEvents(kafka, topics.trajectories, events);
  const first = await startSink(t, kafka, topics, database);
  // Stored means rows and watermark: the sum of next offsets over the partitions is the count.
  const storedUpTo = (sink: typeof first) => sink.positions().reduce((n, p) => n + Number(p.nextOffset), 0);
  await waitFor('first sink stored everything', async () => storedUpTo(first) === events.length);
  await first.stop();
  // A new consumer group reads from offset 0: every message is a redelivery to this database.
  const second = await startSink(t, kafka, topics, database);
  await waitFor('second sink read everything', async () => second.stats.skippedRedelivered === events.length, 30_000);
  assert.equal(second.stats.messages, 0, 'nothing was inserted again');
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.events_data`), events.length, 'no duplicate row, even before merges');
});

test('migrations are versioned and re-running them is a no-op', async (t) => {
  const { database, client } = await testDatabase(t);
  assert.deepEqual(await migrate(client, database, logger), [1, 2]);
  assert.deepEqual(await migrate(client, database, logger), []);
  assert.deepEqual(await rows(client, `SELECT version, name FROM ${database}.schema_migrations ORDER BY version`), [
    { version: 1, name: 'events, typed tables, policy versions, trainer steps, offsets, views' },
    { version: 2, name: 'episode_summary with aliased joins (current ClickHouse)' },
  ]);
  const tables = await rows<{ name: string }>(client, `SELECT name FROM system.tables WHERE database = ${quoteString(database)} ORDER BY name`);
  for (const view of ['events', 'groups', 'group_completions', 'episode_starts', 'episodes', 'turns', 'rewards', 'policy_versions', 'trainer_steps', 'runs', 'episode_summary', 'sink_offsets']) {
    assert.ok(tables.some((r) => r.name === view), `${view} exists`);
  }
});

test('quoteString round-trips hostile strings through ClickHouse unchanged', async () => {
  const client = createClickHouse({ url: CLICKHOUSE_URL, username: 'default', password: '' });
  const hostile = [
    "'", "\\", "\\'", "'; DROP TABLE x; --", "a' OR '1'='1", "\n\r\t\b\f\0", "back`tick", '"double"', '{name:String}',
    "\\\\''\\", 'ünïcödé ✓ 漢字 🚀', '\u0001\u001f\u007f', '/* comment */', "' FORMAT CSV --", 'x'.repeat(10_000),
  ];
  try {
    for (const value of hostile) {
      const result = await client.query({ query: `SELECT ${quoteString(value)} AS v, length(${quoteString(value)}) AS n`, format: 'JSONEachRow' });
      const [row] = await result.json<{ v: string; n: number | string }>();
      assert.equal(row!.v, value, `round trip of ${JSON.stringify(value.slice(0, 40))}`);
      assert.equal(Number(row!.n), Buffer.byteLength(value), 'one literal, not an injection');
    }
    assert.throws(() => quoteString('\uD800'), /lone UTF-16 surrogate/);
  } finally {
    await client.close();
  }
});

test('trajstore sql prints table, json and csv, and refuses writes', { timeout: 120_000 }, async (t) => {
  const { database, client } = await testDatabase(t);
  await migrate(client, database, logger);
  const table = cli('sql', "SELECT 1 AS n, 'a,\"b' AS s", '--database', database);
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /^n\s+s\n-+\s+-+\n1\s+a,"b\n\(1 row\)\n$/);
  const csv = cli('sql', "SELECT 1 AS n, 'a,\"b' AS s", '--database', database, '--format', 'csv');
  assert.equal(csv.stdout, 'n,s\n1,"a,""b"\n');
  const json = cli('sql', 'SELECT count() AS n FROM events', '--database', database, '--format', 'json');
  assert.deepEqual(JSON.parse(json.stdout), [{ n: '0' }]);

  for (const write of [
    `INSERT INTO ${database}.sink_offsets (topic, partition, next_offset) VALUES ('x', 0, 1)`,
    `INSERT INTO ${database}.sink_offsets SELECT 'x', 0, 1, now()`,
    `DROP TABLE ${database}.events_data`,
    `TRUNCATE TABLE ${database}.events_data`,
    `ALTER TABLE ${database}.events_data DELETE WHERE 1`,
    `CREATE TABLE ${database}.evil (a UInt8) ENGINE = Memory`,
    'SELECT 1 SETTINGS readonly = 0',
    '/* hi */ KILL QUERY WHERE 1',
  ]) {
    const result = cli('sql', write, '--database', database);
    assert.equal(result.status, 2, `${write} must fail`);
    assert.match(result.stderr, /TRAJ_E_CLICKHOUSE_READONLY/, write);
  }
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.sink_offsets`), 0, 'nothing was written');
  assert.equal(await count(client, `SELECT count() AS n FROM system.tables WHERE database = ${quoteString(database)} AND name = 'events_data'`), 1);

  const tooMany = cli('sql', 'SELECT number FROM system.numbers LIMIT 100', '--database', database, '--max-rows', '10');
  assert.equal(tooMany.status, 2);
  assert.match(tooMany.stderr, /TRAJ_E_CLICKHOUSE_LIMIT[\s\S]*--max-rows/);
  const slow = cli('sql', 'SELECT sleep(2)', '--database', database, '--timeout', '1');
  assert.match(slow.stderr, /TRAJ_E_CLICKHOUSE_LIMIT/);
});
