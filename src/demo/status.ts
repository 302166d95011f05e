/**
 * What the demo reads back from ClickHouse: the live status figures and the final RESULT. Every
 * number comes from the tables the sink writes, so the status view doubles as a check that the
 * whole pipeline (producers → Kafka → sink → ClickHouse) works, not only the trainer.
 */
import type { ClickHouseClient } from '@clickhouse/client';
import { QUERIES } from '../clickhouse/catalog.js';
import { quoteIdentifier } from '../clickhouse/sql.js';

export interface VersionStat {
  version: number;
  /** Train episodes that ended success / failure / timeout (errors and interrupted ones are not the policy's doing). */
  episodes: number;
  successes: number;
  success_rate: number;
  mean_reward: number;
  errors: number;
}

export interface Snapshot {
  atMs: number;
  events: number;
  versionsPublished: number;
  newestVersion: number | null;
  trainerSteps: number;
  groupsTrained: number;
  versions: VersionStat[];
}

export class DemoReader {
  private readonly db: string;

  constructor(private readonly client: ClickHouseClient, private readonly database: string, private readonly runId: string) {
    this.db = quoteIdentifier(database);
  }

  private async rows<T>(query: string): Promise<T[]> {
    const result = await this.client.query({ query, format: 'JSONEachRow' });
    return (await result.json()) as T[];
  }

  /** The database exists once the sink has migrated it; before that every figure is zero. */
  async ready(): Promise<boolean> {
    const rows = await this.rows<{ n: string }>(QUERIES.demoReady.sql(this.db, { database: this.database }));
    return Number(rows[0]?.n ?? 0) > 0;
  }

  async snapshot(): Promise<Snapshot> {
    const atMs = Date.now();
    if (!(await this.ready())) return { atMs, events: 0, versionsPublished: 0, newestVersion: null, trainerSteps: 0, groupsTrained: 0, versions: [] };
    const [events, versions, steps, perVersion] = await Promise.all([
      this.rows<{ n: string }>(QUERIES.demoEvents.sql(this.db, { runId: this.runId })),
      this.rows<{ n: string; v: string }>(QUERIES.demoVersions.sql(this.db, { runId: this.runId })),
      this.rows<{ steps: string; groups: string }>(QUERIES.demoSteps.sql(this.db, { runId: this.runId })),
      this.perVersion(),
    ]);
    const published = Number(versions[0]?.n ?? 0);
    return {
      atMs,
      events: Number(events[0]?.n ?? 0),
      versionsPublished: published,
      newestVersion: published > 0 ? Number(versions[0]!.v) : null,
      trainerSteps: Number(steps[0]?.steps ?? 0),
      groupsTrained: Number(steps[0]?.groups ?? 0),
      versions: perVersion,
    };
  }

  /** Success rate per policy version over train episodes, read from the episode_summary view. */
  async perVersion(): Promise<VersionStat[]> {
    const rows = await this.rows<Record<string, string | number>>(QUERIES.demoPerVersion.sql(this.db, { runId: this.runId }));
    return rows.map((r) => {
      const episodes = Number(r.episodes);
      const successes = Number(r.successes);
      return {
        version: Number(r.version), episodes, successes,
        success_rate: episodes > 0 ? round(successes / episodes) : 0,
        mean_reward: round(Number.isFinite(Number(r.mean_reward)) ? Number(r.mean_reward) : 0),
        errors: Number(r.errors),
      };
    });
  }
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/**
 * The first and last versions that were measured on enough episodes to mean something: the
 * newest version often has only a handful of episodes when the run stops.
 */
export function firstAndLast(versions: VersionStat[], minEpisodes: number): { first?: VersionStat; last?: VersionStat } {
  const measured = versions.filter((v) => v.episodes >= minEpisodes);
  return { first: measured[0], last: measured[measured.length - 1] };
}

/** Success over the newest versions that together hold at least `minEpisodes` episodes. */
export function recentSuccess(versions: VersionStat[], minEpisodes: number): { fromVersion: number; toVersion: number; episodes: number; rate: number } | undefined {
  let episodes = 0;
  let successes = 0;
  for (let i = versions.length - 1; i >= 0; i--) {
    episodes += versions[i]!.episodes;
    successes += versions[i]!.successes;
    if (episodes >= minEpisodes) return { fromVersion: versions[i]!.version, toVersion: versions[versions.length - 1]!.version, episodes, rate: round(successes / episodes) };
  }
  return undefined;
}
