/**
 * Crash safety: a `trajstore sink` child process is SIGKILLed at random moments (during start,
 * group join, fetch, insert, watermark write, commit) while a producer keeps writing, at least
 * 20 times, then restarted until caught up. ClickHouse must then hold exactly the produced set
 * of event ids, each once.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { testKafka, uniqueName } from '../support/services.js';
import { prng, produceEvents, syntheticRun } from './events.js';
import { count, rows, sinkTopics, testDatabase, writeSinkConfig } from './harness.js';

const KILLS = 20;

function startChild(config: string, extra: string[] = []): ChildProcess {
  return spawn(process.execPath, ['bin/trajstore.mjs', 'sink', '-c', config, '--no-progress', ...extra], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, TRAJSTORE_LOG_LEVEL: 'warn', TRAJSTORE_LOG_FORMAT: 'json' },
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once('exit', (code) => resolve(code));
  });
}

test(`sink SIGKILLed ${KILLS} times at random moments ends with exactly the produced events`, { timeout: 400_000 }, async (t) => {
  const kafka = testKafka();
  const topics = await sinkTopics(t, kafka);
  const { database, client } = await testDatabase(t);
  const dir = mkdtempSync(join(tmpdir(), 'trajstore-kill-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = writeSinkConfig(dir, topics, database, { batch_max_rows: 400, batch_max_ms: 300, session_timeout_ms: 6000, retry_max_ms: 1000 });

  // The producer keeps writing through every crash, so kills land with work in flight.
  const produced: string[] = [];
  let producedTurns = 0;
  let producing = true;
  const producer = (async () => {
    for (let round = 0; producing; round++) {
      const events = syntheticRun({ runId: 'kill-run', groups: 3, groupSize: 4, turns: 3, promptTokens: 128, completionTokens: 32, seed: round });
      await produceEvents(kafka, topics.trajectories, events);
      produced.push(...events.map((e) => e.event_id));
      producedTurns += events.filter((e) => 'Turn' in e.payload).length;
      await sleep(500);
    }
  })();

  const rand = prng(20261123);
  const storedAtKill: number[] = [];
  let stderr = '';
  for (let kill = 0; kill < KILLS; kill++) {
    const child = startChild(config);
    child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    // A restarted sink waits out the killed member's 6 s session before it gets partitions, so
    // moments up to 12 s cover start-up, the group join and consuming (fetch, insert, commit).
    await sleep(500 + Math.floor(rand() * 11_500));
    child.kill('SIGKILL');
    await exited(child);
    storedAtKill.push(await count(client, `SELECT count() AS n FROM ${database}.events_data`));
  }
  producing = false;
  await producer;

  const final = startChild(config, ['--until-caught-up']);
  final.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const deadline = new AbortController();
  const code = await Promise.race([exited(final), sleep(120_000, 'timeout' as const, { signal: deadline.signal }).catch(() => 'aborted' as const)]);
  deadline.abort();
  if (code === 'timeout') final.kill('SIGKILL');
  assert.equal(code, 0, `the last sink exits 0 once caught up; its stderr:\n${stderr.slice(-3000)}`);

  const progressKills = storedAtKill.filter((n, i) => n > (storedAtKill[i - 1] ?? 0)).length;
  assert.ok(progressKills >= 4, `kills landed while the sink was storing (progress between ${progressKills} kills: ${storedAtKill.join(',')})`);
  const [totals] = await rows<{ n: number; ids: number }>(client, `SELECT count() AS n, uniqExact(event_id) AS ids FROM ${database}.events`);
  assert.deepEqual(totals, { n: produced.length, ids: produced.length }, 'each produced event once');
  const stored = await rows<{ event_id: string }>(client, `SELECT event_id FROM ${database}.events ORDER BY event_id`);
  assert.deepEqual(stored.map((r) => r.event_id), [...produced].sort(), 'the stored ids are exactly the produced ids');
  const raw = await count(client, `SELECT count() AS n FROM ${database}.events_data`);
  t.diagnostic(`${produced.length} events; ${raw - produced.length} duplicate rows written by crashes and hidden by FINAL; stored after each kill: ${storedAtKill.join(',')}`);
  assert.equal(await count(client, `SELECT count() AS n FROM ${database}.turns`), producedTurns, 'the typed tables agree');
});
