import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testDatabase } from '../support/services.js';

test('rows inserted into the local ClickHouse are selected back with their values', async (t) => {
  const { client } = await testDatabase(t);
  await client.command({
    query: 'CREATE TABLE episodes (episode_id String, reward Float64, turns UInt32, finished_at DateTime) ENGINE = MergeTree ORDER BY episode_id',
  });
  const rows = [
    { episode_id: 'e1', reward: 1, turns: 3, finished_at: '2026-11-23 10:00:00' },
    { episode_id: 'e2', reward: 0.25, turns: 7, finished_at: '2026-11-23 10:00:05' },
  ];
  await client.insert({ table: 'episodes', values: rows, format: 'JSONEachRow' });

  const result = await client.query({ query: 'SELECT episode_id, reward, turns, finished_at FROM episodes ORDER BY episode_id', format: 'JSONEachRow' });
  assert.deepEqual(await result.json(), rows);
  const agg = await client.query({ query: 'SELECT count() AS n, sum(turns) AS turns FROM episodes', format: 'JSONEachRow' });
  // UInt64 aggregates arrive as strings in JSON (they may exceed 2^53).
  assert.deepEqual(await agg.json(), [{ n: '2', turns: '10' }]);
});
