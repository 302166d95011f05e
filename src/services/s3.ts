import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ServiceError } from '../util/errors.js';
import { ensureDisk, ensurePortFree, requireTool } from './preflight.js';
import { commandOutput, isOurProcess, readPid, removeFile, spawnDaemon, stopProcess, tailFile, waitUntil } from './process.js';
import type { LocalService, ServiceStatus } from './types.js';

/**
 * A local S3-compatible object store for `s3://` adapter and blob stores: s3proxy (Apache
 * jclouds' filesystem backend) from Maven Central, so a machine without Docker or network
 * access to AWS can run the S3 code paths for real. It checks AWS signatures (v2 and v4), SHA-256
 * upload checksums and conditional writes (If-None-Match), which the adapter store relies on.
 * Started only on request (`trajstore services up --s3`): the streaming demo does not need it.
 */
export const S3PROXY_VERSION = '4.1.0';

/** Credentials of the local store only; AWS SDK clients read them from the usual environment variables. */
export const LOCAL_S3_CREDENTIALS = { accessKeyId: 'trajstore', secretAccessKey: 'trajstore-local-secret' } as const;

/** The bucket a fresh local store has, so `s3://trajstore/...` works without creating one. */
export const LOCAL_S3_BUCKET = 'trajstore';

export interface S3ServiceOptions {
  home: string;
  cacheDir: string;
  host: string;
  port: number;
  version: string;
  heapMb: number;
}

export class S3Service implements LocalService {
  readonly name = 's3';
  private readonly dir: string;
  private readonly dataDir: string;
  private readonly logFile: string;
  private readonly pidFile: string;
  private readonly configFile: string;

  constructor(private readonly opts: S3ServiceOptions) {
    this.dir = join(opts.home, 's3');
    this.dataDir = join(this.dir, 'data');
    this.logFile = join(this.dir, 'logs', 's3proxy.out');
    this.pidFile = join(this.dir, 's3proxy.pid');
    this.configFile = join(this.dir, 's3proxy.properties');
  }

  /** The endpoint to put in `storage.s3_endpoint` (path-style addressing). */
  get endpoint(): string {
    return `http://${this.opts.host}:${this.opts.port}`;
  }

  private get jar(): string {
    return join(this.opts.cacheDir, `s3proxy-${this.opts.version}`, 's3proxy-jar-with-dependencies.jar');
  }

