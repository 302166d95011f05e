/**
 * Every endpoint of the API through Fastify's inject, against a run stored by a real sink in
 * this test's own database (test/api/fixtures.ts), with real Kafka and ClickHouse.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { buildApi, type Api } from '../../src/api/server.js';
import { ensureTinyModel } from '../../src/inference/cpu-policy-server.js';
import { logger, waitFor } from '../sink/harness.js';
import {
  EXPECTED_STALENESS, GROUP_SIZE, GROUPS, groupMembers, makeTestRun, pagePng, PUBLISHED_VERSIONS, STEPS, testApi, testConfig, TURNS, type TestRun,
} from './fixtures.js';

const TOKEN = 'test-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}` };

async function json<T = Record<string, any>>(app: Api, method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await app.inject({ method, url, payload: body as any, headers });
  return { status: res.statusCode, body: res.json() as T, headers: res.headers };
}

/** The documented error shape, with the code a test expects. */
function assertError(res: { status: number; body: Record<string, any> }, status: number, code: string): void {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.statusCode, status);
  assert.equal(res.body.code, code);
  assert.equal(typeof res.body.message, 'string');
  assert.ok(typeof res.body.hint === 'string' && res.body.hint.length > 0, 'every error says what to do next');
  assert.equal(typeof res.body.retriable, 'boolean');
  assert.equal(typeof res.body.requestId, 'string');
}

async function waitForJob(app: Api, id: string, states: string[], timeoutMs = 120_000): Promise<Record<string, any>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await json(app, 'GET', `/replay-jobs/${id}`);
    assert.equal(res.status, 200);
    if (states.includes(res.body.state)) return res.body;
    if (Date.now() > deadline) assert.fail(`job ${id} still ${res.body.state} after ${timeoutMs} ms`);
    await sleep(250);
  }
}

