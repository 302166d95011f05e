import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QUERIES } from '../clickhouse/catalog.js';
import { ServiceError } from '../util/errors.js';
import { ensureDisk, ensurePortFree } from './preflight.js';
import { commandOutput, isOurProcess, readPid, removeFile, spawnDaemon, stopProcess, tailFile, waitUntil } from './process.js';
import type { LocalService, ServiceStatus } from './types.js';

/**
 * ClickHouse from Debian's `clickhouse-server` package (18.16 on bookworm), run with this
 * project's own config so its data, logs and ports stay under the service home.
 */
export interface ClickHouseOptions {
  home: string;
  host: string;
  httpPort: number;
  tcpPort: number;
}

const SERVER_BINARY = '/usr/sbin/clickhouse-server';

export class ClickHouseService implements LocalService {
  readonly name = 'clickhouse';
  private readonly dir: string;
  private readonly dataDir: string;
  private readonly logFile: string;
  private readonly pidFile: string;
  private readonly configFile: string;

  constructor(private readonly opts: ClickHouseOptions) {
    this.dir = join(opts.home, 'clickhouse');
    this.dataDir = join(this.dir, 'data');
    this.logFile = join(this.dir, 'logs', 'clickhouse-server.log');
    this.pidFile = join(this.dir, 'clickhouse.pid');
    this.configFile = join(this.dir, 'config.xml');
  }

  get url(): string {
    return `http://${this.opts.host}:${this.opts.httpPort}`;
  }

  async install(log: (line: string) => void): Promise<void> {
    if (serverInstalled()) return;
    if (process.getuid?.() !== 0) {
      throw new ServiceError(this.name, 'TRAJ_E_SERVICE_CLICKHOUSE_MISSING', 'clickhouse-server is not installed', {
        hint: 'install it: sudo apt-get install -y clickhouse-server clickhouse-client (then run `trajstore services up` again)',
      });
    }
    log('clickhouse: installing Debian package clickhouse-server (first run only)…');
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    let apt = commandOutput('apt-get', ['install', '-y', '-q', 'clickhouse-server', 'clickhouse-client'], env);
    if (!apt.ok) {
      commandOutput('apt-get', ['update', '-q'], env);
      apt = commandOutput('apt-get', ['install', '-y', '-q', 'clickhouse-server', 'clickhouse-client'], env);
    }
    if (!apt.ok || !serverInstalled()) {
      throw new ServiceError(this.name, 'TRAJ_E_SERVICE_INSTALL', `apt-get could not install clickhouse-server:\n${apt.stderr.slice(-1500)}`, {
        retriable: true,
        hint: 'run `apt-get update && apt-get install -y clickhouse-server` by hand and read its error',
      });
    }
  }

  async start(log: (line: string) => void): Promise<boolean> {
    if (this.runningPid() !== undefined) {
      if (await waitUntil(() => this.healthy(), 30_000)) return false;
      throw this.startError('is running but does not answer', 'TRAJ_E_SERVICE_UNHEALTHY', 'run `trajstore services down` then `up` again');
    }
    removeFile(this.pidFile);
    for (const port of [this.opts.httpPort, this.opts.tcpPort]) await ensurePortFree(this.name, this.opts.host, port, 'TRAJSTORE_CLICKHOUSE_HTTP_PORT / TRAJSTORE_CLICKHOUSE_TCP_PORT');
    ensureDisk(this.name, this.dir);
    this.writeConfig();
    log(`clickhouse: starting on ${this.url}`);
    // The server writes its own pid file; ours records the process we spawned, which is the server.
    spawnDaemon(SERVER_BINARY, [`--config-file=${this.configFile}`], { logFile: join(this.dir, 'logs', 'stdout.log'), pidFile: this.pidFile, cwd: this.dir });
    // Usually up in seconds; a cold page cache after a machine's boot once took over 60 s.
    const up = await waitUntil(() => this.healthy(), 180_000, () => {
      if (this.runningPid() === undefined) throw this.startError('exited during start-up', 'TRAJ_E_SERVICE_START');
    });
    if (!up) throw this.startError('did not answer within 180 s', 'TRAJ_E_SERVICE_START');
    return true;
  }

