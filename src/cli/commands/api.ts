import type { Command } from 'commander';
import { createClickHouse } from '../../clickhouse/client.js';
import { loadConfig, type TrajstoreConfig } from '../../config/index.js';
import { ApiSection, ClickHouseSection, KafkaSection, StorageSection } from '../../config/schema.js';
import { createKafka } from '../../kafka/client.js';
import { openBlobStore } from '../../storage/blob-store.js';
import { s3OptionsOf } from '../../storage/s3.js';
import { ConfigError } from '../../util/errors.js';
import { createLogger } from '../../util/logger.js';
import { buildApi } from '../../api/server.js';

/** `trajstore api [-c FILE] [--host H] [--port P] [--database NAME]`: the HTTP API and dashboard. */
export function registerApiCommand(program: Command): void {
  program
    .command('api')
    .description('serve the HTTP API (health, metrics, runs, policy versions, read-only SQL, replay jobs; OpenAPI at /docs) and the dashboard at /dashboard')
    .option('-c, --config <file>', 'YAML config (api, clickhouse, kafka, storage sections; replay jobs use the whole file); default: the local services')
    .option('--host <host>', 'address to listen on (default: api.host)')
    .option('--port <port>', 'port to listen on (default: api.port)')
    .option('--database <name>', 'database to read (default: clickhouse.database)')
    .action(async (opts: { config?: string; host?: string; port?: string; database?: string }) => {
      const config = opts.config ? loadConfig(opts.config) : null;
      const sections = withDefaults(config, opts.database);
      const logger = createLogger('api');
      const clickhouse = createClickHouse({ ...sections.clickhouse, requestTimeoutMs: 60_000 });
      const kafka = createKafka({ brokers: sections.kafka.brokers, clientId: `${sections.kafka.client_id}-api` }, logger);
      const api = await buildApi({
        settings: sections.api,
        clickhouse,
        database: sections.clickhouse.database,
        kafka,
        topics: {
          trajectories: sections.kafka.topics.trajectories,
          policyVersions: sections.kafka.topics.policy_versions,
          trainerMetrics: sections.kafka.topics.trainer_metrics,
          deadLetter: sections.kafka.topics.dead_letter,
        },
        blobs: openBlobStore(sections.storage.blobs, s3OptionsOf(sections.storage)),
        blobsLocation: sections.storage.blobs,
        config,
        logger,
      });
      const port = opts.port === undefined ? sections.api.port : portNumber(opts.port);
      const address = await api.listen({ host: opts.host ?? sections.api.host, port });
      logger.info({ address, dashboard: `${address}/dashboard`, docs: `${address}/docs`, replayJobs: config !== null, token: sections.api.token !== undefined }, 'API listening');
      const stop = async (signal: string) => {
        logger.info({ signal }, 'stopping: cancelling replay jobs, closing connections');
        await api.close();
        await clickhouse.close();
      };
      process.once('SIGINT', () => void stop('SIGINT'));
      process.once('SIGTERM', () => void stop('SIGTERM'));
    });
}

type Sections = Pick<TrajstoreConfig, 'api' | 'clickhouse' | 'kafka' | 'storage'>;

/** Without a config file the API reads the local services with every default (replay jobs off). */
function withDefaults(config: TrajstoreConfig | null, database: string | undefined): Sections {
  const base: Sections = config ?? { api: ApiSection.parse({}), clickhouse: ClickHouseSection.parse({}), kafka: KafkaSection.parse({}), storage: StorageSection.parse({}) };
  if (database === undefined) return base;
  const clickhouse = ClickHouseSection.safeParse({ ...base.clickhouse, database });
  if (!clickhouse.success) throw new ConfigError('--database', clickhouse.error.issues.map((i) => ({ path: 'database', message: i.message })));
  return { ...base, clickhouse: clickhouse.data };
}

function portNumber(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new ConfigError('--port', [{ path: 'port', message: `expected a port number, got "${value}"` }]);
  return n;
}
