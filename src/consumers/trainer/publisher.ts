/**
 * Publishing a version: the adapter is already immutable in the store; this loads it on every
 * policy server under `<run>-v<N>` (vLLM's POST /v1/load_lora_adapter), unloads versions beyond
 * the window, so a server's --max-loras is never exceeded, and then writes the `policy.versions`
 * event. Servers first: producers switch to a version as soon as its event arrives, and a server
 * that had not loaded it yet would answer 404 and fail their episodes. A crash between the loads
 * and the event is repaired on resume (`TrainerCore.republishAfterResume`). A server that cannot
 * be reached is marked behind and catches up on the newest version (only that one) whenever
 * `catchUp` runs: after every step and on the trainer's idle timer. Producers follow
 * `policy.versions` and switch for new episodes.
 */
import type { Producer } from 'kafkajs';
import { PolicyApiError, policyApi, type PolicyApi } from '../../inference/vllm-api.js';
import { encodePolicyVersion, type PolicyVersion } from '../../schemas/index.js';
import type { Logger } from '../../util/logger.js';
import type { StoredAdapter } from './adapter-store.js';

export interface PublisherOptions {
  runId: string;
  baseModel: string;
  apiBases: string[];
  /** Adapter versions kept loaded per server (inference.max_loaded_adapters). */
  window: number;
  topic: string;
  producer: Producer;
  logger: Logger;
  requestTimeoutMs: number;
}

export interface PublishedVersion {
  adapter: StoredAdapter;
  step: number;
  parentVersion: number | null;
  checkpointUri: string | null;
  metrics: Record<string, number>;
}

interface ServerState {
  api: PolicyApi;
  /** Versions this trainer loaded there, oldest first. */
  loaded: number[];
  /** True until the server has the newest version. */
  behind: boolean;
}

export function adapterName(runId: string, version: number): string {
  return `${runId}-v${version}`;
}

export class VersionPublisher {
  private readonly servers: ServerState[];
  private latest: StoredAdapter | null = null;

  constructor(private readonly opts: PublisherOptions) {
    this.servers = opts.apiBases.map((base) => ({ api: policyApi(base, { timeoutMs: opts.requestTimeoutMs }), loaded: [], behind: false }));
  }

  /** The servers first, then the version event (see the module comment); returns per-server load times. */
  async publish(v: PublishedVersion): Promise<{ event: PolicyVersion; loadMs: Array<number | null> }> {
    const event: PolicyVersion = {
      run_id: this.opts.runId,
      version: v.adapter.version,
      parent_version: v.parentVersion,
      base_model: this.opts.baseModel,
      served_model_name: adapterName(this.opts.runId, v.adapter.version),
      adapter_uri: v.adapter.uri,
      adapter_checksum: v.adapter.checksum,
      checkpoint_uri: v.checkpointUri,
      training_step: v.step,
      metrics: v.metrics,
      created_at: Date.now(),
    };
    this.latest = v.adapter;
    for (const s of this.servers) s.behind = true;
    const loadMs = await Promise.all(this.servers.map((s) => this.bringUpToDate(s)));
    await this.opts.producer.send({
      topic: this.opts.topic,
      messages: [{ key: `${this.opts.runId}/${v.adapter.version}`, value: encodePolicyVersion(event) }],
    });
    return { event, loadMs };
  }

  /** Retries servers that missed the newest version. Cheap when none did. */
  async catchUp(): Promise<void> {
    await Promise.all(this.servers.filter((s) => s.behind).map((s) => this.bringUpToDate(s)));
  }

  /** Tells the publisher which version is newest after a resume, so lagging servers get it. */
  setLatest(adapter: StoredAdapter): void {
    this.latest = adapter;
    for (const s of this.servers) s.behind = true;
  }

  get behindCount(): number {
    return this.servers.filter((s) => s.behind).length;
  }

  /** Loads the newest version on one server and unloads older ones past the window; ms, or null when it failed. */
  private async bringUpToDate(s: ServerState): Promise<number | null> {
    const latest = this.latest;
    if (!latest) return null;
    const name = adapterName(this.opts.runId, latest.version);
    const t0 = performance.now();
    try {
      await this.load(s.api, name, latest.dir);
      if (!s.loaded.includes(latest.version)) s.loaded.push(latest.version);
      s.behind = false;
      const ms = performance.now() - t0;
      await this.unloadBeyondWindow(s);
      return ms;
    } catch (err) {
      this.opts.logger.warn({ server: s.api.baseUrl, version: latest.version, err: String(err) },
        'policy server did not take the new adapter; it will catch up on the newest version when it answers');
      return null;
    }
  }

  private async load(api: PolicyApi, name: string, dir: string): Promise<void> {
    try {
      await api.loadAdapter(name, dir);
    } catch (err) {
      // vLLM answers 400 "has already been loaded" to a repeated load: the adapter is there.
      if (err instanceof PolicyApiError && err.status === 400 && /already been loaded/i.test(err.message)) return;
      throw err;
    }
  }

  /**
   * Unloads this run's versions outside the newest `window`: the ones this trainer loaded, and
   * (after a restart, when it does not know them) the ones the server lists.
   */
  private async unloadBeyondWindow(s: ServerState): Promise<void> {
    const newest = this.latest!.version;
    const keep = (v: number) => v > newest - this.opts.window;
    const listed = await s.api.models().catch(() => []);
    const prefix = `${this.opts.runId}-v`;
    const onServer = listed
      .map((m) => m.id)
      .filter((id) => id.startsWith(prefix) && /^\d+$/.test(id.slice(prefix.length)))
      .map((id) => Number(id.slice(prefix.length)));
    const stale = [...new Set([...s.loaded, ...onServer])].filter((v) => !keep(v));
    for (const v of stale) {
      try {
        await s.api.unloadAdapter(adapterName(this.opts.runId, v));
      } catch (err) {
        if (!(err instanceof PolicyApiError && err.status === 404)) {
          this.opts.logger.warn({ server: s.api.baseUrl, version: v, err: String(err) }, 'could not unload an old adapter version');
          continue;
        }
      }
      s.loaded = s.loaded.filter((x) => x !== v);
    }
  }
}