  async stop(log: (line: string) => void): Promise<boolean> {
    const pid = this.runningPid();
    removeFile(this.pidFile);
    if (pid === undefined) return false;
    log('clickhouse: stopping');
    const how = await stopProcess(pid, this.configFile, 20_000);
    if (how === 'killed') log('clickhouse: did not stop within 20 s; killed');
    return true;
  }

  async status(): Promise<ServiceStatus> {
    const pid = this.runningPid();
    const base = { name: this.name, address: this.url, pid, dataDir: this.dataDir, logFile: this.logFile };
    if (pid === undefined) return { ...base, state: 'stopped', version: installedVersion() };
    const version = await this.serverVersion();
    return version ? { ...base, state: 'running', version } : { ...base, state: 'unhealthy', version: installedVersion(), detail: `not answering; see ${this.logFile}` };
  }

  private runningPid(): number | undefined {
    const pid = readPid(this.pidFile);
    return pid !== undefined && isOurProcess(pid, this.configFile) ? pid : undefined;
  }

  private async healthy(): Promise<boolean> {
    const response = await fetch(`${this.url}/ping`, { signal: AbortSignal.timeout(1000) });
    return response.ok && (await response.text()).startsWith('Ok.');
  }

  private async serverVersion(): Promise<string | undefined> {
    try {
      const response = await fetch(`${this.url}/?query=${encodeURIComponent(QUERIES.serverVersion.sql('', {}))}`, { signal: AbortSignal.timeout(2000) });
      return response.ok ? (await response.text()).trim() : undefined;
    } catch {
      return undefined;
    }
  }

  private writeConfig(): void {
    for (const sub of ['data', 'tmp', 'user_files', 'format_schemas', 'logs']) mkdirSync(join(this.dir, sub), { recursive: true });
    const { host, httpPort, tcpPort } = this.opts;
    // 18.16 reads <yandex> as the root element; current releases still accept it.
    writeFileSync(
      this.configFile,
      `<?xml version="1.0"?>
<!-- Written by \`trajstore services up\`; edits are overwritten at the next start. -->
<yandex>
  <logger>
    <level>warning</level>
    <log>${this.logFile}</log>
    <errorlog>${join(this.dir, 'logs', 'clickhouse-server.err.log')}</errorlog>
    <size>100M</size>
    <count>2</count>
  </logger>
  <http_port>${httpPort}</http_port>
  <tcp_port>${tcpPort}</tcp_port>
  <listen_host>${host}</listen_host>
  <max_connections>256</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>64</max_concurrent_queries>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <mark_cache_size>268435456</mark_cache_size>
  <path>${this.dataDir}/</path>
  <tmp_path>${join(this.dir, 'tmp')}/</tmp_path>
  <user_files_path>${join(this.dir, 'user_files')}/</user_files_path>
  <format_schema_path>${join(this.dir, 'format_schemas')}/</format_schema_path>
  <users_config>${join(this.dir, 'users.xml')}</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
`,
    );
    writeFileSync(
      join(this.dir, 'users.xml'),
      `<?xml version="1.0"?>
<!-- Local development: one passwordless user, reachable from loopback only. -->
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval>
    </default>
  </quotas>
</yandex>
`,
    );
  }

  private startError(what: string, code: string, hint?: string): ServiceError {
    const errLog = join(this.dir, 'logs', 'clickhouse-server.err.log');
    const logTail = `${tailFile(join(this.dir, 'logs', 'stdout.log'), 5)}\n${tailFile(errLog, 10)}`;
    const diskFull = /No space left on device|Not enough space/i.test(logTail);
    return new ServiceError(this.name, diskFull ? 'TRAJ_E_SERVICE_DISK_FULL' : code, `${what}. Last log lines (${errLog}):\n${logTail}`, {
      retriable: !diskFull,
      hint: diskFull ? `free disk space under ${this.dir}` : hint ?? `read ${errLog}; \`trajstore services down\` then \`up\` retries`,
    });
  }
}

function serverInstalled(): boolean {
  return existsSync(SERVER_BINARY);
}

function installedVersion(): string | undefined {
  const out = commandOutput('dpkg-query', ['-W', '-f=${Version}', 'clickhouse-server']);
  return out.ok ? out.stdout.split('+')[0] : undefined;
}
