import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { queryReadOnly } from '../../clickhouse/readonly.js';
import type { ApiContext } from '../server.js';
import { errorResponses, SqlRequest, SqlResponse } from '../schemas.js';

/**
 * POST /sql: one read-only statement, as `trajstore sql` runs it (readonly=1 on the server, row
 * and time limits). Writes, DDL, SET and KILL are refused with 403; a result past the row limit
 * or a query past the time limit with 422. Not token-gated: it cannot change anything.
 */
export const sqlRoutes: FastifyPluginAsyncTypebox<{ ctx: ApiContext }> = async (app, { ctx }) => {
  app.post('/sql', {
    schema: {
      summary: 'run one read-only SQL query against the trajectory database',
      tags: ['sql'], body: SqlRequest, response: { 200: SqlResponse, ...errorResponses(400, 403, 413, 422, 503) },
    },
  }, async (request) => {
    const { query, max_rows: maxRows, timeout_s: timeoutS } = request.body;
    const result = await queryReadOnly(ctx.deps.clickhouse, query, {
      maxRows: Math.min(maxRows ?? ctx.settings.sql_max_rows, ctx.settings.sql_max_rows),
      timeoutS: Math.min(timeoutS ?? ctx.settings.sql_timeout_s, ctx.settings.sql_timeout_s),
    });
    return { columns: result.columns, rows: result.rows, row_count: result.rows.length };
  });
};
