import { createClient, type ClickHouseClient } from '@clickhouse/client';

export interface ClickHouseClientOptions {
  url: string;
  database?: string;
  username: string;
  password: string;
}

/**
 * A ClickHouse HTTP client. Every statement this project writes runs on Debian's ClickHouse
 * 18.16 and on current releases; the differences that matter are listed in the README
 * ("ClickHouse compatibility"): no `{name:Type}` query parameters, no DateTime64.
 */
export function createClickHouse(opts: ClickHouseClientOptions): ClickHouseClient {
  return createClient({
    url: opts.url,
    database: opts.database,
    username: opts.username,
    password: opts.password,
    request_timeout: 60_000,
  });
}
