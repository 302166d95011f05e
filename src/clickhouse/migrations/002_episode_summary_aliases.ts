import type { Migration } from './types.js';

/**
 * `episode_summary` in a form current ClickHouse accepts. The form migration 001 shipped joined
 * unnamed subqueries (`(SELECT ...) ANY LEFT JOIN (SELECT ...) USING episode_id`), which 18.16
 * takes but the analyzer on by default since 24.3 refuses ("Code: 206 ... no alias for subquery
 * or table function"), so a sink on current ClickHouse could not migrate at all. Here every
 * joined subquery has an alias; the columns, their types and the rows are the same.
 *
 * 001 no longer creates the view: on a fresh database 001 makes the tables and this creates the
 * view; a database migrated by older code (at version 1, old view) gets it replaced. 18.16 has no
 * CREATE OR REPLACE VIEW nor DROP VIEW, so DROP TABLE (which drops views on every version) then
 * CREATE VIEW IF NOT EXISTS: idempotent, and two sinks migrating at once cannot fail on it.
 */
export const migration002: Migration = {
  version: 2,
  name: 'episode_summary with aliased joins (current ClickHouse)',
  statements: (db) => [
    `DROP TABLE IF EXISTS ${db}.episode_summary`,
    // One row per finished episode with its outcome reward and its group's task: the shape of
    // "reward and success by version and task". 18.16 joins one table per SELECT, hence nesting.
    `CREATE VIEW IF NOT EXISTS ${db}.episode_summary AS
SELECT
  run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
  completion_tokens, duration_ms, error_code, finished_at_ms, reward, reward_count,
  task_id, task_family, environment, split
FROM (
  SELECT
    run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
    completion_tokens, duration_ms, error_code, timestamp_ms AS finished_at_ms, reward, reward_count
  FROM (
    SELECT run_id, group_id, episode_id, policy_version, purpose, status, num_turns, prompt_tokens,
      completion_tokens, duration_ms, error_code, timestamp_ms
    FROM ${db}.episodes_data FINAL
  ) AS finished
  ANY LEFT JOIN (
    SELECT episode_id, sum(value) AS reward, count() AS reward_count
    FROM ${db}.rewards_data FINAL
    WHERE isNull(turn_index)
    GROUP BY episode_id
  ) AS outcome USING episode_id
) AS episode
ANY LEFT JOIN (
  SELECT group_id, task_id, task_family, environment, split
  FROM ${db}.groups_data FINAL
) AS task USING group_id`,
  ],
};
