import type { ClickHouseClient } from '@clickhouse/client';
import { QUERIES } from '../../clickhouse/catalog.js';
import { toClickHouseError } from '../../clickhouse/errors.js';
import { quoteIdentifier } from '../../clickhouse/sql.js';
import type { DataTable, Row } from './rows.js';

/** A partition's position in ClickHouse: the first offset not stored yet. */
export interface PartitionPosition {
  topic: string;
  partition: number;
  nextOffset: bigint;
}

/**
 * A row field the table lacks fails the insert, as on 18.16, instead of being dropped without a
 * word (current releases skip unknown fields by default): rows.ts and the migrations stay pinned
 * together on every server.
 */
const STRICT_INSERT = { input_format_skip_unknown_fields: 0 } as const;

/** The sink's view of its database: inserts rows and the offset watermark, reads the watermark back. */
export class SinkStore {
  private readonly db: string;

  constructor(private readonly client: ClickHouseClient, database: string) {
    this.db = quoteIdentifier(database);
  }

  async insert(table: DataTable, rows: Row[]): Promise<void> {
    try {
      await this.client.insert({ table: `${this.db}.${table}`, values: rows, format: 'JSONEachRow', clickhouse_settings: STRICT_INSERT });
    } catch (err) {
      throw toClickHouseError(err, `insert of ${rows.length} rows into ${table} failed`);
    }
  }

  /** Written after the rows of a flush: from here on, those offsets are skipped on redelivery. */
  async saveWatermarks(positions: PartitionPosition[]): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    const values = positions.map((p) => ({ topic: p.topic, partition: p.partition, next_offset: p.nextOffset.toString(), updated_at: now }));
    try {
      await this.client.insert({ table: `${this.db}.sink_offsets`, values, format: 'JSONEachRow', clickhouse_settings: STRICT_INSERT });
    } catch (err) {
      throw toClickHouseError(err, 'saving the offset watermark failed');
    }
  }

  /** Every partition's stored position (max over the not-yet-merged rows of sink_offsets). */
  async loadWatermarks(): Promise<PartitionPosition[]> {
    try {
      const result = await this.client.query({
        query: QUERIES.sinkWatermarks.sql(this.db, {}),
        format: 'JSONEachRow',
      });
      const rows = await result.json<{ topic: string; partition: number | string; next_offset: string }>();
      return rows.map((r) => ({ topic: r.topic, partition: Number(r.partition), nextOffset: BigInt(r.next_offset) }));
    } catch (err) {
      throw toClickHouseError(err, 'reading the offset watermark failed');
    }
  }
}
