import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { ApiContext } from '../server.js';
import { errorResponses, ReplayJob, ReplayJobList, ReplayJobParam, ReplayJobRequest } from '../schemas.js';

/** Replay jobs: start (202), list, status, cancel. Starting and cancelling need the bearer token. */
export const replayRoutes: FastifyPluginAsyncTypebox<{ ctx: ApiContext }> = async (app, { ctx }) => {
  const secured = { security: [{ bearer: [] }] };

  app.post('/replay-jobs', {
    preHandler: ctx.requireToken,
    schema: {
      summary: 'start `trajstore replay` of a source run into a new run, with the API\'s config and optional training overrides',
      tags: ['replay'], ...secured, body: ReplayJobRequest, response: { 202: ReplayJob, ...errorResponses(400, 401, 409, 413) },
    },
  }, async (request, reply) => reply.code(202).send(ctx.jobs.start(request.body)));

  app.get('/replay-jobs', {
    schema: { summary: 'jobs this API process started, newest first', tags: ['replay'], response: { 200: ReplayJobList } },
  }, async () => ({ jobs: ctx.jobs.list() }));

  app.get('/replay-jobs/:jobId', {
    schema: { summary: 'a job\'s state, result or error', tags: ['replay'], params: ReplayJobParam, response: { 200: ReplayJob, ...errorResponses(400, 404) } },
  }, async (request) => ctx.jobs.get(request.params.jobId));

  app.delete('/replay-jobs/:jobId', {
    preHandler: ctx.requireToken,
    schema: {
      summary: 'cancel a running job (SIGTERM to its process group, SIGKILL after 5 s); answers once it has exited',
      tags: ['replay'], ...secured, params: ReplayJobParam, response: { 200: ReplayJob, ...errorResponses(400, 401, 404, 409) },
    },
  }, async (request) => ctx.jobs.cancel(request.params.jobId));
};
