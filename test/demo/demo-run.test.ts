/**
 * `npm run demo` end to end, briefly: every part starts, status lines come, and a Ctrl-C (sent
 * twice, as a terminal plus tsx's relay deliver it) stops every part cleanly: each child exits 0,
 * none is left running, and the last line is `RESULT {json}` read from ClickHouse. Whether the
 * policy learns is the 10-minute demo's business (src/demo/README.md), not this test's.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createClickHouse } from '../../src/clickhouse/client.js';
import { databaseFor } from '../../src/demo/run-config.js';
import { projectRoot } from '../../src/services/paths.js';
import { CLICKHOUSE_URL, testKafka } from '../support/services.js';

/** Every process below `pid` (children, their children: the engine, torchrun workers). */
function descendants(pid: number): number[] {
  const children = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
  return children.flatMap((c) => [c, ...descendants(c)]);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The demo leaves its topics and database for querying; a test run removes them. */
async function removeRun(runId: string): Promise<void> {
  rmSync(join(projectRoot(), '.trajstore', 'demo', runId), { recursive: true, force: true });
  const admin = testKafka().admin();
  await admin.connect();
  const topics = (await admin.listTopics()).filter((t) => t.startsWith(`${runId}.`));
  await admin.deleteTopics({ topics }).catch(() => undefined);
  await admin.disconnect();
  const clickhouse = createClickHouse({ url: CLICKHOUSE_URL, username: 'default', password: '' });
  await clickhouse.command({ query: `DROP DATABASE IF EXISTS ${databaseFor(runId)}` });
  await clickhouse.close();
}

test('the demo runs every part at once and a double Ctrl-C stops them all cleanly, ending with RESULT', { timeout: 600_000 }, async () => {
  const root = projectRoot();
  const demo = spawn(join(root, 'node_modules', '.bin', 'tsx'), ['scripts/demo.ts', '--minutes', '8', '--seed', '7', '--status-every', '3'], {
    cwd: root, env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true,
  });
  let out = '';
  let err = '';
  demo.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const statusLines = () => out.split('\n').filter((l) => /^\[\d\d:\d\d\] versions \d+/.test(l));
  const sawStatus = new Promise<void>((resolve) => {
    demo.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (statusLines().length >= 3) resolve();
    });
  });
  const exited = new Promise<number | null>((resolve) => demo.on('exit', (code) => resolve(code)));
  await Promise.race([sawStatus, exited]);
  const runId = /demo (demo-s7-\d+):/.exec(out)?.[1];
  assert.ok(runId, `the demo names its run:\n${out}\n${err}`);
  const parts = descendants(demo.pid!);
  assert.ok(parts.length >= 5, `policy server, sink, trainer (+ engine), producer run: ${parts.length} processes`);
  // The whole process group, as a terminal's Ctrl-C does, and once more.
  process.kill(-demo.pid!, 'SIGINT');
  await new Promise((r) => setTimeout(r, 300));
  process.kill(-demo.pid!, 'SIGINT');
  const code = await exited;
  try {
    assert.equal(code, 0, `demo exit code\n${out.slice(-3000)}\n${err.slice(-3000)}`);
    assert.match(out, /stopping \(Ctrl-C\)/);
    for (const part of ['producer', 'trainer', 'sink']) assert.match(out, new RegExp(`${part} exited 0`), `${part} stopped cleanly`);
    assert.match(out, /policy server stopped/);
    const lines = out.trim().split('\n');
    const last = lines.at(-1)!;
    assert.match(last, /^RESULT \{/);
    const result = JSON.parse(last.slice('RESULT '.length)) as { run_id: string; success_by_version: Record<string, { episodes: number }> };
    assert.equal(result.run_id, runId);
    const episodes = Object.values(result.success_by_version).reduce((n, v) => n + v.episodes, 0);
    assert.ok(episodes > 0, 'episodes reached ClickHouse');
    assert.ok(statusLines().length >= 3);
    // No part of the run is left behind: not the children, not the trainer's engine.
    await new Promise((r) => setTimeout(r, 1000));
    const left = parts.filter(alive);
    assert.deepEqual(left, [], `processes of ${runId} still running`);
  } finally {
    await removeRun(runId);
  }
});
