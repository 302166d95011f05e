import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import { ConfigError } from '../util/errors.js';
import { ClickHouseService } from './clickhouse.js';
import { KAFKA_VERSION, KafkaService } from './kafka.js';
import { defaultCacheDir, defaultHome } from './paths.js';
import { S3PROXY_VERSION, S3Service } from './s3.js';
import type { LocalService, ServiceStatus } from './types.js';

export interface ServicesOptions {
  home: string;
  cacheDir: string;
  host: string;
  kafkaPort: number;
  kafkaControllerPort: number;
  kafkaVersion: string;
  kafkaHeapMb: number;
  clickhouseHttpPort: number;
  clickhouseTcpPort: number;
  s3Port: number;
}

/** Settings of the local services, from the environment (documented in the README). */
export function servicesOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): ServicesOptions {
  return {
    home: defaultHome(env),
    cacheDir: defaultCacheDir(env),
    host: env.TRAJSTORE_SERVICES_HOST ?? '127.0.0.1',
    kafkaPort: portFromEnv(env, 'TRAJSTORE_KAFKA_PORT', 9092),
    kafkaControllerPort: portFromEnv(env, 'TRAJSTORE_KAFKA_CONTROLLER_PORT', 9093),
    kafkaVersion: env.TRAJSTORE_KAFKA_VERSION ?? KAFKA_VERSION,
    kafkaHeapMb: intFromEnv(env, 'TRAJSTORE_KAFKA_HEAP_MB', 768),
    clickhouseHttpPort: portFromEnv(env, 'TRAJSTORE_CLICKHOUSE_HTTP_PORT', 8123),
    clickhouseTcpPort: portFromEnv(env, 'TRAJSTORE_CLICKHOUSE_TCP_PORT', 9000),
    s3Port: portFromEnv(env, 'TRAJSTORE_S3_PORT', 9010),
  };
}

function intFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new ConfigError('environment', [{ path: name, message: `expected a positive integer, got "${raw}"` }]);
  return value;
}

function portFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const port = intFromEnv(env, name, fallback);
  if (port > 65535) throw new ConfigError('environment', [{ path: name, message: `expected a TCP port (1-65535), got ${port}` }]);
  return port;
}

/**
 * The local Kafka and ClickHouse of one home, managed together, and on request (`--s3`) a local
 * S3-compatible object store.
 */
export class LocalServices {
  readonly kafka: KafkaService;
  readonly clickhouse: ClickHouseService;
  readonly s3: S3Service;

  constructor(readonly options: ServicesOptions) {
    this.kafka = new KafkaService({
      home: options.home, cacheDir: options.cacheDir, host: options.host, port: options.kafkaPort,
      controllerPort: options.kafkaControllerPort, version: options.kafkaVersion, heapMb: options.kafkaHeapMb,
    });
    this.clickhouse = new ClickHouseService({ home: options.home, host: options.host, httpPort: options.clickhouseHttpPort, tcpPort: options.clickhouseTcpPort });
    this.s3 = new S3Service({ home: options.home, cacheDir: options.cacheDir, host: options.host, port: options.s3Port, version: S3PROXY_VERSION, heapMb: 256 });
  }

  get all(): LocalService[] {
    return [this.kafka, this.clickhouse, this.s3];
  }

  /** Installs and starts every service that is not running (the S3 store only with `s3`); a no-op when all run. */
  async up(log: (line: string) => void, opts: { s3?: boolean } = {}): Promise<{ started: string[] }> {
    return this.locked(async () => {
      const started: string[] = [];
      for (const service of opts.s3 ? this.all : [this.kafka, this.clickhouse]) {
        await service.install(log);
        if (await service.start(log)) started.push(service.name);
      }
      return { started };
    });
  }

  /** Stops every service, or only the named ones (an unknown name is a config error naming the known ones). */
  async down(log: (line: string) => void, names: string[] = []): Promise<{ stopped: string[] }> {
    const unknown = names.filter((n) => !this.all.some((s) => s.name === n));
    if (unknown.length > 0) {
      throw new ConfigError('arguments', [{ path: 'services', message: `unknown service ${unknown.join(', ')}; known: ${this.all.map((s) => s.name).join(', ')}` }]);
    }
    return this.locked(async () => {
      const stopped: string[] = [];
      // Reverse order: consumers of Kafka may still be writing to ClickHouse.
      for (const service of [...this.all].reverse()) {
        if (names.length > 0 && !names.includes(service.name)) continue;
        if (await service.stop(log)) stopped.push(service.name);
      }
      return { stopped };
    });
  }

  /** Kafka and ClickHouse always; the optional S3 store only when it was started. */
  async status(): Promise<ServiceStatus[]> {
    const statuses = await Promise.all(this.all.map((s) => s.status()));
    return statuses.filter((s) => s.name !== this.s3.name || s.state !== 'stopped');
  }

  /** One `up`/`down` at a time per home: parallel test runners and users share one broker. */
  private async locked<T>(work: () => Promise<T>): Promise<T> {
    mkdirSync(this.options.home, { recursive: true });
    const release = await lockfile.lock(this.options.home, {
      lockfilePath: join(this.options.home, 'services.lock'),
      stale: 30_000,
      retries: { retries: 600, minTimeout: 500, maxTimeout: 1000, factor: 1 },
    });
    try {
      return await work();
    } finally {
      await release();
    }
  }
}