  async install(log: (line: string) => void): Promise<void> {
    requireTool('java', ['-version'], 'TRAJ_E_SERVICE_JAVA_MISSING', 'install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)');
    if (existsSync(this.jar)) return;
    requireTool('mvn', ['-v'], 'TRAJ_E_SERVICE_MAVEN_MISSING', 'install Maven to fetch s3proxy from Maven Central (Debian: apt-get install maven)');
    ensureDisk(this.name, this.opts.cacheDir);
    log(`s3: fetching s3proxy ${this.opts.version} from Maven Central (first run only)…`);
    const started = Date.now();
    const staging = join(this.opts.cacheDir, `s3proxy-${this.opts.version}.partial-${process.pid}`);
    rmSync(staging, { recursive: true, force: true });
    const mvn = commandOutput('mvn', [
      '-q', '-B', 'org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy',
      `-Dartifact=org.gaul:s3proxy:${this.opts.version}:jar:jar-with-dependencies`, `-DoutputDirectory=${staging}`, '-Dmdep.stripVersion=true',
    ]);
    if (!mvn.ok || !existsSync(join(staging, 's3proxy-jar-with-dependencies.jar'))) {
      throw new ServiceError(this.name, 'TRAJ_E_SERVICE_INSTALL', `Maven could not fetch s3proxy ${this.opts.version}:\n${(mvn.stdout + mvn.stderr).slice(-2000)}`, {
        retriable: true,
        hint: 'check that Maven Central is reachable (mvn -v; ~/.m2/settings.xml mirrors) and retry',
      });
    }
    rmSync(join(this.jar, '..'), { recursive: true, force: true });
    renameSync(staging, join(this.jar, '..')); // atomic: a half-downloaded jar never looks installed
    log(`s3: s3proxy fetched in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  async start(log: (line: string) => void): Promise<boolean> {
    if (this.runningPid() !== undefined) {
      if (await this.healthy()) return false;
      if (await waitUntil(() => this.healthy(), 30_000)) return false;
      throw this.startError('is running but does not answer', 'TRAJ_E_SERVICE_UNHEALTHY');
    }
    removeFile(this.pidFile);
    await ensurePortFree(this.name, this.opts.host, this.opts.port, 'TRAJSTORE_S3_PORT');
    ensureDisk(this.name, this.dir);
    this.writeConfig();
    // jclouds' filesystem backend maps a bucket to a directory: this one exists from the start.
    mkdirSync(join(this.dataDir, LOCAL_S3_BUCKET), { recursive: true });
    log(`s3: starting s3proxy on ${this.endpoint}`);
    spawnDaemon('java', [`-Xmx${this.opts.heapMb}m`, '-XX:+UseSerialGC', '-jar', this.jar, '--properties', this.configFile], {
      logFile: this.logFile, pidFile: this.pidFile, cwd: this.dir,
    });
    const up = await waitUntil(() => this.healthy(), 60_000, () => {
      if (this.runningPid() === undefined) throw this.startError('exited during start-up', 'TRAJ_E_SERVICE_START');
    });
    if (!up) throw this.startError('did not answer within 60 s', 'TRAJ_E_SERVICE_START');
    return true;
  }

  async stop(log: (line: string) => void): Promise<boolean> {
    const pid = this.runningPid();
    removeFile(this.pidFile);
    if (pid === undefined) return false;
    log('s3: stopping');
    await stopProcess(pid, this.configFile, 15_000);
    return true;
  }

  async status(): Promise<ServiceStatus> {
    const pid = this.runningPid();
    const version = existsSync(this.jar) ? this.opts.version : undefined;
    const base = { name: this.name, address: this.endpoint, version, pid, dataDir: this.dataDir, logFile: this.logFile };
    if (pid === undefined) return { ...base, state: 'stopped' };
    return (await this.healthy()) ? { ...base, state: 'running' } : { ...base, state: 'unhealthy', detail: `not answering; see ${this.logFile}` };
  }

  private runningPid(): number | undefined {
    const pid = readPid(this.pidFile);
    return pid !== undefined && isOurProcess(pid, this.configFile) ? pid : undefined;
  }

  /** Any S3 answer counts (an unsigned request gets 403 AccessDenied): the server is up and parsing requests. */
  private async healthy(): Promise<boolean> {
    try {
      const res = await fetch(`${this.endpoint}/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status === 403 || res.ok;
    } catch {
      return false;
    }
  }

  private writeConfig(): void {
    mkdirSync(join(this.dir, 'logs'), { recursive: true });
    writeFileSync(
      this.configFile,
      [
        '# Written by `trajstore services up --s3`; edits are overwritten at the next start.',
        `s3proxy.endpoint=${this.endpoint}`,
        's3proxy.authorization=aws-v2-or-v4',
        `s3proxy.identity=${LOCAL_S3_CREDENTIALS.accessKeyId}`,
        `s3proxy.credential=${LOCAL_S3_CREDENTIALS.secretAccessKey}`,
        'jclouds.provider=filesystem',
        `jclouds.filesystem.basedir=${this.dataDir}`,
        '',
      ].join('\n'),
    );
  }

  private startError(what: string, code: string): ServiceError {
    return new ServiceError(this.name, code, `${what}. Last log lines (${this.logFile}):\n${tailFile(this.logFile)}`, {
      retriable: true,
      hint: `read ${this.logFile}; \`trajstore services down\` then \`up --s3\` retries`,
    });
  }
}
