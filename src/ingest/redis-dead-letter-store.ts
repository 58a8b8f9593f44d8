import type { Redis } from 'ioredis';
import type { TenantId } from '../domain/tenant.js';
import { asError, type Logger } from '../logger.js';
import { execChecked, type RedisKeys } from '../redis/client.js';
import {
  type DeadLetter,
  type DeadLetterDepth,
  type DeadLetterListOptions,
  type DeadLetterStore,
  parseDeadLetter,
  serialiseDeadLetter,
} from './dead-letter-queue.js';
import {
  hasLegacyDeadLetters,
  type LegacyMigration,
  migrateLegacyDeadLetters,
} from './redis-dead-letter-layout.js';

const GROUP = 'retry';

/**
 * Takes a parked dead letter out and, only when this call is the one that removed it, changes
 * the counters (and, for a replay, appends it to the stream and indexes it; for a discard,
 * removes it from the ages): two replays or discards of one dead letter at once change the
 * queue once, not twice.
 * KEYS: parked, depth, ages[, stream, index]. ARGV: id, event count, ages member[, the ACTIVE
 * dead letter].
 */
const TAKE_PARKED = `
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return false end
local n = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[2], 'parkedEntries', -1)
redis.call('HINCRBY', KEYS[2], 'parkedEvents', -n)
if not ARGV[4] then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 1
end
local id = redis.call('XADD', KEYS[4], '*', 'dl', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'entries', 1)
redis.call('HINCRBY', KEYS[2], 'events', n)
redis.call('HSET', KEYS[5], ARGV[1], id)
return id
`;

/** A dead letter's member of the ages set. */
function ageMember(dl: Pick<DeadLetter, 'tenant' | 'id'>): string {
  return `${dl.tenant} ${dl.id}`;
}

type StreamReply = [key: string, messages: [id: string, fields: string[]][]][] | null;

interface Held {
  tenant: TenantId;
  streamId: string;
  dl: DeadLetter;
  busy: boolean;
}

/**
 * Dead letters in Redis. ACTIVE dead letters are messages of a per-tenant stream read by the
 * consumer group `retry`, so several instances share the replay work and none does it twice; a
 * message stays pending (claimed) while its next attempt is not yet due, its claim refreshed,
 * and one abandoned by a dead instance is taken over with XAUTOCLAIM after the lease. PARKED
 * dead letters sit in a per-tenant hash. Nothing is ever trimmed: a change removes a message
 * only in the same MULTI that writes its successor. Depth counters change in those MULTIs too,
 * and so does the ages set (every dead letter, ACTIVE or PARKED, scored by when it first
 * failed), which gives the oldest one's age in one read.
 */
