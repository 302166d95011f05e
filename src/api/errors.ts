import { ClickHouseErrorCode } from '../clickhouse/errors.js';
import { TrajstoreError, type TrajstoreErrorOptions } from '../util/errors.js';

/** Stable codes of the HTTP API, listed in src/api/README.md. */
export const ApiErrorCode = {
  /** A mutating endpoint was called without the configured bearer token (or none is configured). */
  UNAUTHORIZED: 'TRAJ_E_API_UNAUTHORIZED',
  /** The request's parameters, query or body do not match the endpoint's schema. */
  VALIDATION: 'TRAJ_E_API_VALIDATION',
  /** No such route, run, job or blob. */
  NOT_FOUND: 'TRAJ_E_API_NOT_FOUND',
  /** The request body is larger than api.body_limit_bytes. */
  BODY_TOO_LARGE: 'TRAJ_E_API_BODY_TOO_LARGE',
  /** More than api.rate_limit_per_minute requests from one client. */
  RATE_LIMITED: 'TRAJ_E_API_RATE_LIMITED',
  /** A replay job cannot start (limit reached, no config) or cannot be cancelled (finished). */
  CONFLICT: 'TRAJ_E_API_CONFLICT',
  /** A dependency (ClickHouse, Kafka) is not answering. */
  UNAVAILABLE: 'TRAJ_E_API_UNAVAILABLE',
  /** A bug: the message is logged with the request id. */
  INTERNAL: 'TRAJ_E_API_INTERNAL',
} as const;

export class ApiError extends TrajstoreError {
  readonly statusCode: number;

  constructor(statusCode: number, code: string, message: string, options: TrajstoreErrorOptions = {}) {
    super(code, message, options);
    this.statusCode = statusCode;
  }
}

/** The one error shape every endpoint answers with (documented in the OpenAPI document as ErrorBody). */
export interface ErrorBody {
  statusCode: number;
  code: string;
  message: string;
  hint: string | null;
  retriable: boolean;
  requestId: string;
}

/** HTTP status for a typed error from the layers below the API. */
const STATUS_OF_CODE: Record<string, number> = {
  [ClickHouseErrorCode.READONLY]: 403,
  [ClickHouseErrorCode.LIMIT]: 422,
  [ClickHouseErrorCode.QUERY]: 400,
  [ClickHouseErrorCode.UNAVAILABLE]: 503,
};

/** What Fastify and its plugins throw, turned into the API's codes. */
const FASTIFY_CODES: Record<string, { status: number; code: string; hint: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: ApiErrorCode.BODY_TOO_LARGE, hint: 'send a smaller body (api.body_limit_bytes sets the limit)' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { status: 415, code: ApiErrorCode.VALIDATION, hint: 'send the body as application/json' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, code: ApiErrorCode.VALIDATION, hint: 'send a JSON body, see /docs' },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: ApiErrorCode.VALIDATION, hint: 'send valid JSON, see /docs' },
};

/** Any thrown value as the documented error body (and its HTTP status). */
export function toErrorBody(err: unknown, requestId: string): ErrorBody {
  const e = err as { statusCode?: number; code?: string; message?: string; validation?: unknown; validationContext?: string };
  if (err instanceof ApiError) return body(err.statusCode, err.code, err.message, err.hint, err.retriable, requestId);
  if (err instanceof TrajstoreError) {
    return body(STATUS_OF_CODE[err.code] ?? 500, err.code, err.message, err.hint, err.retriable, requestId);
  }
  if (e.validation) {
    return body(400, ApiErrorCode.VALIDATION, e.message ?? 'invalid request', 'fix the field named in the message; /docs lists every endpoint\'s schema', false, requestId);
  }
  const known = e.code ? FASTIFY_CODES[e.code] : undefined;
  if (known) return body(known.status, known.code, e.message ?? known.code, known.hint, false, requestId);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return body(e.statusCode, ApiErrorCode.VALIDATION, e.message ?? 'bad request', 'see /docs for the endpoint\'s schema', false, requestId);
  }
  return body(500, ApiErrorCode.INTERNAL, 'internal error', `report it with request id ${requestId}; the API log has the details`, true, requestId);
}

function body(statusCode: number, code: string, message: string, hint: string | undefined, retriable: boolean, requestId: string): ErrorBody {
  return { statusCode, code, message, hint: hint ?? null, retriable, requestId };
}
