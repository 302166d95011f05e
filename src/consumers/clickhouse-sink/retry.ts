import { setTimeout as sleep } from 'node:timers/promises';
import { TrajstoreError } from '../../util/errors.js';
import { SinkError, SinkErrorCode } from './errors.js';

export interface RetryOptions {
  /** First pause; doubles each attempt up to maxMs, with ±20% jitter so sinks do not retry in step. */
  initialMs: number;
  maxMs: number;
  /** Checked before each retry: a stopping sink finishes what it started but does not wait out an outage. */
  stopped: () => boolean;
  onRetry: (err: TrajstoreError, attempt: number, delayMs: number) => void;
}

/**
 * Runs `fn` until it succeeds, as long as what it throws is a retriable TrajstoreError.
 * There is no attempt limit on purpose: while ClickHouse is down the sink waits for it (the
 * data is safe in Kafka), it does not drop the batch.
 */
export async function retryForever<T>(fn: () => Promise<T>, opts: RetryOptions): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    if (attempt > 1 && opts.stopped()) throw new SinkError(SinkErrorCode.STOPPED, 'sink stopped while retrying; the batch was not committed and will be redelivered');
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof TrajstoreError) || !err.retriable) throw err;
      const base = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(attempt - 1, 20));
      const delayMs = Math.round(base * (0.8 + 0.4 * Math.random()));
      opts.onRetry(err, attempt, delayMs);
      await sleep(delayMs);
    }
  }
}