export class RedisDeadLetterStore implements DeadLetterStore {
  readonly kind = 'redis' as const;
  /** Messages this instance holds, by dead letter id. */
  private readonly held = new Map<string, Held>();
  private readonly warned = new Map<string, number>();
  private legacyChecked = false;
  /** What the last pass over the legacy layout moved (null before one completed). */
  lastMigration: LegacyMigration | null = null;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly consumer: string,
    private readonly log: Logger,
    private readonly leaseMs = 60_000,
  ) {}

  private stream(tenant: TenantId) {
    return this.keys.tenant(tenant, 'dlq');
  }
  private parkedKey(tenant: TenantId) {
    return this.keys.tenant(tenant, 'dlq', 'parked');
  }
  private indexKey(tenant: TenantId) {
    return this.keys.tenant(tenant, 'dlq', 'index');
  }
  private get tenantsKey() {
    return this.keys.service('deadletters', 'tenants');
  }
  private get depthKey() {
    return this.keys.service('deadletters', 'depth');
  }
  private get agesKey() {
    return this.keys.service('deadletters', 'ages');
  }

  async start(): Promise<void> {
    await this.redis.connect().catch((err: Error) => {
      // Already connecting or connected is fine; a real outage shows in healthy().
      if (!/already/i.test(err.message)) this.log.warn({ err }, 'redis connect failed');
    });
    await this.moveLegacyLayout();
    await this.indexAges();
  }

  /**
   * Puts every dead letter into the ages set (those stored before the set existed, or moved from
   * the legacy layout); ones already there keep their score. Once per start: O(dead letters).
   */
  private async indexAges(): Promise<void> {
    try {
      for (const tenant of (await this.redis.smembers(this.tenantsKey)) as TenantId[]) {
        for (const dl of await this.list(tenant)) {
          await this.redis.zadd(this.agesKey, 'NX', dl.firstFailedAt.getTime(), ageMember(dl));
        }
      }
    } catch (err) {
      this.warnOnce('ages', { err: asError(err) }, 'could not index the dead letters by age');
    }
  }

  /**
   * Moves dead letters kept under the earlier release's names. Done at start-up, and again
   * whenever such names reappear — an instance of the earlier release still running during a
   * rolling upgrade writes them — so none is stranded. A failure is logged and tried again on
   * the next round; it never stops the queue.
   */
  private async moveLegacyLayout(): Promise<void> {
    try {
      if (this.legacyChecked && !(await hasLegacyDeadLetters(this.redis, this.keys))) return;
      this.lastMigration = await migrateLegacyDeadLetters(this.redis, this.keys, this.log);
      this.legacyChecked = true;
    } catch (err) {
      this.warnOnce('layout', { err: asError(err) }, 'could not move legacy dead letters');
    }
  }

  /** Logs a warning at most once a minute per `topic` (a failing round repeats every poll). */
  private warnOnce(topic: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    if ((this.warned.get(topic) ?? 0) > now - 60_000) return;
    this.warned.set(topic, now);
    this.log.warn(fields, msg);
  }

  async stop(): Promise<void> {
    this.held.clear();
  }

  async healthy(): Promise<boolean> {
    try {
      return (await this.redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  }

  private async ensureGroup(tenant: TenantId): Promise<void> {
    try {
      await this.redis.xgroup('CREATE', this.stream(tenant), GROUP, '0', 'MKSTREAM');
    } catch (err) {
      if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
    }
  }

  async add(dl: DeadLetter): Promise<void> {
    await this.ensureGroup(dl.tenant);
    const n = dl.records.length;
    const res = await execChecked(
      this.redis
        .multi()
        .sadd(this.tenantsKey, dl.tenant)
        .xadd(this.stream(dl.tenant), '*', 'dl', serialiseDeadLetter(dl))
        .hincrby(this.depthKey, 'entries', 1)
        .hincrby(this.depthKey, 'events', n)
        .zadd(this.agesKey, dl.firstFailedAt.getTime(), ageMember(dl)),
    );
    const streamId = res[1] as string | null;
    if (!streamId) throw new Error('redis did not store the dead letter');
    await this.redis.hset(this.indexKey(dl.tenant), dl.id, streamId);
  }

  async get(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    const parked = await this.redis.hget(this.parkedKey(tenant), id);
    if (parked) return parseDeadLetter(parked);
    const streamId = await this.redis.hget(this.indexKey(tenant), id);
    if (!streamId) return null;
    const msgs = await this.redis.xrange(this.stream(tenant), streamId, streamId);
    const text = msgs[0]?.[1]?.[1];
    return text ? parseDeadLetter(text) : null;
  }

  async list(tenant: TenantId, opts: DeadLetterListOptions = {}): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    if (opts.state !== 'PARKED') {
      for (const [, fields] of await this.redis.xrange(this.stream(tenant), '-', '+')) {
        if (fields[1]) out.push(parseDeadLetter(fields[1]));
      }
    }
    if (opts.state !== 'ACTIVE') {
      for (const text of Object.values(await this.redis.hgetall(this.parkedKey(tenant)))) {
        out.push(parseDeadLetter(text));
      }
    }
    return out
      .filter((d) => !opts.errorCode || d.errorCode === opts.errorCode)
      .sort(
        (a, b) => a.firstFailedAt.getTime() - b.firstFailedAt.getTime() || (a.id < b.id ? -1 : 1),
      );
  }

  async claimDue(limit: number): Promise<DeadLetter[]> {
    await this.moveLegacyLayout();
    const tenants = (await this.redis.smembers(this.tenantsKey)) as TenantId[];
    for (const tenant of tenants) {
      try {
        await this.claimTenant(tenant);
      } catch (err) {
        // One tenant's stream that cannot be read must not hold up every other tenant's.
        this.warnOnce(
          `claim:${tenant}`,
          { err: asError(err), tenant },
          "could not read a tenant's dead letters",
        );
      }
    }
    await this.refreshClaims();
    const now = Date.now();
    const due: DeadLetter[] = [];
    for (const h of this.held.values()) {
      if (due.length >= limit) break;
      if (h.busy || h.dl.state !== 'ACTIVE') continue;
      if ((h.dl.nextAttemptAt?.getTime() ?? 0) <= now) {
        h.busy = true;
        due.push(h.dl);
      }
    }
    return due;
  }

  private async claimTenant(tenant: TenantId): Promise<void> {
    const key = this.stream(tenant);
    await this.ensureGroup(tenant);
    const fresh = (await this.redis.xreadgroup(
      'GROUP',
      GROUP,
      this.consumer,
      'COUNT',
      100,
      'STREAMS',
      key,
      '>',
    )) as StreamReply;
    for (const [, messages] of fresh ?? []) this.hold(tenant, messages);
    // Messages claimed by an instance that stopped refreshing them (it died) come back here.
    const reclaimed = (await this.redis.xautoclaim(
      key,
      GROUP,
      this.consumer,
      this.leaseMs,
      '0-0',
      'COUNT',
      100,
    )) as [string, [string, string[]][]];
    this.hold(tenant, reclaimed[1] ?? []);
  }

  private hold(tenant: TenantId, messages: [string, string[]][]): void {
    for (const [streamId, fields] of messages) {
      const text = fields?.[1];
      if (!text) continue; // deleted while pending
      const dl = parseDeadLetter(text);
      if (!this.held.has(dl.id)) this.held.set(dl.id, { tenant, streamId, dl, busy: false });
    }
  }

  /** Resets the idle time of every held message, so no other instance takes them over. */
  private async refreshClaims(): Promise<void> {
    const byTenant = new Map<TenantId, string[]>();
    for (const h of this.held.values()) {
      const ids = byTenant.get(h.tenant) ?? [];
      ids.push(h.streamId);
      byTenant.set(h.tenant, ids);
    }
    for (const [tenant, ids] of byTenant) {
      try {
        await this.redis.xclaim(this.stream(tenant), GROUP, this.consumer, 0, ...ids, 'JUSTID');
      } catch (err) {
        this.warnOnce(
          `refresh:${tenant}`,
          { err: asError(err), tenant },
          "could not refresh the claims on a tenant's dead letters",
        );
      }
    }
  }

  private takeHeld(dl: DeadLetter, previousId = dl.id): Held {
    const h = this.held.get(previousId);
    if (!h) throw new Error(`dead letter ${previousId} is not claimed by this instance`);
    this.held.delete(previousId);
    return h;
  }

  async complete(dl: DeadLetter): Promise<void> {
    const h = this.takeHeld(dl);
    await execChecked(
      this.redis
        .multi()
        .xack(this.stream(h.tenant), GROUP, h.streamId)
        .xdel(this.stream(h.tenant), h.streamId)
        .hdel(this.indexKey(h.tenant), dl.id)
        .hincrby(this.depthKey, 'entries', -1)
        .hincrby(this.depthKey, 'events', -h.dl.records.length)
        .zrem(this.agesKey, ageMember(dl)),
    );
  }

  /**
   * Stores the new state of a claimed dead letter. `previousId` names the claimed one when the
   * dead letter got a new id (its good rows were stored and only the bad ones remain).
   */
  async reschedule(dl: DeadLetter, previousId = dl.id): Promise<void> {
    const h = this.takeHeld(dl, previousId);
    const key = this.stream(h.tenant);
    const m = this.redis
      .multi()
      .xack(key, GROUP, h.streamId)
      .xdel(key, h.streamId)
      .hdel(this.indexKey(h.tenant), previousId)
      .hincrby(this.depthKey, 'entries', -1)
      .hincrby(this.depthKey, 'events', -h.dl.records.length)
      .zrem(this.agesKey, ageMember({ tenant: h.tenant, id: previousId }))
      .zadd(this.agesKey, dl.firstFailedAt.getTime(), ageMember(dl));
    if (dl.state === 'PARKED') {
      m.hset(this.parkedKey(h.tenant), dl.id, serialiseDeadLetter(dl))
        .hincrby(this.depthKey, 'parkedEntries', 1)
        .hincrby(this.depthKey, 'parkedEvents', dl.records.length);
    } else {
      m.xadd(key, '*', 'dl', serialiseDeadLetter(dl))
        .hincrby(this.depthKey, 'entries', 1)
        .hincrby(this.depthKey, 'events', dl.records.length);
    }
    const res = await execChecked(m);
    if (dl.state === 'ACTIVE') {
      const streamId = res.at(-3) as string | null;
      if (streamId) await this.redis.hset(this.indexKey(h.tenant), dl.id, streamId);
    }
  }

  async replay(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    const text = await this.redis.hget(this.parkedKey(tenant), id);
    if (!text) return null;
    const parked = parseDeadLetter(text);
    const dl: DeadLetter = { ...parked, state: 'ACTIVE', replays: 0, nextAttemptAt: new Date() };
    await this.ensureGroup(tenant);
    const streamId = await this.redis.eval(
      TAKE_PARKED,
      5,
      this.parkedKey(tenant),
      this.depthKey,
      this.agesKey,
      this.stream(tenant),
      this.indexKey(tenant),
      id,
      dl.records.length,
      ageMember(dl),
      serialiseDeadLetter(dl),
    );
    return streamId ? dl : null;
  }

  async discard(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    const text = await this.redis.hget(this.parkedKey(tenant), id);
    if (!text) return null;
    const dl = parseDeadLetter(text);
    const taken = await this.redis.eval(
      TAKE_PARKED,
      3,
      this.parkedKey(tenant),
      this.depthKey,
      this.agesKey,
      id,
      dl.records.length,
      ageMember(dl),
    );
    return taken ? dl : null;
  }

  async depth(): Promise<DeadLetterDepth> {
    const d = await this.redis.hgetall(this.depthKey);
    const num = (k: string) => Number(d[k] ?? 0);
    return {
      entries: num('entries') + num('parkedEntries'),
      events: num('events') + num('parkedEvents'),
      parkedEntries: num('parkedEntries'),
      parkedEvents: num('parkedEvents'),
      oldestAgeMs: await this.oldestAgeMs(),
    };
  }

  /**
   * Age of the oldest dead letter, ACTIVE or PARKED, from when it first failed. A member whose
   * dead letter is gone (removed by an instance of an earlier release, which does not keep the
   * set) is dropped here, so a stale entry cannot make the queue look older than it is.
   */
  private async oldestAgeMs(): Promise<number> {
    for (let tries = 0; tries < 100; tries++) {
      const [member, score] = await this.redis.zrange(this.agesKey, '0', '0', 'WITHSCORES');
      if (member === undefined || score === undefined) return 0;
      const [tenant, id] = member.split(' ') as [TenantId, string];
      const [parked, active] = await Promise.all([
        this.redis.hexists(this.parkedKey(tenant), id),
        this.redis.hexists(this.indexKey(tenant), id),
      ]);
      if (parked || active) return Math.max(0, Date.now() - Number(score));
      await this.redis.zrem(this.agesKey, member);
    }
    return 0;
  }
}
