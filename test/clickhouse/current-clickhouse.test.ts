/**
 * Current ClickHouse is a first-class target: every statement the project sends runs on the
 * local ClickHouse 18.16 server and on current ClickHouse (26.x, in-process through chdb,
 * installed by scripts/chdb/setup.sh) with the same answers.
 *
 * The data is stored by the real sink (Kafka → ClickHouseSink → 18.16) through a client that
 * records every statement it sends: the migrations and the row inserts. Those are replayed in
 * chdb, so its tables hold what the sink wrote; then every entry of the query catalog
 * (src/clickhouse/catalog.ts) runs on both, with its example parameters, and the answers
 * (columns, types, rows) must be equal.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { test, type TestContext } from 'node:test';
import type { ClickHouseClient } from '@clickhouse/client';
import { Partitioners } from 'kafkajs';
import { exampleStatements, type ExampleContext } from '../../src/clickhouse/catalog.js';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { migrate, MIGRATIONS } from '../../src/clickhouse/migrations/index.js';
import { migration001 } from '../../src/clickhouse/migrations/001_initial.js';
import { queryReadOnly, readOnlySettings, type QueryResult } from '../../src/clickhouse/readonly.js';
import { quoteIdentifier, quoteString } from '../../src/clickhouse/sql.js';
import { trajectoryRows, DATA_TABLES } from '../../src/consumers/clickhouse-sink/rows.js';
import { ClickHouseSink } from '../../src/consumers/clickhouse-sink/sink.js';
import { SinkStore } from '../../src/consumers/clickhouse-sink/store.js';
import {
  encodePolicyVersion, encodeTrainerStepMetrics, newTrajectoryEvent, payloadAs, type TrajectoryEvent,
} from '../../src/schemas/index.js';
import { projectRoot } from '../../src/services/paths.js';
import { CLICKHOUSE_URL, testKafka, uniqueName } from '../support/services.js';
import { produceEvents, syntheticRun } from '../sink/events.js';
import { logger, rows, sinkTopics, testDatabase, waitFor } from '../sink/harness.js';

const ROOT = projectRoot();
/** Read settings for both servers: the API's own, with 64-bit integers as exact strings. */
const SETTINGS = readOnlySettings({ maxRows: 100_000, timeoutS: 60 });

/** A setting's value as a SETTINGS clause takes it (the HTTP interface takes them all as text). */
function settingLiteral(value: unknown): string {
  return typeof value === 'number' || /^\d+$/.test(String(value)) ? String(value) : quoteString(String(value));
}

/** One statement the sink's client sent, as the server received it. */
interface Sent { sql: string; data?: string }

