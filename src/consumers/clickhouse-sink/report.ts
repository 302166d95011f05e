import type { ClickHouseClient } from '@clickhouse/client';
import { queryReadOnly, type QueryResult } from '../../clickhouse/readonly.js';
import { QUERIES, type CatalogQuery } from '../../clickhouse/catalog.js';
import { quoteIdentifier } from '../../clickhouse/sql.js';
import { TrajstoreError } from '../../util/errors.js';

/**
 * `trajstore report --run ID`: the standard views of one run, each a read-only query of the
 * catalog (src/clickhouse/catalog.ts) over the migrations' views.
 */

export const REPORT_SECTIONS = ['summary', 'by_version', 'by_task', 'staleness', 'throughput', 'latency', 'errors'] as const;
export type ReportSection = (typeof REPORT_SECTIONS)[number];
export type RunReport = { run_id: string } & Record<ReportSection, QueryResult>;

/** Each section's query, from the catalog (src/clickhouse/catalog.ts). */
const SECTION_QUERIES: Record<ReportSection, CatalogQuery<{ runId: string }>> = {
  summary: QUERIES.reportSummary,
  by_version: QUERIES.reportByVersion,
  by_task: QUERIES.reportByTask,
  staleness: QUERIES.reportStaleness,
  throughput: QUERIES.reportThroughput,
  latency: QUERIES.reportLatency,
  errors: QUERIES.reportErrors,
};

export async function buildRunReport(client: ClickHouseClient, database: string, runId: string): Promise<RunReport> {
  const db = quoteIdentifier(database);
  const limits = { maxRows: 10_000, timeoutS: 60, numbersAsJson: true };
  const report = { run_id: runId } as RunReport;
  for (const section of REPORT_SECTIONS) report[section] = await queryReadOnly(client, SECTION_QUERIES[section].sql(db, { runId }), limits);
  if (report.summary.rows.length === 0) {
    throw new TrajstoreError('TRAJ_E_REPORT_RUN_NOT_FOUND', `run ${JSON.stringify(runId)} has no events in database ${database}`, {
      hint: 'list the runs with `trajstore sql "SELECT run_id, events FROM runs"`, and check that the sink runs',
    });
  }
  return report;
}
