import { pino } from 'pino';
import type { Config } from './config.js';

export type Logger = pino.Logger;

/** JSON logs on stdout; components take child loggers (`log.child({ component: 'writer' })`). */
export function createLogger(
  cfg: Pick<Config, 'logLevel'>,
  base: Record<string, unknown> = {},
): Logger {
  return pino({
    level: cfg.logLevel,
    base: { service: 'auditgraph', ...base },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ['req.headers.authorization', 'headers.authorization'], remove: true },
  });
}

/**
 * What a log line's `err` holds: always an Error, so every line carries its type, message and
 * stack the same way (`log.warn({ err: asError(caught) }, '…')`). A thrown non-Error becomes
 * an Error whose message is its string form.
 */
export function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
