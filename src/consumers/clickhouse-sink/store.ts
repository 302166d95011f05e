import type { ClickHouseClient } from '@clickhouse/client';
import { toClickHouseError } from '../../clickhouse/errors.js';
import { quoteIdentifier } from '../../clickhouse/sql.js';
import type { DataTable, Row } from './rows.js';

/** A partition's position in ClickHouse: the first offset not stored yet. */
export interface PartitionPosition {
  topic: string;
  partition: number;
  nextOffset: bigint;
}

/** The sink's view of its database: inserts rows and the offset watermark, reads the watermark back. */
export class SinkStore {
  private readonly db: string;

  constructor(private readonly client: ClickHouseClient, database: string) {
    this.db = quoteIdentifier(database);
  }

  async insert(table: DataTable, rows: Row[]): Promise<void> {
    try {
      await this.client.insert({ table: `${this.db}.${table}`, values: rows, format: 'JSONEachRow' });
    } catch (err) {
      throw toClickHouseError(err, `insert of ${rows.length} rows into ${table} failed`);
    }
  }

  /** Written after the rows of a flush: from here on, those offsets are skipped on redelivery. */
  async saveWatermarks(positions: PartitionPosition[]): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    const values = positions.map((p) => ({ topic: p.topic, partition: p.partition, next_offset: p.nextOffset.toString(), updated_at: now }));
    try {
      await this.client.insert({ table: `${this.db}.sink_offsets`, values, format: 'JSONEachRow' });
    } catch (err) {
      throw toClickHouseError(err, 'saving the offset watermark failed');
    }
  }

  /** Every partition's stored position (max over the not-yet-merged rows of sink_offsets). */
  async loadWatermarks(): Promise<PartitionPosition[]> {
    try {
      const result = await this.client.query({
        query: `SELECT topic, partition, toString(max(next_offset)) AS next_offset FROM ${this.db}.sink_offsets GROUP BY topic, partition`,
        format: 'JSONEachRow',
      });
      const rows = await result.json<{ topic: string; partition: number | string; next_offset: string }>();
      return rows.map((r) => ({ topic: r.topic, partition: Number(r.partition), nextOffset: BigInt(r.next_offset) }));
    } catch (err) {
      throw toClickHouseError(err, 'reading the offset watermark failed');
    }
  }
}
