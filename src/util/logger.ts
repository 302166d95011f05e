import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };

/**
 * Structured JSON logs by default (one object a line, for log shippers); a readable, coloured
 * mode when writing to a terminal or when `TRAJSTORE_LOG_FORMAT=pretty`.
 * `TRAJSTORE_LOG_LEVEL` sets the level (default info).
 */
export function createLogger(name: string, options: { level?: string; pretty?: boolean } = {}): Logger {
  const level = options.level ?? process.env.TRAJSTORE_LOG_LEVEL ?? 'info';
  const format = process.env.TRAJSTORE_LOG_FORMAT;
  const pretty = options.pretty ?? (format ? format === 'pretty' : Boolean(process.stderr.isTTY));
  const base: LoggerOptions = { name, level };
  if (!pretty) return pino(base, pino.destination(2));
  return pino({
    ...base,
    transport: {
      target: 'pino-pretty',
      options: { destination: 2, colorize: Boolean(process.stderr.isTTY), translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' },
    },
  });
}
