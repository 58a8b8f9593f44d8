import { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/**
 * A Redis connection. Every command is bounded (`commandTimeout`). With `failFast`, a command
 * issued while the connection is down fails at once instead of waiting in the offline queue:
 * the dead-letter queue and the cluster use that, so an outage turns into events kept pending
 * (or spooled) right away, not into calls that wait out their timeout.
 */
export function createRedis(
  url: string,
  name: string,
  log: Logger,
  opts: { failFast?: boolean } = {},
): Redis {
  const client = new Redis(url, {
    connectionName: name,
    lazyConnect: true,
    maxRetriesPerRequest: 1,
    // A Redis that accepts connections but answers nothing must fail calls, not hang them:
    // writes, flushes, readiness and shutdown all wait on Redis somewhere.
    commandTimeout: opts.failFast ? 1_000 : 2_000,
    enableOfflineQueue: !opts.failFast,
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

/**
 * Runs a MULTI (or pipeline) and returns its replies. ioredis resolves `exec()` with one
 * `[error, reply]` pair per command — a WRONGTYPE in one of them does not reject the promise —
 * so every pair is looked at here: any error throws, naming the command, as does a discarded
 * transaction (null).
 */
export async function execChecked(m: {
  exec(): Promise<[error: Error | null, reply: unknown][] | null>;
}): Promise<unknown[]> {
  const res = await m.exec();
  if (!res) throw new Error('redis discarded the transaction');
  return res.map(([err, reply], i) => {
    if (err) throw new Error(`redis command ${i + 1} of ${res.length} failed: ${err.message}`);
    return reply;
  });
}
