import type { ClickHouseClient } from '@clickhouse/client';
import { queryReadOnly, type QueryResult } from '../../clickhouse/readonly.js';
import { quoteIdentifier, quoteString } from '../../clickhouse/sql.js';
import { TrajstoreError } from '../../util/errors.js';

/**
 * `trajstore report --run ID`: the standard views of one run, each a read-only query over the
 * views of migration 001. The run id reaches SQL only through quoteString.
 */

export const REPORT_SECTIONS = ['summary', 'by_version', 'by_task', 'staleness', 'throughput', 'latency', 'errors'] as const;
export type ReportSection = (typeof REPORT_SECTIONS)[number];
export type RunReport = { run_id: string } & Record<ReportSection, QueryResult>;

function reportQueries(db: string, run: string): Record<ReportSection, string> {
  return {
    summary: `SELECT run_id, events, groups, episodes, turns, min_policy_version, max_policy_version, producers,
  first_event_ms, last_event_ms, round(events * 1000 / greatest(last_event_ms - first_event_ms, 1), 1) AS events_per_s
FROM ${db}.runs WHERE run_id = ${run}`,
    by_version: `SELECT policy_version, count() AS episodes, round(avg(reward), 4) AS reward_mean,
  round(countIf(status = 'success') / count(), 4) AS success_rate, round(countIf(status = 'timeout') / count(), 4) AS timeout_rate,
  round(countIf(status = 'error') / count(), 4) AS error_rate, round(avg(num_turns), 2) AS turns_mean,
  sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
FROM ${db}.episode_summary WHERE run_id = ${run} GROUP BY policy_version ORDER BY policy_version`,
    by_task: `SELECT task_family, task_id, count() AS episodes, round(avg(reward), 4) AS reward_mean,
  round(countIf(status = 'success') / count(), 4) AS success_rate, min(policy_version) AS first_version, max(policy_version) AS last_version
FROM ${db}.episode_summary WHERE run_id = ${run} GROUP BY task_family, task_id ORDER BY episodes DESC, task_family, task_id LIMIT 50`,
    staleness: `SELECT bucket_versions_behind AS versions_behind, sum(bucket_groups) AS groups, sum(bucket_tokens) AS tokens
FROM ${db}.trainer_steps
ARRAY JOIN staleness_versions_behind AS bucket_versions_behind, staleness_groups AS bucket_groups, staleness_tokens AS bucket_tokens
WHERE run_id = ${run} GROUP BY bucket_versions_behind ORDER BY bucket_versions_behind`,
    throughput: `SELECT toStartOfMinute(toDateTime(intDiv(timestamp_ms, 1000))) AS minute, count() AS events,
  countIf(kind = 'Turn') AS turns, countIf(kind = 'EpisodeFinished') AS episodes
FROM ${db}.events WHERE run_id = ${run} GROUP BY minute ORDER BY minute`,
    latency: `SELECT policy_version, count() AS turns, round(quantile(0.5)(latency_ms)) AS latency_p50_ms,
  round(quantile(0.95)(latency_ms)) AS latency_p95_ms, round(avg(completion_tokens), 1) AS completion_tokens_mean,
  round(countIf(isNull(action_type)) / count(), 4) AS unparsed_action_rate
FROM ${db}.turns WHERE run_id = ${run} GROUP BY policy_version ORDER BY policy_version`,
    errors: `SELECT status, ifNull(error_code, '') AS error_code, count() AS episodes
FROM ${db}.episode_summary WHERE run_id = ${run} AND status != 'success' AND status != 'failure'
GROUP BY status, error_code ORDER BY episodes DESC`,
  };
}

export async function buildRunReport(client: ClickHouseClient, database: string, runId: string): Promise<RunReport> {
  const queries = reportQueries(quoteIdentifier(database), quoteString(runId));
  const limits = { maxRows: 10_000, timeoutS: 60, numbersAsJson: true };
  const report = { run_id: runId } as RunReport;
  for (const section of REPORT_SECTIONS) report[section] = await queryReadOnly(client, queries[section], limits);
  if (report.summary.rows.length === 0) {
    throw new TrajstoreError('TRAJ_E_REPORT_RUN_NOT_FOUND', `run ${JSON.stringify(runId)} has no events in database ${database}`, {
      hint: 'list the runs with `trajstore sql "SELECT run_id, events FROM runs"`, and check that the sink runs',
    });
  }
  return report;
}
