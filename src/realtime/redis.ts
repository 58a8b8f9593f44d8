import { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/**
 * Redis connections. Commands fail fast while Redis is unreachable (no unbounded offline
 * queue), so callers see the outage and keep events pending instead of waiting forever.
 */
export function createRedis(url: string, name: string, log: Logger): Redis {
  const client = new Redis(url, {
    connectionName: name,
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
    retryStrategy: (times) => Math.min(times * 200, 2_000),
  });
  let down = false;
  client.on('error', (err) => {
    if (!down) log.warn({ err: err.message, client: name }, 'redis unavailable');
    down = true;
  });
  client.on('ready', () => {
    if (down) log.info({ client: name }, 'redis available again');
    down = false;
  });
  return client;
}

/** Key and channel names under one prefix (pub/sub channels ignore the DB index). */
export class RedisKeys {
  constructor(readonly prefix: string) {}
  key(...parts: string[]): string {
    return `${this.prefix}${parts.join(':')}`;
  }
}
