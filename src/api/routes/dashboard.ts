import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ApiContext } from '../server.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** Chart.js's UMD build, served from node_modules: the dashboard needs no CDN (nor internet). */
const CHART_JS = join(dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js');

/** The dashboard: a static page whose script reads the API's JSON and draws it with Chart.js. */
export const dashboardRoutes: FastifyPluginAsyncTypebox<{ ctx: ApiContext }> = async (app) => {
  const files: Record<string, { body: string; type: string }> = {
    '/dashboard': { body: readFileSync(join(HERE, '../dashboard/index.html'), 'utf8'), type: 'text/html; charset=utf-8' },
    '/dashboard/app.js': { body: readFileSync(join(HERE, '../dashboard/app.js'), 'utf8'), type: 'text/javascript; charset=utf-8' },
    '/dashboard/chart.umd.min.js': { body: readFileSync(CHART_JS, 'utf8'), type: 'text/javascript; charset=utf-8' },
  };
  for (const [url, file] of Object.entries(files)) {
    app.get(url, { schema: { hide: true } }, async (_request, reply) => reply.type(file.type).send(file.body));
  }
  app.get('/', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/dashboard'));
};
