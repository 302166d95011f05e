import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { ServiceError } from '../util/errors.js';
import { projectRoot } from './paths.js';
import { ensureDisk, ensurePortFree, requireTool } from './preflight.js';
import { commandOutput, isOurProcess, readPid, removeFile, spawnDaemon, stopProcess, tailFile, waitUntil } from './process.js';
import type { LocalService, ServiceStatus } from './types.js';

/**
 * Apache Kafka 4.3.0: the newest release on Maven Central, checked against kafkajs 2.2.4 (admin,
 * idempotent producer, consumer groups, transactions). Kafka 4 removed the old protocol versions
 * (KIP-896), but every request version kafkajs sends is still served.
 */
export const KAFKA_VERSION = '4.3.0';

export interface KafkaOptions {
  home: string;
  cacheDir: string;
  host: string;
  port: number;
  controllerPort: number;
  version: string;
  heapMb: number;
}

export class KafkaService implements LocalService {
  readonly name = 'kafka';
  private readonly dir: string;
  private readonly dataDir: string;
  private readonly logFile: string;
  private readonly pidFile: string;
  private readonly configFile: string;

  constructor(private readonly opts: KafkaOptions) {
    this.dir = join(opts.home, 'kafka');
    this.dataDir = join(this.dir, 'data');
    this.logFile = join(this.dir, 'logs', 'kafka.out');
    this.pidFile = join(this.dir, 'kafka.pid');
    this.configFile = join(this.dir, 'server.properties');
  }

  get address(): string {
    return `${this.opts.host}:${this.opts.port}`;
  }

  private get libsDir(): string {
    return join(this.opts.cacheDir, `kafka-${this.opts.version}`, 'libs');
  }

  async install(log: (line: string) => void): Promise<void> {
    requireTool('java', ['-version'], 'TRAJ_E_SERVICE_JAVA_MISSING', 'install Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)');
    if (existsSync(join(this.libsDir, '.complete'))) return;
    requireTool('mvn', ['-v'], 'TRAJ_E_SERVICE_MAVEN_MISSING', 'install Maven to fetch Kafka from Maven Central (Debian: apt-get install maven)');
    ensureDisk(this.name, this.opts.cacheDir);
    log(`kafka: resolving Apache Kafka ${this.opts.version} jars from Maven Central (first run only)…`);
    const started = Date.now();
    const staging = `${this.libsDir}.partial-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    const mvn = commandOutput('mvn', [
      '-q', '-B', '-f', join(projectRoot(), 'infra', 'kafka', 'pom.xml'),
      `-Dkafka.version=${this.opts.version}`, 'dependency:copy-dependencies', `-DoutputDirectory=${staging}`, '-DincludeScope=runtime',
    ]);
    if (!mvn.ok) {
      throw new ServiceError(this.name, 'TRAJ_E_SERVICE_INSTALL', `Maven could not resolve Kafka ${this.opts.version}:\n${(mvn.stdout + mvn.stderr).slice(-2000)}`, {
        retriable: true,
        hint: 'check that Maven Central is reachable (mvn -v; ~/.m2/settings.xml mirrors) and retry',
      });
    }
    writeFileSync(join(staging, '.complete'), `${new Date().toISOString()}\n`);
    rmSync(this.libsDir, { recursive: true, force: true });
    mkdirSync(join(this.libsDir, '..'), { recursive: true });
    renameSync(staging, this.libsDir); // atomic: a half-downloaded set never looks complete
    log(`kafka: ${readdirSync(this.libsDir).length - 1} jars in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }

  async start(log: (line: string) => void): Promise<boolean> {
    if (this.runningPid() !== undefined) {
      if (await this.healthy()) return false;
      log('kafka: process found but not answering; waiting for it');
      if (await waitUntil(() => this.healthy(), 60_000)) return false;
      throw this.startError('is running but does not answer', 'TRAJ_E_SERVICE_UNHEALTHY', 'run `trajstore services down` then `up` again');
    }
    removeFile(this.pidFile);
    for (const port of [this.opts.port, this.opts.controllerPort]) await ensurePortFree(this.name, this.opts.host, port, 'TRAJSTORE_KAFKA_PORT / TRAJSTORE_KAFKA_CONTROLLER_PORT');
    ensureDisk(this.name, this.dir);
    this.writeConfig();
    if (!existsSync(join(this.dataDir, 'meta.properties'))) this.formatStorage(log);
    log(`kafka: starting on ${this.address}`);
    spawnDaemon('java', this.jvmArgs('kafka.Kafka', this.configFile), { logFile: this.logFile, pidFile: this.pidFile, cwd: this.dir });
    const up = await waitUntil(() => this.healthy(), 90_000, () => {
      if (this.runningPid() === undefined) throw this.startError('exited during start-up', 'TRAJ_E_SERVICE_START');
    });
    if (!up) throw this.startError('did not answer within 90 s', 'TRAJ_E_SERVICE_START');
    await this.warmGroupCoordinator();
    return true;
  }

  async stop(log: (line: string) => void): Promise<boolean> {
    const pid = this.runningPid();
    removeFile(this.pidFile);
    if (pid === undefined) return false;
    log('kafka: stopping');
    const how = await stopProcess(pid, this.configFile, 30_000);
    if (how === 'killed') log('kafka: did not stop within 30 s; killed');
    return true;
  }

  async status(): Promise<ServiceStatus> {
    const pid = this.runningPid();
    const base = { name: this.name, address: this.address, version: this.installedVersion(), pid, dataDir: this.dataDir, logFile: this.logFile };
    if (pid === undefined) return { ...base, state: 'stopped' };
    return (await this.healthy()) ? { ...base, state: 'running' } : { ...base, state: 'unhealthy', detail: `not answering; see ${this.logFile}` };
  }

