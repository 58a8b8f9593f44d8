import type { Redis } from 'ioredis';
import { type TenantId, tenantIdProblem } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { RedisKeys } from '../redis/client.js';

/**
 * The dead-letter layout of earlier releases: `<prefix>dlq:<tenant>` (stream),
 * `dlq:<tenant>:parked` and `dlq:<tenant>:index` (hashes) beside the service's own
 * `dlq:tenants` (set) and `dlq:depth` (hash) — one area for both, so the stream of a tenant named
 * `tenants` or `depth` was the service's set or counters. These names are only ever read here,
 * to move what they hold to the current layout (see RedisKeys).
 */
class LegacyNames {
  readonly area: string;
  constructor(prefix: string) {
    this.area = `${prefix}dlq:`;
  }
  stream(tenant: string) {
    return `${this.area}${tenant}`;
  }
  index(tenant: string) {
    return `${this.area}${tenant}:index`;
  }
  parked(tenant: string) {
    return `${this.area}${tenant}:parked`;
  }
  get tenants() {
    return `${this.area}tenants`;
  }
  get depth() {
    return `${this.area}depth`;
  }
  /** The tenant a legacy key belongs to, or null for the set, the counters and anything else. */
  tenantOf(key: string): string | null {
    const m = /^([a-z][a-z0-9_]{0,39})(?::parked|:index)?$/.exec(key.slice(this.area.length));
    return m?.[1] ?? null;
  }
}

/**
 * Moves one tenant's legacy keys, atomically (a script runs alone), so instances starting
 * together cannot move a dead letter twice or lose one: the one that runs second finds nothing.
 * A stream is renamed when the new one does not exist yet (ids, consumer group and claims kept,
 * so the index stays true); otherwise its entries are appended to the new stream and indexed
 * under their new ids. Parked dead letters are keyed by their own id and merged as they are.
 * KEYS: old stream, old index, old parked, new stream, new index, new parked, old tenant set,
 * new tenant set. ARGV: the tenant. Returns { active moved, parked moved }.
 */
const MOVE_TENANT = `
local function kind(k) return redis.call('TYPE', k)['ok'] end
local active, parked = 0, 0
if kind(KEYS[1]) == 'stream' then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    active = redis.call('XLEN', KEYS[1])
    redis.call('RENAME', KEYS[1], KEYS[4])
    if kind(KEYS[2]) == 'hash' then
      local idx = redis.call('HGETALL', KEYS[2])
      for i = 1, #idx, 2 do redis.call('HSET', KEYS[5], idx[i], idx[i + 1]) end
    end
  else
    local byEntry = {}
    if kind(KEYS[2]) == 'hash' then
      local idx = redis.call('HGETALL', KEYS[2])
      for i = 1, #idx, 2 do byEntry[idx[i + 1]] = idx[i] end
    end
    for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
      local fields = e[2]
      local newId = redis.call('XADD', KEYS[4], '*', unpack(fields))
      local dlId = byEntry[e[1]]
      if not dlId then
        for i = 1, #fields, 2 do
          if fields[i] == 'dl' then
            local ok, o = pcall(cjson.decode, fields[i + 1])
            if ok and type(o) == 'table' and type(o.id) == 'string' then dlId = o.id end
          end
        end
      end
      if dlId then redis.call('HSET', KEYS[5], dlId, newId) end
      active = active + 1
    end
    redis.call('DEL', KEYS[1])
  end
  redis.call('DEL', KEYS[2])
elseif kind(KEYS[2]) == 'hash' then
  -- An index written after its stream was moved (by a writer of the earlier release).
  local idx = redis.call('HGETALL', KEYS[2])
  for i = 1, #idx, 2 do redis.call('HSETNX', KEYS[5], idx[i], idx[i + 1]) end
  redis.call('DEL', KEYS[2])
end
if kind(KEYS[3]) == 'hash' then
  parked = redis.call('HLEN', KEYS[3])
  if redis.call('EXISTS', KEYS[6]) == 0 then
    redis.call('RENAME', KEYS[3], KEYS[6])
  else
    local p = redis.call('HGETALL', KEYS[3])
    for i = 1, #p, 2 do redis.call('HSETNX', KEYS[6], p[i], p[i + 1]) end
    redis.call('DEL', KEYS[3])
  end
end
if kind(KEYS[4]) == 'stream' then redis.call('SADD', KEYS[8], ARGV[1]) end
if kind(KEYS[7]) == 'set' then redis.call('SREM', KEYS[7], ARGV[1]) end
return { active, parked }
`;

