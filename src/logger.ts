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
