/**
 * Pure logic of the trainer: group assembly, filters and advantages, sequences, batching and
 * the exactly-once offset bookkeeping. No Kafka and no engine here; the integration tests in
 * this folder run the same code against both.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/index.js';
import { chooseCheckpoint } from '../../src/consumers/trainer/stream.js';
import { GroupAssembler } from '../../src/consumers/trainer/assembler.js';
import { StepBatcher, stepTensors } from '../../src/consumers/trainer/batcher.js';
import { groupAdvantages, prepareGroup, stalenessWeight, type FilterOptions } from '../../src/consumers/trainer/filters.js';
import { OffsetTracker } from '../../src/consumers/trainer/offsets.js';
import { episodeSequences } from '../../src/consumers/trainer/sequences.js';
import type { AssembledGroup, TrainGroup } from '../../src/consumers/trainer/types.js';
import { groupEvents, positions, type GroupSpec } from './fixtures.js';

const RUN = 'r1';
const FILTER: FilterOptions = { maxStaleness: 2, stalePolicy: 'drop', stdScaling: true, maxSeqLength: 256 };

function assemble(spec: Omit<GroupSpec, 'runId'>, start = 0): AssembledGroup {
  const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10 });
  let done: AssembledGroup | undefined;
  for (const { event, pos } of positions(groupEvents({ runId: RUN, ...spec }), 0, start)) done = a.accept(event, pos, 0).completed ?? done;
  assert.ok(done, 'the group completes');
  return done;
}

describe('group assembly', () => {
  it('a group is complete when GroupCompleted arrives, with every episode, turn and outcome reward', () => {
    const g = assemble({ size: 4, rewards: [1, 0, 0.5, 2] });
    assert.equal(g.closedBy, 'complete');
    assert.equal(g.episodes.length, 4);
    assert.deepEqual(g.episodes.map((e) => e.reward), [1, 0, 0.5, 2]);
    assert.ok(g.episodes.every((e) => e.turns.length === 1 && e.status === 'success'));
    assert.deepEqual(g.first, { partition: 0, offset: 0 });
  });

  it('interleaved groups assemble independently; redelivered events apply once', () => {
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10 });
    const g1 = groupEvents({ runId: RUN, rewards: [1, 0] });
    const g2 = groupEvents({ runId: RUN, rewards: [3, 1] });
    const mixed = [g1[0]!, g2[0]!, ...g1.slice(1, 4), g1[2]!, ...g2.slice(1), ...g1.slice(4)];
    const done: AssembledGroup[] = [];
    mixed.forEach((e, i) => {
      const r = a.accept(e, { partition: 0, offset: i }, 0);
      if (r.completed) done.push(r.completed);
    });
    assert.equal(done.length, 2);
    assert.equal(a.counters.duplicate_events, 1);
    assert.deepEqual(done.find((g) => g.groupId === g1[0]!.group_id)!.episodes.map((e) => e.reward), [1, 0]);
    assert.equal(done.find((g) => g.groupId === g1[0]!.group_id)!.episodes[0]!.turns.length, 1, 'the duplicated Turn counted once');
  });

  it('a group whose producer went silent is closed after the timeout, and its late events are ignored', () => {
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10 });
    const events = groupEvents({ runId: RUN });
    events.slice(0, 3).forEach((e, i) => a.accept(e, { partition: 0, offset: i }, 100));
    assert.deepEqual(a.expire({ wallMs: 1000 }), [], 'not yet silent for the timeout');
    const closed = a.expire({ wallMs: 1101 });
    assert.equal(closed.length, 1);
    assert.equal(closed[0]!.closedBy, 'timeout');
    assert.equal(a.openCount, 0);
    const late = a.accept(events[3]!, { partition: 0, offset: 3 }, 2000);
    assert.equal(late.completed, undefined);
    assert.equal(a.counters.late_events, 1);
  });

  it('log time closes silent groups in replay (no wall clock)', () => {
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10 });
    const e = groupEvents({ runId: RUN })[0]!;
    a.accept(e, { partition: 0, offset: 0 }, 0);
    assert.equal(a.expire({ logMs: e.timestamp + 999 }).length, 0);
    assert.equal(a.expire({ logMs: e.timestamp + 1001 }).length, 1);
  });

  it('memory is bounded: past maxOpenGroups the least recently active group is evicted', () => {
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1e9, maxOpenGroups: 2 });
    const starts = [0, 1, 2].map(() => groupEvents({ runId: RUN })[0]!);
    a.accept(starts[0]!, { partition: 0, offset: 0 }, 0);
    a.accept(starts[1]!, { partition: 0, offset: 1 }, 0);
    const r = a.accept(starts[2]!, { partition: 0, offset: 2 }, 0);
    assert.equal(r.evicted?.groupId, starts[0]!.group_id);
    assert.equal(a.openCount, 2);
  });

  it('events of other runs, and of groups whose start it never saw, are counted and ignored', () => {
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10 });
    const other = groupEvents({ runId: 'other' });
    other.forEach((e, i) => assert.deepEqual(a.accept(e, { partition: 0, offset: i }, 0), {}));
    assert.equal(a.counters.other_run, other.length);
    const mine = groupEvents({ runId: RUN });
    mine.slice(1).forEach((e, i) => assert.deepEqual(a.accept(e, { partition: 0, offset: 100 + i }, 0), {}));
    assert.equal(a.counters.orphan_events, mine.length - 1);
  });

  it('groups decided before a checkpoint are skipped when re-read after a resume', () => {
    const events = groupEvents({ runId: RUN });
    const a = new GroupAssembler({ runId: RUN, timeoutMs: 1000, maxOpenGroups: 10, skip: [events[0]!.group_id] });
    events.forEach((e, i) => assert.equal(a.accept(e, { partition: 0, offset: i }, 0).completed, undefined));
    assert.equal(a.counters.skipped_groups, 1);
  });
});

describe('filters and advantages', () => {
  it('advantages are mean-centred and std-scaled within the group', () => {
    const adv = groupAdvantages([1, 0, 0, 1], true)!;
    assert.deepEqual(adv, [1, -1, -1, 1]);
    assert.deepEqual(groupAdvantages([3, 1], false), [1, -1]);
    assert.equal(groupAdvantages([0.5, 0.5, 0.5], true), null);
  });

  it('a group whose rewards are all equal is dropped as equal_rewards', () => {
    const r = prepareGroup(assemble({ size: 3, rewards: [1, 1, 1] }), 0, FILTER);
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.reason, 'equal_rewards');
  });

  it('error episodes are left out and counted; the rest keep their advantages', () => {
    const r = prepareGroup(assemble({ size: 3, rewards: [1, 0, 5], statuses: ['success', 'success', 'error'] }), 0, FILTER);
    assert.ok(r.ok);
    assert.deepEqual(r.episodeDrops, { error: 1 });
    assert.deepEqual(r.group.rewards, [1, 0]);
    assert.deepEqual(r.group.sequences.map((s) => s.advantage), [1, -1]);
  });

  it('fewer than two usable episodes is too_few_episodes', () => {
    const r = prepareGroup(assemble({ size: 2, rewards: [1, 0], statuses: ['success', 'error'] }), 0, FILTER);
    assert.equal(!r.ok && r.reason, 'too_few_episodes');
  });

  it('staleness past the bound drops, or down-weights, as configured', () => {
    const g = assemble({ policyVersion: 1, rewards: [1, 0] });
    assert.ok(prepareGroup(g, 3, FILTER).ok, '2 versions behind is within max_staleness 2');
    const dropped = prepareGroup(g, 4, FILTER);
    assert.equal(!dropped.ok && dropped.reason, 'stale');
    assert.equal(!dropped.ok && dropped.versionsBehind, 3);
    const down = prepareGroup(g, 5, { ...FILTER, stalePolicy: 'downweight' });
    assert.ok(down.ok);
    assert.equal(down.group.weight, 1 / 3);
    assert.deepEqual(down.group.sequences.map((s) => s.advantage), [1 / 3, -1 / 3]);
    assert.equal(stalenessWeight(2, FILTER), 1);
  });

  it('eval groups and groups closed by timeout are never trained', () => {
    assert.equal((prepareGroup(assemble({ purpose: 'eval' }), 0, FILTER) as { reason: string }).reason, 'eval');
    const g = assemble({});
    assert.equal((prepareGroup({ ...g, closedBy: 'timeout' }, 0, FILTER) as { reason: string }).reason, 'timeout');
  });

  it('episodes longer than the model context are left out as too_long', () => {
    const r = prepareGroup(assemble({ size: 2, promptLen: 200, completionLen: 100 }), 0, FILTER);
    assert.equal(!r.ok && r.reason, 'too_few_episodes');
    assert.deepEqual(r.episodeDrops, { too_long: 2 });
  });
});

describe('sequences', () => {
  const turn = (i: number, prompt: number[], completion: number[], v = 0) => ({
    turnIndex: i, promptTokenIds: prompt, completionTokenIds: completion, completionLogprobs: completion.map(() => -1), tokenPolicyVersions: null, policyVersion: v,
    promptImages: [], imageProcessing: null,
  });

  it('trains exactly the sampled tokens: prompt masked, completion unmasked with its logprobs', () => {
    const [s] = episodeSequences([turn(0, [5, 6, 7], [8, 9])], 0.5);
    assert.deepEqual(s!.tokens, [5, 6, 7, 8, 9]);
    assert.deepEqual(s!.lossMask, [0, 0, 0, 1, 1]);
    assert.deepEqual(s!.behaviorLogprobs, [0, 0, 0, -1, -1]);
    assert.equal(s!.advantage, 0.5);
  });

  it('turns that extend the previous prompt + completion merge into one sequence; others split', () => {
    const merged = episodeSequences([turn(0, [1, 2], [3]), turn(1, [1, 2, 3, 4], [5, 6], 1)], 1);
    assert.equal(merged.length, 1);
    assert.deepEqual(merged[0]!.tokens, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(merged[0]!.lossMask, [0, 0, 1, 0, 1, 1]);
    assert.deepEqual(merged[0]!.behaviorVersions, [0, 0, 0, 1, 1, 1]);
    const split = episodeSequences([turn(0, [1, 2], [3]), turn(1, [9, 2, 3], [5])], 1);
    assert.equal(split.length, 2);
  });

  it('a completion with an empty prompt never trains its first token', () => {
    const [s] = episodeSequences([turn(0, [], [4, 5, 6])], 1);
    assert.deepEqual(s!.lossMask, [0, 1, 1]);
  });
});

describe('batching', () => {
  const tg = (id: string, tokens: number): TrainGroup => ({
    groupId: id, first: { partition: 0, offset: 0 }, rewards: [1, 0], tokens, behaviorVersion: 0, versionsBehind: 0, weight: 1,
    sequences: [{ tokens: Array(tokens).fill(3), lossMask: [0, ...Array(tokens - 1).fill(1)], behaviorLogprobs: Array(tokens).fill(-1), behaviorVersions: Array(tokens).fill(0), advantage: 1, images: [], imageProcessing: null }],
  });

  it('a step takes batch_size groups; a partial step waits unless flushed', () => {
    const b = new StepBatcher({ groupsPerStep: 2, maxTokensPerStep: 0 });
    b.add(tg('a', 10));
    assert.equal(b.take(), null);
    b.add(tg('b', 10));
    b.add(tg('c', 10));
    assert.deepEqual(b.take()!.map((g) => g.groupId), ['a', 'b']);
    assert.equal(b.take(), null);
    assert.deepEqual(b.take(true)!.map((g) => g.groupId), ['c']);
  });

  it('the token budget closes a step early, never splits a group, and lets an oversized group through alone', () => {
    const b = new StepBatcher({ groupsPerStep: 4, maxTokensPerStep: 25 });
    for (const [id, n] of [['a', 10], ['b', 10], ['c', 10], ['d', 40], ['e', 5]] as const) b.add(tg(id, n));
    assert.deepEqual(b.take()!.map((g) => g.groupId), ['a', 'b']);
    assert.deepEqual(b.take()!.map((g) => g.groupId), ['c']);
    assert.deepEqual(b.take()!.map((g) => g.groupId), ['d']);
    assert.equal(b.take(), null);
  });

  it('step tensors concatenate sequences with cu_seqlens and per-sequence advantages', () => {
    const t = stepTensors([tg('a', 3), tg('b', 4)]);
    assert.deepEqual([...t.cuSeqlens], [0, 3, 7]);
    assert.equal(t.inputIds.length, 7);
    assert.deepEqual([...t.lossMask], [0, 1, 1, 0, 1, 1, 1]);
    assert.equal(t.trainedTokens, 5);
    assert.equal(t.advantages.length, 2);
  });
});

describe('exactly-once offsets', () => {
  it('the resume offset stops at the oldest undecided group, and lists groups decided after it', () => {
    const t = new OffsetTracker();
    for (let o = 0; o < 10; o++) t.read(0, o);
    t.read(1, 4);
    t.decide('g-early', { partition: 0, offset: 1 });
    t.decide('g-late', { partition: 0, offset: 6 });
    const { state, forgotten } = t.snapshot([{ partition: 0, offset: 3 }]);
    assert.deepEqual(state, { '0': { offset: 3, done: [['g-late', 6]] }, '1': { offset: 5, done: [] } });
    assert.deepEqual(forgotten, ['g-early']);
    const resumed = new OffsetTracker(state);
    assert.deepEqual(OffsetTracker.skipSet(state), ['g-late']);
    assert.deepEqual(resumed.snapshot([]).state['0'], { offset: 3, done: [['g-late', 6]] });
  });

  it('with nothing undecided, the resume offset is the read position', () => {
    const t = new OffsetTracker();
    t.read(2, 41);
    t.decide('g', { partition: 2, offset: 30 });
    assert.deepEqual(t.snapshot([]).state, { '2': { offset: 42, done: [] } });
  });
});

describe('choosing where to resume', () => {
  function fakeCheckpoint(root: string, step: number, runId: string, complete = true): string {
    const dir = join(root, `step-${String(step).padStart(8, '0')}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'trainer_state.json'), JSON.stringify({ metadata: { trainer: { format: 'trajstore-trainer', run_id: runId, step, topic: 'trajectories' } } }));
    if (complete) writeFileSync(join(dir, 'MANIFEST.json'), '{}');
    return dir;
  }

  it('a run with checkpoints refuses to start fresh; --resume takes the newest complete one; another run\'s checkpoint is refused', () => {
    const root = mkdtempSync(join(tmpdir(), 'trajstore-choose-'));
    try {
      const config = parseConfig(`model: { name: m }\nrun: { id: r1 }\ncheckpoint: { dir: ${root} }`, 'test', {});
      assert.equal(chooseCheckpoint(config, {}), null, 'no checkpoints: a fresh start');
      fakeCheckpoint(root, 4, 'r1');
      fakeCheckpoint(root, 6, 'r1');
      fakeCheckpoint(root, 8, 'r1', false); // a save the crash interrupted
      assert.throws(() => chooseCheckpoint(config, {}), { code: 'TRAJ_E_TRAINER_RUN_EXISTS' });
      assert.equal(chooseCheckpoint(config, { resume: true })!.step, 6);
      const other = fakeCheckpoint(join(root, 'x'), 2, 'r2');
      assert.throws(() => chooseCheckpoint(config, { resumeFrom: other }), { code: 'TRAJ_E_TRAINER_CHECKPOINT' });
      assert.throws(() => chooseCheckpoint(config, { resumeFrom: join(root, 'step-00000008') }), { code: 'TRAJ_E_TRAINER_CHECKPOINT' });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
