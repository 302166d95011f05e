import { loadConfig, type TrajstoreConfig } from '../../config/index.js';
import { ClickHouseSection, KafkaSection, SinkSection } from '../../config/schema.js';
import { ConfigError } from '../../util/errors.js';

/** The config sections the sink, `sql` and `report` read. */
export type SinkSettings = Pick<TrajstoreConfig, 'kafka' | 'clickhouse' | 'sink'>;

/**
 * From a config file when one is given; otherwise the defaults (local services), so
 * `trajstore sql "SELECT 1"` works without writing a config first. `database` overrides
 * clickhouse.database (validated by the same rule as the config field).
 */
export function loadSinkSettings(configFile: string | undefined, database?: string): SinkSettings {
  const config = configFile
    ? loadConfig(configFile)
    : { kafka: KafkaSection.parse({}), clickhouse: ClickHouseSection.parse({}), sink: SinkSection.parse({}) };
  if (database === undefined) return { kafka: config.kafka, clickhouse: config.clickhouse, sink: config.sink };
  const clickhouse = ClickHouseSection.safeParse({ ...config.clickhouse, database });
  if (!clickhouse.success) throw new ConfigError('--database', clickhouse.error.issues.map((i) => ({ path: 'database', message: i.message })));
  return { kafka: config.kafka, clickhouse: clickhouse.data, sink: config.sink };
}

/** Each database has its own consumer group, so rebuilding into a new one starts from the beginning. */
export function sinkGroupId(settings: SinkSettings): string {
  return settings.sink.group_id ?? `trajstore-sink.${settings.clickhouse.database}`;
}
