import { Redis } from 'ioredis';
import type { TenantId } from '../domain/tenant.js';
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
    if (!down) log.warn({ err, client: name }, 'redis unavailable');
    down = true;
  });
  client.on('ready', () => {
    if (down) log.info({ client: name }, 'redis available again');
    down = false;
  });
  return client;
}

/**
 * Areas of the service's own keys and channels (first segment of the name). None is `t`, the
 * tenants' area, nor `dlq`: the dead-letter layout before tenants had their own area kept
 * tenant streams (`dlq:<tenant>`) beside the service's set and counters (`dlq:tenants`,
 * `dlq:depth`), so a tenant named `tenants` or `depth` wrote into them.
 */
export type ServiceArea = 'apikeys' | 'cluster' | 'deadletters' | 'journal';

const SERVICE_AREAS: ReadonlySet<string> = new Set<ServiceArea>([
  'apikeys',
  'cluster',
  'deadletters',
  'journal',
]);
const TENANT_SEGMENT = /^[a-z][a-z0-9_]{0,39}$/;

/**
 * Every Redis key and pub/sub channel name, under one prefix (pub/sub ignores the DB index).
 * A tenant id (`^[a-z][a-z0-9_]{0,39}$`, never a `:`) appears only at the one place its area
 * gives it, and no area holds both tenants' names and the service's, so no tenant id can make
 * the name of another tenant's key or of a key of the service:
 *
 * - `t:<tenant>:dlq` (stream), `t:<tenant>:dlq:parked`, `t:<tenant>:dlq:index` (hashes): the
 *   tenant's dead letters;
 * - `deadletters:tenants` (set), `deadletters:depth` (hash), `deadletters:ages` (sorted set):
 *   tenants with a dead-letter stream, depth counters, every dead letter by when it first failed;
 * - `ratelimit:<window>:<tenant>`: write-rate windows (rate-limiter-flexible appends the tenant);
 * - `realtime:<tenant>:<topic>` (channel): a tenant's subscription messages;
 * - `cluster:instances` (sorted set), `cluster:inbox:<instance>` (channel): heartbeats, requests;
 * - `journal:owners` (set), `journal:entries:<instance>` (hash): each instance's write-ahead
 *   journal of BUFFERED calls (a tenant id is only ever inside an entry's value);
 * - `apikeys:revoked`, `apikeys:confirmations:<instance>` (channels): key revocations, confirmed.
 *
 * The rate-limit and realtime names keep the shape they had before the `t:` area (the tenant at
 * a fixed place in an area holding nothing else), so instances of the previous release and of
 * this one share rate budgets and subscription messages during a rolling upgrade.
 */
export class RedisKeys {
  constructor(readonly prefix: string) {}

  /** A key of one tenant: `<prefix>t:<tenant>:<part>[:<more>…]`. */
  tenant(tenant: TenantId, part: string, ...more: string[]): string {
    return `${this.prefix}t:${checkedTenant(tenant)}:${[part, ...more].join(':')}`;
  }

  /** A key or channel of the service itself: `<prefix><area>:<part>…`, no tenant id in it. */
  service(area: ServiceArea, part: string, ...more: string[]): string {
    if (!SERVICE_AREAS.has(area)) throw new Error(`"${area}" is not a service area of Redis`);
    return `${this.prefix}${[area, part, ...more].join(':')}`;
  }

  /** The pub/sub channel of one tenant's topic: `<prefix>realtime:<tenant>:<topic>`. */
  realtimeChannel(tenant: TenantId, topic: string): string {
    return `${this.prefix}realtime:${checkedTenant(tenant)}:${topic}`;
  }

  /** The key prefix of one write-rate window; rate-limiter-flexible appends `:<tenant>`. */
  rateLimit(window: 'rate' | 'burst'): string {
    return `${this.prefix}ratelimit:${window}`;
  }
}

/** A tenant id as it goes into a name; a string that is not one (a cast, say) is refused. */
function checkedTenant(tenant: string): string {
  if (!TENANT_SEGMENT.test(tenant)) {
    throw new Error(`"${tenant}" is not a tenant id and cannot name a Redis key`);
  }
  return tenant;
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
