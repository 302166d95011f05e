/**
 * Group assembly: folds the trajectory topic's events into complete GRPO groups.
 *
 * Events of a group share a key (group_id), so they arrive in order in one partition; the
 * assembler needs no cross-partition join. A group is complete when its GroupCompleted arrives.
 * Memory is bounded twice: a group whose producer went silent is closed after `timeoutMs`
 * (counted, never waited on forever), and at most `maxOpenGroups` groups are held (the least
 * recently active one is evicted, counted). Late events of a closed group, events of groups
 * whose GroupStarted this trainer never saw (they began before the resume offset and were
 * already decided), and redelivered duplicates are ignored and counted.
 */
import type { TrajectoryEvent } from '../../schemas/index.js';
import type { AssembledEpisode, AssembledGroup, LogPosition } from './types.js';

export interface AssemblerOptions {
  /** Only events of this run are assembled (others are counted as `other_run`). */
  runId: string;
  timeoutMs: number;
  maxOpenGroups: number;
  /** Group ids already decided (trained or dropped) before the resume offset was taken. */
  skip?: Iterable<string>;
}

export interface AssemblerCounters {
  events: number;
  other_run: number;
  orphan_events: number;
  late_events: number;
  duplicate_events: number;
  skipped_groups: number;
}

interface OpenGroup {
  group: AssembledGroup;
  episodes: Map<string, AssembledEpisode>;
  /** `${episode_id}:${seq}` (or `:${seq}` for group-level events) already applied: redeliveries are dropped. */
  seen: Set<string>;
  lastWallMs: number;
}

export class GroupAssembler {
  readonly counters: AssemblerCounters = { events: 0, other_run: 0, orphan_events: 0, late_events: 0, duplicate_events: 0, skipped_groups: 0 };
  private readonly open = new Map<string, OpenGroup>();
  /** Groups closed (or skipped) here whose late events must be ignored; pruned by `forget`. */
  private readonly closed = new Set<string>();
  private readonly skip: Set<string>;

  constructor(private readonly opts: AssemblerOptions) {
    this.skip = new Set(opts.skip ?? []);
  }

  get openCount(): number {
    return this.open.size;
  }

  /**
   * Applies one event. Returns the group when this event completed it, and any group evicted
   * to stay within `maxOpenGroups` (closed as `timeout`-like, reason 'evicted').
   */
  accept(event: TrajectoryEvent, pos: LogPosition, wallMs: number): { completed?: AssembledGroup; evicted?: AssembledGroup } {
    this.counters.events++;
    if (event.run_id !== this.opts.runId) {
      this.counters.other_run++;
      return {};
    }
    const gid = event.group_id;
    const payload = event.payload;
    let open = this.open.get(gid);
    if (!open) {
      if (this.closed.has(gid)) {
        this.counters.late_events++;
        return {};
      }
      if (!('GroupStarted' in payload)) {
        this.counters.orphan_events++;
        return {};
      }
      if (this.skip.has(gid)) {
        // Decided before the checkpoint; its events are re-read because an older group was still open.
        this.skip.delete(gid);
        this.closed.add(gid);
        this.counters.skipped_groups++;
        return {};
      }
      const gs = payload.GroupStarted;
      open = {
        group: {
          groupId: gid,
          runId: event.run_id,
          purpose: event.purpose,
          taskId: gs.task.task_id,
          groupSize: gs.group_size,
          first: pos,
          episodes: [],
          closedBy: 'partial',
          lastEventTs: event.timestamp,
        },
        episodes: new Map(),
        seen: new Set(),
        lastWallMs: wallMs,
      };
      const evicted = this.open.size >= this.opts.maxOpenGroups ? this.evictOldest() : undefined;
      this.open.set(gid, open);
      this.applyOnce(open, event);
      return evicted ? { evicted } : {};
    }
    open.lastWallMs = wallMs;
    // Re-insert so the Map's order is least-recently-active first (eviction and expiry scan it).
    this.open.delete(gid);
    this.open.set(gid, open);
    const done = this.applyOnce(open, event);
    if (!done) return {};
    this.open.delete(gid);
    this.closed.add(gid);
    return { completed: open.group };
  }

