/**
 * One partition's assembly, as a replay reader thread runs it: groups leave tagged with the
 * partition's log clock, silent groups close by log time after each event, undecodable records
 * are reported, memory of closed groups is bounded. Pure: no Kafka.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PartitionAssembly } from '../../src/consumers/trainer/partition-assembly.js';
import type { LogRecord } from '../../src/consumers/trainer/source.js';
import { encodeTrajectoryEvent, type TrajectoryEvent } from '../../src/schemas/index.js';
import { groupEvents } from './fixtures.js';

const RUN = 'run-pa';

function records(events: TrajectoryEvent[], start = 0): LogRecord[] {
  return events.map((e, i) => ({ partition: 0, offset: start + i, timestamp: e.timestamp, value: encodeTrajectoryEvent(e) }));
}

function assembly(timeoutMs = 60_000, rememberClosed?: number): PartitionAssembly {
  return new PartitionAssembly({ sourceRunId: RUN, timeoutMs, maxOpenGroups: 100, ...(rememberClosed === undefined ? {} : { rememberClosed }) });
}

describe('partition assembly', () => {
  it('each complete group leaves once, tagged with the log clock of its completion, and the clock never goes back', () => {
    const groups = [0, 1, 2].map((i) => groupEvents({ runId: RUN, seed: i + 1, startMs: 1_000_000 + i * 10 }));
    // Interleaved as concurrent producers write them.
    const interleaved = groups[0]!.flatMap((_, k) => groups.map((g) => g[k]!).filter(Boolean));
    const a = assembly();
    for (const r of records(interleaved)) a.push(r);
    const { items, undecodable, counters } = a.take();
    assert.deepEqual(undecodable, []);
    assert.deepEqual(items.map((x) => x.group.groupId).sort(), groups.map((g) => g[0]!.group_id).sort());
    for (const x of items) assert.equal(x.clock, Math.max(...interleaved.slice(0, interleaved.findIndex((e) => e.group_id === x.group.groupId && 'GroupCompleted' in e.payload) + 1).map((e) => e.timestamp)));
    assert.deepEqual(items.map((x) => x.clock), [...items.map((x) => x.clock)].sort((p, q) => p - q));
    assert.equal(counters.events, interleaved.length);
    assert.deepEqual(a.take().items, [], 'taken once');
  });

  it('a silent group is closed by log time right after the event that passes its timeout, whatever the batching', () => {
    const t0 = 1_700_000_000_000;
    const silent = groupEvents({ runId: RUN, seed: 1, startMs: t0, incomplete: true }).slice(0, 3);
    const later = groupEvents({ runId: RUN, seed: 2, startMs: t0 + 5_000 });
    const recs = records([...silent, ...later]);
    const one = assembly(1_000);
    for (const r of recs) one.push(r);
    const all = one.take().items;
    assert.deepEqual(all.map((x) => [x.group.groupId, x.group.closedBy, x.clock]), [
      [silent[0]!.group_id, 'timeout', t0 + 5_000],
      [later[0]!.group_id, 'complete', t0 + 5_000 + later.length - 1],
    ]);
    // Taken after every record instead of once: the same groups, in the same order, at the same clocks.
    const two = assembly(1_000);
    const piecewise = recs.flatMap((r) => {
      two.push(r);
      return two.take().items;
    });
    assert.deepEqual(piecewise.map((x) => [x.group.groupId, x.clock]), all.map((x) => [x.group.groupId, x.clock]));
  });

  it('at the end of the range, groups still open are closed', () => {
    const a = assembly();
    for (const r of records(groupEvents({ runId: RUN, incomplete: true }))) a.push(r);
    assert.deepEqual(a.take().items, []);
    a.finish();
    const { items } = a.take();
    assert.equal(items.length, 1);
    assert.equal(items[0]!.group.closedBy, 'timeout');
  });

  it('an undecodable record is reported with its position and reason, and the records around it still assemble', () => {
    const events = groupEvents({ runId: RUN });
    const recs = records(events);
    recs.splice(2, 0, { partition: 0, offset: 99, timestamp: 0, value: Buffer.from('not avro') }, { partition: 0, offset: 100, timestamp: 0, value: null });
    const a = assembly();
    for (const r of recs) a.push(r);
    const { items, undecodable } = a.take();
    assert.equal(items.length, 1);
    assert.deepEqual(undecodable.map((u) => u.record.offset), [99, 100]);
    assert.ok(undecodable.every((u) => u.reason.length > 0));
    assert.match(undecodable[1]!.reason, /tombstone/);
  });

  it('closed groups are remembered (late events ignored) up to a bound, then forgotten (bounded memory)', () => {
    const groups = [0, 1, 2, 3, 4].map((i) => groupEvents({ runId: RUN, seed: i + 1 }));
    const a = assembly(60_000, 2);
    let offset = 0;
    for (const g of groups) for (const r of records(g, offset)) (a.push(r), offset++);
    assert.equal(a.take().items.length, 5);
    // A redelivered event of the newest group is late; one of the oldest, forgotten, is an orphan.
    a.push(records([groups[4]!.at(-1)!], offset++)[0]!);
    a.push(records([groups[0]!.at(-1)!], offset++)[0]!);
    const { counters } = a.take();
    assert.equal(counters.late_events, 1);
    assert.equal(counters.orphan_events, 1);
  });
});
