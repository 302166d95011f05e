import { ClickHouseLogLevel, createClient, type ClickHouseClient } from '@clickhouse/client';

export interface ClickHouseClientOptions {
  url: string;
  database?: string;
  username: string;
  password: string;
  /** Per-request timeout; the sink lowers it so an unreachable server is noticed quickly. */
  requestTimeoutMs?: number;
}

/**
 * A ClickHouse HTTP client. Every statement this project writes runs on Debian's ClickHouse
 * 18.16 and on current releases; the differences that matter are listed in the README
 * ("ClickHouse compatibility"): no `{name:Type}` query parameters, no DateTime64.
 * The client's own logger is off: callers turn its errors into typed errors (see errors.ts)
 * and log them once, through pino.
 */
export function createClickHouse(opts: ClickHouseClientOptions): ClickHouseClient {
  return createClient({
    url: opts.url,
    database: opts.database,
    username: opts.username,
    password: opts.password,
    request_timeout: opts.requestTimeoutMs ?? 60_000,
    log: { level: ClickHouseLogLevel.OFF },
  });
}