  /** Closes groups silent for longer than the timeout: by wall clock (streaming) or by log time (replay). */
  expire(now: { wallMs?: number; logMs?: number }): AssembledGroup[] {
    const out: AssembledGroup[] = [];
    for (const [gid, open] of this.open) {
      const silentWall = now.wallMs !== undefined && now.wallMs - open.lastWallMs > this.opts.timeoutMs;
      const silentLog = now.logMs !== undefined && now.logMs - open.group.lastEventTs > this.opts.timeoutMs;
      if (!silentWall && !silentLog) continue;
      out.push(this.closeAsTimeout(gid, open));
    }
    return out;
  }

  /**
   * Replay: closes groups silent past the timeout by log time, least recently active first,
   * stopping at the first group still live. Cheap enough to run after every event, so which
   * groups time out depends only on the order of the log, never on how fetches were batched.
   */
  expireByLogTime(logMs: number): AssembledGroup[] {
    const out: AssembledGroup[] = [];
    for (const [gid, open] of this.open) {
      if (logMs - open.group.lastEventTs <= this.opts.timeoutMs) break;
      out.push(this.closeAsTimeout(gid, open));
    }
    return out;
  }

  /** Closes every open group (end of a replay range). */
  closeAll(): AssembledGroup[] {
    return this.expire({ logMs: Number.POSITIVE_INFINITY });
  }

  /** First offsets of open groups in a partition: the resume offset may not pass them. */
  openFirstOffsets(): LogPosition[] {
    return [...this.open.values()].map((o) => o.group.first);
  }

  /** Stops remembering closed groups (bounded memory); their late events then count as orphans. */
  forget(groupIds: Iterable<string>): void {
    for (const g of groupIds) this.closed.delete(g);
  }

  private evictOldest(): AssembledGroup | undefined {
    const first = this.open.entries().next();
    if (first.done) return undefined;
    const [gid, open] = first.value;
    return this.closeAsTimeout(gid, open);
  }

  /** Closes an open group its producer did not complete (silent or evicted); its late events will be ignored. */
  private closeAsTimeout(gid: string, open: OpenGroup): AssembledGroup {
    open.group.closedBy = 'timeout';
    this.open.delete(gid);
    this.closed.add(gid);
    return open.group;
  }

  /** Applies an event unless it is a redelivery; true when it completes the group. */
  private applyOnce(open: OpenGroup, event: TrajectoryEvent): boolean {
    const key = `${event.episode_id ?? ''}:${event.seq}`;
    if (open.seen.has(key)) {
      this.counters.duplicate_events++;
      return false;
    }
    open.seen.add(key);
    const g = open.group;
    g.lastEventTs = Math.max(g.lastEventTs, event.timestamp);
    const p = event.payload;
    if ('GroupCompleted' in p) {
      g.closedBy = p.GroupCompleted.status;
      return true;
    }
    if ('GroupStarted' in p || event.episode_id === null) return false;
    let ep = open.episodes.get(event.episode_id);
    if (!ep) {
      ep = { episodeId: event.episode_id, index: g.episodes.length, turns: [], reward: 0, rewardCount: 0, status: null };
      open.episodes.set(event.episode_id, ep);
      g.episodes.push(ep);
    }
    if ('EpisodeStarted' in p) {
      ep.index = p.EpisodeStarted.episode_index;
    } else if ('Turn' in p) {
      const t = p.Turn;
      ep.turns.push({
        turnIndex: t.turn_index,
        promptTokenIds: t.prompt_token_ids,
        completionTokenIds: t.completion_token_ids,
        completionLogprobs: t.completion_logprobs,
        tokenPolicyVersions: t.token_policy_versions,
        policyVersion: event.policy_version,
        promptImages: t.prompt_images,
        imageProcessing: t.image_processing,
      });
    } else if ('Reward' in p) {
      if (p.Reward.turn_index === null) {
        ep.reward += p.Reward.value;
        ep.rewardCount++;
      }
    } else if ('EpisodeFinished' in p) {
      ep.status = p.EpisodeFinished.status;
    }
    return false;
  }
}