/** A ClickHouse client that records every command, query and insert it sends. */
function recording(client: ClickHouseClient, sent: Sent[]): ClickHouseClient {
  return new Proxy(client, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      if (prop === 'command' || prop === 'query' || prop === 'exec') {
        return (params: { query: string }) => {
          sent.push({ sql: params.query });
          return (value as (p: unknown) => unknown).call(target, params);
        };
      }
      if (prop === 'insert') {
        return (params: { table: string; values: unknown[]; format: string; clickhouse_settings?: Record<string, unknown> }) => {
          assert.equal(params.format, 'JSONEachRow', 'the sink inserts JSONEachRow');
          const settings = Object.entries(params.clickhouse_settings ?? {}).map(([k, v]) => `${k} = ${settingLiteral(v)}`);
          sent.push({
            sql: `INSERT INTO ${params.table}${settings.length > 0 ? ` SETTINGS ${settings.join(', ')}` : ''} FORMAT JSONEachRow`,
            data: params.values.map((v) => JSON.stringify(v)).join('\n'),
          });
          return (value as (p: unknown) => unknown).call(target, params);
        };
      }
      return (value as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

/** The venv with chdb (created on first use from PyPI); its python. */
function chdbPython(): string {
  const out = execFileSync('bash', [join(ROOT, 'scripts/chdb/setup.sh')], { encoding: 'utf8', timeout: 900_000, stdio: ['ignore', 'pipe', 'inherit'] });
  return out.trim().split('\n').pop()!;
}

type ChdbResult = { ok: true; result: { meta: QueryResult['columns']; data: QueryResult['rows'] } | null } | { ok: false; error: string };

/** Runs the statements in order in one chdb session (scripts/chdb/run.py). */
function runInChdb(python: string, statements: Array<{ sql: string; format?: 'JSON' }>, timeZone: string): ChdbResult[] {
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-chdb-test-'));
  try {
    const out = join(dir, 'out.json');
    execFileSync(python, [join(ROOT, 'scripts/chdb/run.py'), out], {
      input: JSON.stringify({ statements }), env: { ...process.env, TZ: timeZone }, timeout: 600_000, maxBuffer: 64 << 20, stdio: ['pipe', 'inherit', 'inherit'],
    });
    return JSON.parse(readFileSync(out, 'utf8')) as ChdbResult[];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Equal as JSON values; numbers within 1e-6 relative (float text differs between versions in the last digits). */
function same(a: unknown, b: unknown): boolean {
  if (typeof a === 'number' && typeof b === 'number') return a === b || Math.abs(a - b) <= 1e-6 * Math.max(Math.abs(a), Math.abs(b));
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => same(x, b[i]));
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return a === b;
}

/**
 * 18.16 names the server's time zone in a DateTime's type (`DateTime('Etc/UTC')`), current
 * releases leave it out when it is the server's: the same type, written two ways.
 */
function columnsOf(columns: QueryResult['columns'], serverTimeZone: string): QueryResult['columns'] {
  return columns.map((c) => ({ name: c.name, type: c.type.split(`DateTime(${quoteString(serverTimeZone)})`).join('DateTime') }));
}

/** Where two answers to one statement differ, or undefined. */
function difference(old: QueryResult, current: { meta: QueryResult['columns']; data: QueryResult['rows'] }, serverTimeZone: string): string | undefined {
  if (!same(columnsOf(old.columns, serverTimeZone), current.meta)) return `columns differ:\n  18.16:   ${JSON.stringify(old.columns)}\n  current: ${JSON.stringify(current.meta)}`;
  if (old.rows.length !== current.data.length) return `18.16 answers ${old.rows.length} rows, current ClickHouse ${current.data.length}`;
  const i = old.rows.findIndex((row, n) => !same(row, current.data[n]));
  return i < 0 ? undefined : `row ${i} differs:\n  18.16:   ${JSON.stringify(old.rows[i])}\n  current: ${JSON.stringify(current.data[i])}`;
}

/**
 * Rows of a storage table in a fixed order (the order parts are read in is the server's
 * business), sorted on their text and integer values: float text may differ in the last digits.
 */
function sorted(rows: QueryResult['rows']): QueryResult['rows'] {
  const key = (row: Record<string, unknown>) => JSON.stringify(Object.values(row).filter((v) => typeof v === 'string' || Number.isInteger(v)));
  return rows.map((row) => ({ row, key: key(row) })).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).map((r) => r.row);
}

/** Two runs with what the views must handle: duplicates, eval episodes, per-turn rewards, an episode without reward, episodes of a group never started. */
function testRuns(): { runId: string; events: TrajectoryEvent[] } {
  const runId = uniqueName('run');
  const groupOf = (e: TrajectoryEvent) => Number(/-g(\d+)/.exec(e.group_id)![1]);
  const main = syntheticRun({ runId, groups: 8, groupSize: 3, turns: 2, promptTokens: 24, completionTokens: 6, seed: 11 })
    .map((e) => (groupOf(e) % 4 === 3 ? { ...e, purpose: 'eval' as const } : e));
  const firstEpisode = main.find((e) => e.episode_id !== null)!;
  const perTurn = newTrajectoryEvent({
    run_id: runId, group_id: firstEpisode.group_id, episode_id: firstEpisode.episode_id, producer_id: 'worker-1@test', policy_version: firstEpisode.policy_version,
    purpose: firstEpisode.purpose, seq: 90, payload: { Reward: { value: 5, components: {}, source: 'rule:step', turn_index: 0 } },
  });
  const unrewarded = main.filter((e) => payloadAs(e, 'Reward'))[4]!.event_id;
  const other = syntheticRun({ runId: uniqueName('run'), groups: 2, groupSize: 2, turns: 1, promptTokens: 8, completionTokens: 4, seed: 5, versionOf: () => 0 });
  const orphan = other.filter((e) => !(payloadAs(e, 'GroupStarted') && groupOf(e) === 0));
  const events = [...main.filter((e) => e.event_id !== unrewarded), perTurn, ...orphan];
  // Redelivered: the same events again at new offsets.
  return { runId, events: [...events, ...main.slice(0, 12)] };
}

test('every migration, sink insert and catalog query runs on current ClickHouse (chdb) and answers as ClickHouse 18.16 does', { timeout: 1_200_000 }, async (t: TestContext) => {
  const python = chdbPython();
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const { database, client } = await testDatabase(t);
  const { runId, events } = testRuns();
  await produceEvents(kafka, topics.trajectories, events);
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  await producer.connect();
  await producer.send({ topic: topics.policyVersions, messages: [1, 2, 3].map((version) => ({ key: String(version), value: encodePolicyVersion({
    run_id: runId, version, parent_version: version === 1 ? null : version - 1, base_model: 'Qwen/Qwen3-0.6B', served_model_name: `lora-v${version}`,
    adapter_uri: `file:///adapters/v${version}`, adapter_checksum: `sha256:${'c'.repeat(64)}`, checkpoint_uri: version === 2 ? 'file:///ckpt/2' : null,
    training_step: version * 10, metrics: { loss: 0.5 / version, kl: 0.01 * version }, created_at: Date.now() + version,
  }) })) });
  await producer.send({ topic: topics.trainerMetrics, messages: [1, 2].map((step) => ({ value: encodeTrainerStepMetrics({
    run_id: runId, step, timestamp: Date.now() + step, policy_version: step, loss: 0.25 / step, kl_ref: step === 1 ? null : 0.02, entropy: 1.5, clip_fraction: 0.1,
    importance_weight_mean: 1, importance_weight_max: 1.3, behavior_logprob_abs_diff_mean: 0.01, behavior_logprob_abs_diff_max: 0.2,
    behavior_kl: 0.001, grad_norm: 0.9, learning_rate: 1e-5, tokens_per_second: 1000 * step, step_time_ms: 500, num_tokens: 4096,
    num_sequences: 12, num_groups: 4, reward_mean: 0.5, reward_std: 0.5,
    staleness_histogram: [{ versions_behind: 0, groups: 3, tokens: 3000 }, { versions_behind: step, groups: 1, tokens: 1096 }],
    groups_dropped: { zero_variance: step }, extra: { note: 1 },
  }) })) });
  await producer.disconnect();

  // The real sink, through a recording client.
  const sent: Sent[] = [];
  const sinkClient = createClickHouse({ url: CLICKHOUSE_URL, username: 'default', password: '', requestTimeoutMs: 10_000 });
  const sink = new ClickHouseSink({
    kafka, clickhouse: recording(sinkClient, sent), database, topics, groupId: uniqueName('sink'),
    batchMaxRows: 200, batchMaxMs: 500, lingerMs: 20, retryMaxMs: 2000, sessionTimeoutMs: 10_000, logger,
  });
  t.after(async () => {
    await sink.stop();
    await sinkClient.close();
  });
  await sink.start();
  // Counted by the sink, not in the tables: a background merge may collapse the duplicates any time.
  await waitFor('the sink stored everything', async () => sink.stats.messages === events.length + 3 + 2);
  await sink.stop();
  const migrationStatements = MIGRATIONS.reduce((n, m) => n + m.statements('db').length, 0);
  assert.ok(sent.filter((s) => !s.data).length >= migrationStatements, 'the recording saw the migrations');
  assert.ok(sent.some((s) => s.data && s.sql.includes('turns_data')), 'the recording saw the row inserts');

  const db = quoteIdentifier(database);
  // Merge every table to its final state on both servers: a background merge collapses the
  // duplicates whenever it likes, and some answers (the demo's raw event count) depend on it.
  const tables = ['schema_migrations', 'sink_offsets', ...DATA_TABLES];
  const optimize = tables.map((table) => `OPTIMIZE TABLE ${db}.${table} FINAL`);
  for (const statement of optimize) await client.command({ query: statement });
  const episodeIds = [...new Set(events.filter((e) => e.run_id === runId && e.episode_id).map((e) => e.episode_id!))].slice(0, 3);
  const ctx: ExampleContext = { database, runId, episodeIds, topics: [topics.trajectories, topics.policyVersions, topics.trainerMetrics] };
  const catalog = exampleStatements(db, ctx);
  const tableQuery = (table: string) => `SELECT * FROM ${db}.${table}`;
  const [{ tz }] = (await queryReadOnly(client, 'SELECT timezone() AS tz', { maxRows: 1, timeoutS: 5 })).rows as [{ tz: string }];

  // ClickHouse 18.16: the answers to compare with. The client's default database is the test's,
  // as `trajstore sql --database` sets it for the demo's printed queries.
  const old = new Map<string, QueryResult | Error>();
  for (const s of catalog) old.set(s.name, await queryReadOnly(client, s.sql, { maxRows: 100_000, timeoutS: 60 }).catch((err: Error) => err));
  const oldTables = new Map<string, QueryResult>();
  for (const table of tables) oldTables.set(table, await queryReadOnly(client, tableQuery(table), { maxRows: 100_000, timeoutS: 60 }));

  // Current ClickHouse: what the sink sent, then the same reads.
  const settings = ` SETTINGS ${Object.entries(SETTINGS).filter(([k]) => k !== 'default_format').map(([k, v]) => `${k} = ${settingLiteral(v)}`).join(', ')}`;
  const read = (sql: string) => ({ sql: `${sql}${settings}`, format: 'JSON' as const });
  const statements = [
    ...sent.map((s) => ({ sql: s.data === undefined ? s.sql : `${s.sql}\n${s.data}` })),
    ...optimize.map((sql) => ({ sql })),
    read('SELECT timezone() AS tz'),
    ...tables.map((table) => read(tableQuery(table))),
    { sql: `USE ${db}` },
    ...catalog.map((s) => read(s.sql)),
  ];
  const results = runInChdb(python, statements, tz);
  assert.equal(results.length, statements.length);

  const problems: string[] = [];
  const failed = (what: string, r: ChdbResult) => !r.ok && problems.push(`${what} fails on current ClickHouse:\n  ${r.error.split('\n')[0]!.slice(0, 600)}`);
  let i = 0;
  for (const s of sent) failed(`statement sent by the sink (${s.data === undefined ? s.sql.replace(/\s+/g, ' ').slice(0, 120) : s.sql})`, results[i++]!);
  for (const statement of optimize) failed(statement, results[i++]!);
  const tzResult = results[i++]!;
  assert.ok(tzResult.ok && tzResult.result, 'chdb answers');
  assert.equal(tzResult.result.data[0]!.tz, tz, 'both servers use the same time zone');
  for (const table of tables) {
    const r = results[i++]!;
    if (failed(`reading ${table}`, r) || !r.ok || !r.result) continue;
    const diff = difference({ columns: oldTables.get(table)!.columns, rows: sorted(oldTables.get(table)!.rows) }, { meta: r.result.meta, data: sorted(r.result.data) }, tz);
    if (diff) problems.push(`${table} holds other rows on current ClickHouse than on 18.16 after the same inserts: ${diff}`);
  }
  failed('USE', results[i++]!);
  for (const s of catalog) {
    const r = results[i++]!;
    const before = old.get(s.name)!;
    if (before instanceof Error) problems.push(`catalog query ${s.name} fails on ClickHouse 18.16: ${before.message.split('\n')[0]}`);
    if (failed(`catalog query ${s.name}`, r) || !r.ok || !r.result || before instanceof Error || !s.compare) continue;
    const diff = difference(before, r.result, tz);
    if (diff) problems.push(`catalog query ${s.name} answers differently on current ClickHouse: ${diff}`);
  }
  assert.equal(problems.length, 0, `${problems.length} statement(s) fail or answer differently on current ClickHouse (chdb):\n\n${problems.join('\n\n')}`);
  // The comparison means something only if the queries found data.
  const empty = catalog.filter((s) => { const r = old.get(s.name); return !(r instanceof Error) && r!.rows.length === 0; }).map((s) => s.name);
  assert.deepEqual(empty, [], 'every catalog query finds rows in the test data (extend testRuns for a new one)');
});

/** What migration 001 of trajstore 0.1.0 left behind: its tables and views, the view episode_summary in its shipped form, version 1 recorded. */
function shippedVersion1(db: string): string[] {
  return [
    `CREATE TABLE IF NOT EXISTS ${db}.schema_migrations (version UInt32, name String, applied_at DateTime) ENGINE = ReplacingMergeTree() ORDER BY version`,
    ...migration001.statements(db),
    `CREATE VIEW IF NOT EXISTS ${db}.episode_summary AS
SELECT
  run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
  completion_tokens, duration_ms, error_code, finished_at_ms, reward, reward_count,
  task_id, task_family, environment, split
FROM (
  SELECT
    run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
    completion_tokens, duration_ms, error_code, timestamp_ms AS finished_at_ms, reward, reward_count
  FROM (
    SELECT run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
      completion_tokens, duration_ms, error_code, timestamp_ms
    FROM ${db}.episodes_data FINAL
  )
  ANY LEFT JOIN (
    SELECT episode_id, sum(value) AS reward, count() AS reward_count
    FROM ${db}.rewards_data FINAL
    WHERE isNull(turn_index)
    GROUP BY episode_id
  ) USING episode_id
)
ANY LEFT JOIN (
  SELECT group_id, task_id, task_family, environment, split
  FROM ${db}.groups_data FINAL
) USING group_id`,
    `INSERT INTO ${db}.schema_migrations VALUES (1, 'events, typed tables, policy versions, trainer steps, offsets, views', now())`,
  ];
}

test('a database migrated by 0.1.0 gets episode_summary replaced by migration 002, with the same rows', { timeout: 120_000 }, async (t) => {
  const { database, client } = await testDatabase(t);
  const db = quoteIdentifier(database);
  for (const statement of shippedVersion1(db)) await client.command({ query: statement });
  const store = new SinkStore(client, database);
  const events = syntheticRun({ runId: uniqueName('run'), groups: 4, groupSize: 2, turns: 1, promptTokens: 8, completionTokens: 4, seed: 9 });
  const byTable = new Map<string, Record<string, unknown>[]>();
  events.forEach((e, n) => {
    for (const [table, row] of trajectoryRows(e, { topic: 't', partition: 0, offset: String(n), ingestedAtMs: 0 })) byTable.set(table, [...(byTable.get(table) ?? []), row]);
  });
  for (const [table, tableRows] of byTable) await store.insert(table as (typeof DATA_TABLES)[number], tableRows);
  const summary = () => rows(client, `SELECT * FROM ${db}.episode_summary ORDER BY episode_id`);
  const before = await summary();
  assert.equal(before.length, events.filter((e) => payloadAs(e, 'EpisodeFinished')).length);

  assert.deepEqual(await migrate(client, database, logger), [2], 'only migration 002 is applied');
  assert.deepEqual(await summary(), before, 'the new view answers as the old one did');
  const [create] = await rows<{ statement: string }>(client, `SHOW CREATE TABLE ${db}.episode_summary`);
  assert.match(create!.statement, /\) AS outcome USING \(?episode_id/, 'the view is the aliased form');
  assert.deepEqual(await migrate(client, database, logger), [], 'a second run is a no-op');
});

test('no SQL is written in src outside the query catalog and the migrations', () => {
  // A statement in a string literal: a quote or back-quote, then a statement keyword. The
  // project writes SQL in upper case; double-quoted examples in help texts are for users.
  const statement = /[`']\s*(SELECT|INSERT|CREATE|DROP|ALTER|OPTIMIZE|TRUNCATE|RENAME|WITH|SHOW|EXISTS|DESCRIBE|SYSTEM)\s/g;
  const allowed = ['src/clickhouse/catalog.ts', 'src/clickhouse/migrations/'];
  const offenders: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (/\.(ts|js|mjs)$/.test(name)) {
        const file = relative(ROOT, path);
        if (allowed.some((a) => file.startsWith(a))) continue;
        const code = readFileSync(path, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
        for (const m of code.matchAll(statement)) offenders.push(`${file}: ${code.slice(m.index, m.index + 60).replace(/\s+/g, ' ')}`);
      }
    }
  };
  walk(join(ROOT, 'src'));
  assert.deepEqual(offenders, [], 'add the statement to src/clickhouse/catalog.ts (with example parameters) and build it from there');
});