  private runningPid(): number | undefined {
    const pid = readPid(this.pidFile);
    return pid !== undefined && isOurProcess(pid, this.configFile) ? pid : undefined;
  }

  private installedVersion(): string | undefined {
    return existsSync(join(this.libsDir, '.complete')) ? this.opts.version : undefined;
  }

  private client(): Kafka {
    return new Kafka({ clientId: 'trajstore-services', brokers: [this.address], logLevel: logLevel.NOTHING, connectionTimeout: 1000, retry: { retries: 0 } });
  }

  private async healthy(): Promise<boolean> {
    const admin = this.client().admin();
    try {
      await admin.connect();
      const cluster = await admin.describeCluster();
      return cluster.brokers.length > 0 && cluster.controller !== null;
    } catch {
      return false;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  /**
   * The first consumer group on a fresh broker waits for `__consumer_offsets` to be created and
   * loaded; doing that here keeps the wait out of every user's (and test's) first consume.
   */
  private async warmGroupCoordinator(): Promise<void> {
    const kafka = new Kafka({ clientId: 'trajstore-services', brokers: [this.address], logLevel: logLevel.NOTHING, retry: { retries: 10, initialRetryTime: 200 } });
    const admin = kafka.admin();
    try {
      await admin.connect();
      await admin.describeGroups(['trajstore.services.warmup']);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  private writeConfig(): void {
    mkdirSync(join(this.dir, 'logs'), { recursive: true });
    const { host, port, controllerPort } = this.opts;
    writeFileSync(
      this.configFile,
      [
        '# Written by `trajstore services up`; edits are overwritten at the next start.',
        'process.roles=broker,controller',
        'node.id=1',
        `controller.quorum.voters=1@${host}:${controllerPort}`,
        `listeners=PLAINTEXT://${host}:${port},CONTROLLER://${host}:${controllerPort}`,
        `advertised.listeners=PLAINTEXT://${host}:${port}`,
        'controller.listener.names=CONTROLLER',
        'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
        'inter.broker.listener.name=PLAINTEXT',
        `log.dirs=${this.dataDir}`,
        'num.partitions=1',
        // Single node: internal topics cannot have more replicas than brokers.
        'offsets.topic.replication.factor=1',
        'offsets.topic.num.partitions=4',
        'transaction.state.log.replication.factor=1',
        'transaction.state.log.min.isr=1',
        'share.coordinator.state.topic.replication.factor=1',
        'share.coordinator.state.topic.min.isr=1',
        // Tests create and delete many short-lived groups; no 3 s wait for members to join.
        'group.initial.rebalance.delay.ms=0',
        'auto.create.topics.enable=false',
        'delete.topic.enable=true',
        'log.retention.hours=-1',
        '',
      ].join('\n'),
    );
    writeFileSync(
      join(this.dir, 'log4j2.properties'),
      [
        'rootLogger.level=WARN',
        'rootLogger.appenderRef.stdout.ref=STDOUT',
        'appender.stdout.type=Console',
        'appender.stdout.name=STDOUT',
        'appender.stdout.layout.type=PatternLayout',
        'appender.stdout.layout.pattern=[%d] %p %m (%c)%n',
        'logger.kafka.name=kafka',
        'logger.kafka.level=INFO',
        'logger.server.name=kafka.server.KafkaRaftServer',
        'logger.server.level=INFO',
        '',
      ].join('\n'),
    );
  }

  private formatStorage(log: (line: string) => void): void {
    log('kafka: formatting KRaft storage (first start)');
    const result = commandOutput('java', this.jvmArgs('kafka.tools.StorageTool', 'format', '-t', randomUUID().replace(/-/g, '').slice(0, 22), '-c', this.configFile));
    if (!result.ok) throw new ServiceError(this.name, 'TRAJ_E_SERVICE_START', `formatting storage failed:\n${(result.stdout + result.stderr).slice(-2000)}`);
  }

  /**
   * The command line that runs one of Kafka's own tools (e.g. `org.apache.kafka.tools.ProducerPerformance`,
   * `org.apache.kafka.tools.ConsumerPerformance`) from the installed jars: benchmarks compare against them.
   */
  toolCommand(mainClass: string, args: string[]): { command: string; args: string[] } {
    return { command: 'java', args: this.jvmArgs(mainClass, ...args) };
  }

  private jvmArgs(mainClass: string, ...args: string[]): string[] {
    return [
      `-Xms256m`, `-Xmx${this.opts.heapMb}m`, '-XX:+UseG1GC', '-XX:MaxGCPauseMillis=20', '-Djava.awt.headless=true',
      `-Dlog4j2.configurationFile=${join(this.dir, 'log4j2.properties')}`, `-Dkafka.logs.dir=${join(this.dir, 'logs')}`,
      '-cp', `${this.libsDir}/*`, mainClass, ...args,
    ];
  }

  private startError(what: string, code: string, hint?: string): ServiceError {
    const logTail = tailFile(this.logFile);
    const diskFull = /No space left on device/i.test(logTail);
    return new ServiceError(this.name, diskFull ? 'TRAJ_E_SERVICE_DISK_FULL' : code, `${what}. Last log lines (${this.logFile}):\n${logTail}`, {
      retriable: !diskFull,
      hint: diskFull ? `free disk space under ${this.dir}` : hint ?? `read ${this.logFile}; \`trajstore services down\` then \`up\` retries from scratch`,
    });
  }
}