test('the API over a run stored by the sink', { timeout: 600_000 }, async (t) => {
  const run: TestRun = await makeTestRun(t);
  const app = await testApi(t, run, { token: TOKEN });

  await t.test('health reports every dependency up, with the database migration', async () => {
    const res = await json(app, 'GET', '/health');
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'ok');
    for (const dep of ['clickhouse', 'database', 'kafka', 'blobs']) assert.equal(res.body.dependencies[dep].state, 'up', dep);
    assert.match(res.body.dependencies.database.detail, /^migration \d+/);
    assert.match(res.body.dependencies.clickhouse.detail, /^ClickHouse \d+\./);
  });

  await t.test('health answers 503 and names ClickHouse when it cannot be reached', async (tt) => {
    const dead = createClickHouse({ url: 'http://127.0.0.1:1', username: 'default', password: '', requestTimeoutMs: 2000 });
    const config = testConfig(run);
    const down = await buildApi({
      settings: config.api, clickhouse: dead, database: run.database, kafka: run.kafka, topics: run.topics, blobs: run.blobs,
      blobsLocation: run.blobsDir, config, logger,
    });
    tt.after(async () => {
      await down.close();
      await dead.close();
    });
    const res = await json(down, 'GET', '/health');
    assert.equal(res.status, 503);
    assert.equal(res.body.status, 'degraded');
    assert.equal(res.body.dependencies.clickhouse.state, 'down');
    assert.match(res.body.dependencies.clickhouse.detail, /trajstore services status/);
    assert.equal(res.body.dependencies.kafka.state, 'up');
    const metrics = await down.inject({ method: 'GET', url: '/metrics' });
    assert.equal(metrics.statusCode, 200, 'a scrape still answers with a dependency down');
    assert.match(metrics.body, /trajstore_metrics_source_up\{source="clickhouse"\} 0/);
  });

  await t.test('runs lists the run with its counts', async () => {
    const res = await json(app, 'GET', '/runs?limit=10');
    assert.equal(res.status, 200);
    const row = res.body.runs.find((r: any) => r.run_id === run.runId);
    assert.ok(row, 'the run is listed');
    assert.equal(row.events, run.events);
    assert.equal(row.episodes, GROUPS * GROUP_SIZE);
    assert.equal(row.turns, GROUPS * GROUP_SIZE * TURNS);
    assert.equal(row.groups, GROUPS);
    assert.equal(row.max_policy_version, 3);
  });

  await t.test('a run summary has success and reward by version, the staleness histogram and the newest step', async () => {
    const res = await json(app, 'GET', `/runs/${run.runId}`);
    assert.equal(res.status, 200);
    const train = res.body.by_version.filter((r: any) => r.purpose === 'train');
    assert.deepEqual(train.map((r: any) => r.policy_version), [0, 1, 2, 3]);
    assert.deepEqual(train.map((r: any) => r.success_rate), [0.25, 0.5, 0.75, 1]);
    assert.deepEqual(train.map((r: any) => r.reward_mean), [0.25, 0.5, 0.75, 1]);
    assert.deepEqual(train.map((r: any) => r.episodes), [8, 8, 8, 8]);
    assert.deepEqual(res.body.staleness, EXPECTED_STALENESS);
    assert.equal(res.body.latest_step.step, STEPS);
    assert.equal(res.body.published_versions, PUBLISHED_VERSIONS);
    assert.equal(res.body.outcomes[0].success_rate, 0.625);
  });

  await t.test('an unknown run is 404 and a malformed run id is a validation error', async () => {
    assertError(await json(app, 'GET', '/runs/no-such-run'), 404, 'TRAJ_E_API_NOT_FOUND');
    assertError(await json(app, 'GET', '/runs/no-such-run/throughput'), 404, 'TRAJ_E_API_NOT_FOUND');
    assertError(await json(app, 'GET', `/runs/${encodeURIComponent("x' OR 1=1")}`), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'GET', '/runs?limit=0'), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'GET', '/runs?limit=abc'), 400, 'TRAJ_E_API_VALIDATION');
  });

  await t.test('throughput buckets hold every event of the run', async () => {
    const res = await json(app, 'GET', `/runs/${run.runId}/throughput`);
    assert.equal(res.status, 200);
    const points = res.body.points as Array<{ t_ms: number; events: number; turns: number; episodes: number }>;
    assert.ok(points.length > GROUPS, `events spread over ${GROUPS} minutes give many buckets (got ${points.length})`);
    assert.equal(points.reduce((n, p) => n + p.events, 0), run.events);
    assert.equal(points.reduce((n, p) => n + p.episodes, 0), GROUPS * GROUP_SIZE);
    assert.ok(points.every((p, i) => i === 0 || p.t_ms > points[i - 1]!.t_ms), 'in time order');
    const fixed = await json(app, 'GET', `/runs/${run.runId}/throughput?bucket_s=3600`);
    assert.equal(fixed.body.bucket_ms, 3_600_000);
    assert.equal(fixed.body.points.reduce((n: number, p: any) => n + p.events, 0), run.events);
  });

  await t.test('policy versions of a run come oldest first with their metrics', async () => {
    const res = await json(app, 'GET', `/runs/${run.runId}/policy-versions`);
    assert.equal(res.status, 200);
    assert.deepEqual(res.body.versions.map((v: any) => v.version), [1, 2, 3]);
    assert.deepEqual(res.body.versions.map((v: any) => v.parent_version), [null, 1, 2]);
    assert.equal(res.body.versions[0].metrics.loss, 0.5);
    assert.equal(res.body.versions[2].training_step, 6);
  });

  await t.test('latest episodes come with their turns, and browser turns with screenshots the API serves', async () => {
    const res = await json(app, 'GET', `/runs/${run.runId}/episodes?limit=6`);
    assert.equal(res.status, 200);
    const episodes = res.body.episodes as any[];
    assert.equal(episodes.length, 6);
    assert.ok(episodes.every((e, i) => i === 0 || e.finished_at_ms <= episodes[i - 1].finished_at_ms), 'newest first');
    assert.ok(episodes.every((e) => e.turns.length === TURNS && e.turns[0].turn_index === 0));
    const browser = episodes.filter((e) => e.environment === 'browser');
    const text = episodes.filter((e) => e.environment === 'text');
    assert.ok(browser.length > 0 && text.length > 0, 'both kinds among the newest');
    assert.ok(text.every((e) => e.turns.every((tn: any) => tn.screenshot_url === null)));
    const url = browser[0].turns[0].screenshot_url as string;
    assert.match(url, /^\/blobs\/[0-9a-f]{64}$/);
    const image = await app.inject({ method: 'GET', url });
    assert.equal(image.statusCode, 200);
    assert.equal(image.headers['content-type'], 'image/png');
    assert.ok(run.screenshots.some((s) => url.endsWith(s.sha256)));
    assert.ok([0, 1, 2].some((v) => pagePng(v).equals(image.rawPayload)), 'the stored screenshot bytes');
    assertError(await json(app, 'GET', `/blobs/${'0'.repeat(64)}`), 404, 'TRAJ_E_API_NOT_FOUND');
    assertError(await json(app, 'GET', '/blobs/not-a-hash'), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'GET', `/runs/${run.runId}/episodes?limit=1000`), 400, 'TRAJ_E_API_VALIDATION');
  });

  await t.test('POST /sql answers a read-only query', async () => {
    const res = await json(app, 'POST', '/sql', { query: `SELECT policy_version, count() AS episodes FROM episode_summary WHERE run_id = '${run.runId}' GROUP BY policy_version ORDER BY policy_version` });
    assert.equal(res.status, 200);
    assert.equal(res.body.row_count, 4);
    assert.deepEqual(res.body.columns.map((c: any) => c.name), ['policy_version', 'episodes']);
    assert.deepEqual(res.body.rows.map((r: any) => Number(r.episodes)), [8, 8, 8, 8]);
  });

  await t.test('POST /sql refuses every kind of write, and the data stays as it was', async () => {
    const before = await json(app, 'POST', '/sql', { query: 'SELECT count() AS n FROM events_data' });
    const writes = [
      `INSERT INTO events_data (event_id, run_id) VALUES ('x', 'y')`,
      'DROP TABLE events_data',
      'TRUNCATE TABLE events_data',
      'ALTER TABLE events_data DELETE WHERE 1',
      'CREATE TABLE evil (x UInt8) ENGINE = Memory',
      'SET max_result_rows = 0',
      'KILL QUERY WHERE 1',
    ];
    for (const query of writes) assertError(await json(app, 'POST', '/sql', { query }), 403, 'TRAJ_E_CLICKHOUSE_READONLY');
    const after = await json(app, 'POST', '/sql', { query: 'SELECT count() AS n FROM events_data' });
    assert.deepEqual(after.body.rows, before.body.rows);
    const tables = await json(app, 'POST', '/sql', { query: "SELECT name FROM system.tables WHERE database = currentDatabase() AND name IN ('events_data', 'evil')" });
    assert.deepEqual(tables.body.rows.map((r: any) => r.name), ['events_data']);
  });

  await t.test('POST /sql enforces the row limit, capped by the config, and names bad SQL', async () => {
    assertError(await json(app, 'POST', '/sql', { query: 'SELECT number FROM system.numbers LIMIT 5', max_rows: 2 }), 422, 'TRAJ_E_CLICKHOUSE_LIMIT');
    const capped = await testApi(t, run, { sql_max_rows: 3 });
    assertError(await json(capped, 'POST', '/sql', { query: 'SELECT number FROM system.numbers LIMIT 5', max_rows: 1_000_000 }), 422, 'TRAJ_E_CLICKHOUSE_LIMIT');
    assert.equal((await json(capped, 'POST', '/sql', { query: 'SELECT number FROM system.numbers LIMIT 3' })).status, 200);
    assertError(await json(app, 'POST', '/sql', { query: 'SELEC 1' }), 400, 'TRAJ_E_CLICKHOUSE_QUERY');
  });

  await t.test('POST /sql validates its body', async () => {
    assertError(await json(app, 'POST', '/sql', {}), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'POST', '/sql', { query: '' }), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'POST', '/sql', { query: 'SELECT 1', extra: true }), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'POST', '/sql', { query: 'SELECT 1', max_rows: -1 }), 400, 'TRAJ_E_API_VALIDATION');
    const broken = await app.inject({ method: 'POST', url: '/sql', payload: '{"query": ', headers: { 'content-type': 'application/json' } });
    assertError({ status: broken.statusCode, body: broken.json() }, 400, 'TRAJ_E_API_VALIDATION');
  });

  await t.test('a body over the limit is refused with 413', async () => {
    const small = await testApi(t, run, { body_limit_bytes: 1024 });
    assertError(await json(small, 'POST', '/sql', { query: `SELECT '${'x'.repeat(2048)}'` }), 413, 'TRAJ_E_API_BODY_TOO_LARGE');
    assert.equal((await json(small, 'POST', '/sql', { query: 'SELECT 1 AS one' })).status, 200);
  });

  await t.test('a client past the rate limit gets 429 with Retry-After', async () => {
    const limited = await testApi(t, run, { rate_limit_per_minute: 3 });
    for (let i = 0; i < 3; i++) assert.equal((await limited.inject({ method: 'GET', url: '/replay-jobs' })).statusCode, 200);
    const res = await json(limited, 'GET', '/replay-jobs');
    assertError(res, 429, 'TRAJ_E_API_RATE_LIMITED');
    assert.equal(res.body.retriable, true);
    assert.ok(res.headers['retry-after'], 'Retry-After header');
  });

  await t.test('mutating endpoints answer 401 without the right token and change nothing', async () => {
    const body = { source_run: run.runId, run: 'replay-unauthorized', dry_run: true };
    assertError(await json(app, 'POST', '/replay-jobs', body), 401, 'TRAJ_E_API_UNAUTHORIZED');
    assertError(await json(app, 'POST', '/replay-jobs', body, { authorization: 'Bearer wrong-token-0123456789' }), 401, 'TRAJ_E_API_UNAUTHORIZED');
    assertError(await json(app, 'POST', '/replay-jobs', body, { authorization: TOKEN }), 401, 'TRAJ_E_API_UNAUTHORIZED');
    assertError(await json(app, 'DELETE', '/replay-jobs/some-job'), 401, 'TRAJ_E_API_UNAUTHORIZED');
    const noToken = await testApi(t, run, {});
    const refused = await json(noToken, 'POST', '/replay-jobs', body, auth);
    assertError(refused, 401, 'TRAJ_E_API_UNAUTHORIZED');
    assert.match(refused.body.hint, /api\.token/);
    assert.deepEqual((await json(app, 'GET', '/replay-jobs')).body.jobs, [], 'no job was started');
    assert.deepEqual((await json(noToken, 'GET', '/replay-jobs')).body.jobs, []);
  });

  await t.test('replay job requests are validated', async () => {
    assertError(await json(app, 'POST', '/replay-jobs', { source_run: run.runId }, auth), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'POST', '/replay-jobs', { source_run: run.runId, run: 'bad run id' }, auth), 400, 'TRAJ_E_API_VALIDATION');
    assertError(await json(app, 'POST', '/replay-jobs', { source_run: run.runId, run: 'r1', from: '--config=/etc/passwd x' }, auth), 400, 'TRAJ_E_API_VALIDATION');
    const badOverride = await json(app, 'POST', '/replay-jobs', { source_run: run.runId, run: 'r1', training: { learning_rate: -1 } }, auth);
    assertError(badOverride, 400, 'TRAJ_E_API_VALIDATION');
    assert.match(badOverride.body.message, /learning_rate/);
    assertError(await json(app, 'GET', '/replay-jobs/no-such-job'), 404, 'TRAJ_E_API_NOT_FOUND');
    const noConfig = await testApi(t, run, { token: TOKEN }, { withConfig: false });
    assertError(await json(noConfig, 'POST', '/replay-jobs', { source_run: run.runId, run: 'r1' }, auth), 409, 'TRAJ_E_API_CONFLICT');
    assert.deepEqual((await json(app, 'GET', '/replay-jobs')).body.jobs, []);
  });

  await t.test('a dry-run replay job runs to success and reports the replay\'s plan', async () => {
    const started = await json(app, 'POST', '/replay-jobs', { source_run: run.runId, run: 'replay-dry', dry_run: true, training: { batch_size: 3 } }, auth);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    assert.equal(started.body.state, 'running');
    assert.ok(started.body.pid > 0);
    const done = await waitForJob(app, started.body.id, ['succeeded', 'failed', 'cancelled']);
    assert.equal(done.state, 'succeeded', done.error);
    assert.equal(done.exit_code, 0);
    assert.equal(done.result.runId, 'replay-dry');
    assert.equal(done.result.records, run.events, 'the replay read every event of the source run');
    assert.ok(done.result.plan.groups > 0, 'groups to train');
    assert.equal(done.result.plan.steps, Math.ceil(done.result.plan.groups / 3), 'the training override (batch_size 3) reached the replay');
    const list = await json(app, 'GET', '/replay-jobs');
    assert.deepEqual(list.body.jobs.map((j: any) => j.id), [started.body.id]);
    assertError(await json(app, 'DELETE', `/replay-jobs/${started.body.id}`, undefined, auth), 409, 'TRAJ_E_API_CONFLICT');
  });

  await t.test('a running replay job holds its slot, and cancelling it stops the replay and its training engine', async () => {
    // A real replay (not a dry run) on the tiny model: it starts the Python engine as its child.
    const trainer = await testApi(t, run, { token: TOKEN }, { modelPath: await ensureTinyModel() });
    const started = await json(trainer, 'POST', '/replay-jobs', { source_run: run.runId, run: 'replay-cancelled' }, auth);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const pid = started.body.pid as number;
    const busy = await json(trainer, 'POST', '/replay-jobs', { source_run: run.runId, run: 'replay-second', dry_run: true }, auth);
    assertError(busy, 409, 'TRAJ_E_API_CONFLICT');
    assert.equal(busy.body.retriable, true);
    await waitFor('the replay to start its engine', async () => groupMembers(pid).length >= 2, 60_000);
    assert.equal((await json(trainer, 'GET', `/replay-jobs/${started.body.id}`)).body.state, 'running');
    const cancelled = await json(trainer, 'DELETE', `/replay-jobs/${started.body.id}`, undefined, auth);
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
    assert.equal(cancelled.body.state, 'cancelled');
    assert.ok(cancelled.body.finished_at_ms >= cancelled.body.started_at_ms);
    assert.equal(cancelled.body.result, null);
    await waitFor('every process of the job to end', async () => groupMembers(pid).length === 0, 10_000);
    assert.equal((await json(trainer, 'GET', `/replay-jobs/${started.body.id}`)).body.state, 'cancelled');
    assertError(await json(trainer, 'DELETE', `/replay-jobs/${started.body.id}`, undefined, auth), 409, 'TRAJ_E_API_CONFLICT');
    const metrics = await trainer.inject({ method: 'GET', url: '/metrics' });
    assert.match(metrics.body, /^trajstore_api_replay_jobs\{state="cancelled"\} 1$/m);
  });

  await t.test('closing the API cancels the replay jobs still running', async () => {
    const closing = await testApi(t, run, { token: TOKEN }, { modelPath: await ensureTinyModel() });
    const started = await json(closing, 'POST', '/replay-jobs', { source_run: run.runId, run: 'replay-closed' }, auth);
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const pid = started.body.pid as number;
    await waitFor('the replay to start its engine', async () => groupMembers(pid).length >= 2, 60_000);
    await closing.close();
    assert.deepEqual(groupMembers(pid), [], 'no process of the job is left once close() returns');
  });

  await t.test('metrics expose API, producer, trainer and sink figures', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(res.statusCode, 200);
    assert.match(res.headers['content-type'] as string, /^text\/plain/);
    const text = res.body;
    const value = (pattern: string) => {
      const m = new RegExp(`^${pattern} (\\S+)$`, 'm').exec(text);
      assert.ok(m, `${pattern} in /metrics`);
      return Number(m[1]);
    };
    const r = `run_id="${run.runId}"`;
    assert.equal(value(`trajstore_producer_events\\{${r}\\}`), run.events);
    assert.equal(value(`trajstore_producer_episodes_finished\\{${r}\\}`), GROUPS * GROUP_SIZE);
    assert.equal(value(`trajstore_trainer_step\\{${r}\\}`), STEPS);
    assert.equal(value(`trajstore_trainer_published_version\\{${r}\\}`), PUBLISHED_VERSIONS);
    assert.equal(value('trajstore_metrics_source_up\\{source="kafka"\\}'), 1);
    assert.equal(value('trajstore_metrics_source_up\\{source="clickhouse"\\}'), 1);
    assert.equal(value('trajstore_dead_letter_messages'), 0);
    for (const p of [0, 1, 2]) assert.equal(value(`trajstore_sink_lag_messages\\{topic="${run.topics.trajectories}",partition="${p}"\\}`), 0, 'the sink has stored everything');
    assert.equal(value('trajstore_api_replay_jobs\\{state="succeeded"\\}'), 1);
    assert.ok(value('trajstore_api_requests_total\\{method="GET",route="/runs/:runId",status_code="200"\\}') >= 1);
    assert.ok(value('trajstore_api_requests_total\\{method="POST",route="/sql",status_code="403"\\}') >= 7);
    assert.match(text, /trajstore_api_request_duration_seconds_bucket/);
  });

  await t.test('the OpenAPI document lists every endpoint and the error shape', async () => {
    const doc = await json(app, 'GET', '/docs/json');
    assert.equal(doc.status, 200);
    assert.match(doc.body.openapi, /^3\./);
    for (const path of ['/health', '/metrics', '/runs', '/runs/{runId}', '/runs/{runId}/throughput', '/runs/{runId}/policy-versions', '/runs/{runId}/episodes', '/blobs/{sha256}', '/sql', '/replay-jobs', '/replay-jobs/{jobId}']) {
      assert.ok(doc.body.paths[path], `${path} documented`);
    }
    assert.ok(doc.body.paths['/replay-jobs'].post.security, 'mutating endpoints document the bearer token');
    assert.ok(Object.values(doc.body.components.schemas).some((s: any) => s.properties?.hint && s.properties?.code), 'ErrorBody in components');
    const ui = await app.inject({ method: 'GET', url: '/docs' });
    assert.ok(ui.statusCode === 200 || ui.statusCode === 302);
    assertError(await json(app, 'GET', '/no/such/route'), 404, 'TRAJ_E_API_NOT_FOUND');
  });

  await t.test('the dashboard page and its charting library are served by the API', async () => {
    const page = await app.inject({ method: 'GET', url: '/dashboard' });
    assert.equal(page.statusCode, 200);
    assert.match(page.headers['content-type'] as string, /text\/html/);
    assert.match(page.body, /\/dashboard\/chart\.umd\.min\.js/);
    const lib = await app.inject({ method: 'GET', url: '/dashboard/chart.umd.min.js' });
    assert.equal(lib.statusCode, 200);
    assert.match(lib.body, /Chart\.js v4/);
    assert.equal((await app.inject({ method: 'GET', url: '/dashboard/app.js' })).statusCode, 200);
    const root = await app.inject({ method: 'GET', url: '/' });
    assert.equal(root.statusCode, 302);
    assert.equal(root.headers.location, '/dashboard');
  });
});