/**
 * Adds the legacy depth counters to the current ones and removes them, atomically. Counters an
 * instance of the earlier release changes afterwards (it finished a dead letter that was moved)
 * come back as a new legacy hash and are added in the next pass: the sum stays right.
 * KEYS: old depth, new depth. Returns how many counters were added.
 */
const MOVE_DEPTH = `
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then return 0 end
local d = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #d, 2 do
  if string.match(d[i + 1], '^-?%d+$') then
    redis.call('HINCRBY', KEYS[2], d[i], d[i + 1])
    n = n + 1
  end
end
redis.call('DEL', KEYS[1])
return n
`;

export interface LegacyMigration {
  /** Tenants whose dead letters were moved. */
  tenants: number;
  /** ACTIVE dead letters (stream entries) moved. */
  active: number;
  /** PARKED dead letters moved. */
  parked: number;
  /** Depth counters added to the current ones. */
  counters: number;
}

/** Are there keys of the legacy layout? Every write of the earlier release touches one of these. */
export async function hasLegacyDeadLetters(redis: Redis, keys: RedisKeys): Promise<boolean> {
  const legacy = new LegacyNames(keys.prefix);
  return (await redis.exists(legacy.tenants, legacy.depth)) > 0;
}

/**
 * Moves every dead letter of the legacy layout to the current one and returns what it moved.
 * Safe to run on several instances at once and again at any time: each tenant is moved by one
 * script, which the second runner finds with nothing to do. The keys are found with SCAN as well
 * as through the legacy tenant set, which a tenant named `tenants` may have replaced.
 */
export async function migrateLegacyDeadLetters(
  redis: Redis,
  keys: RedisKeys,
  log: Logger,
): Promise<LegacyMigration> {
  const legacy = new LegacyNames(keys.prefix);
  const candidates = new Set<string>();
  const pattern = `${legacy.area.replace(/[*?[\]\\]/g, '\\$&')}*`;
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    for (const key of found) {
      const tenant = legacy.tenantOf(key);
      if (tenant) candidates.add(tenant);
    }
  } while (cursor !== '0');
  if ((await redis.type(legacy.tenants)) === 'set') {
    for (const t of await redis.smembers(legacy.tenants)) candidates.add(t);
  }

  const moved: LegacyMigration = { tenants: 0, active: 0, parked: 0, counters: 0 };
  const refused: string[] = [];
  for (const tenant of [...candidates].sort()) {
    if (tenantIdProblem(tenant)) {
      refused.push(tenant);
      continue;
    }
    const t = tenant as TenantId;
    const [active, parked] = (await redis.eval(
      MOVE_TENANT,
      8,
      legacy.stream(t),
      legacy.index(t),
      legacy.parked(t),
      keys.tenant(t, 'dlq'),
      keys.tenant(t, 'dlq', 'index'),
      keys.tenant(t, 'dlq', 'parked'),
      legacy.tenants,
      keys.service('deadletters', 'tenants'),
      t,
    )) as [number, number];
    if (active + parked > 0) {
      moved.tenants++;
      moved.active += active;
      moved.parked += parked;
      log.info({ tenant: t, active, parked }, 'dead letters moved to the current redis layout');
    }
  }
  moved.counters = (await redis.eval(
    MOVE_DEPTH,
    2,
    legacy.depth,
    keys.service('deadletters', 'depth'),
  )) as number;
  if (refused.length > 0) {
    log.warn(
      { keys: refused.map((t) => legacy.stream(t)) },
      'legacy dead-letter keys that name no valid tenant were left as they are',
    );
  }
  if (moved.tenants + moved.counters > 0) {
    log.info({ ...moved }, 'legacy dead-letter layout migrated');
  }
  return moved;
}
