import type { Redis } from 'ioredis';
import type { TenantId } from '../../domain/tenant.js';
import { asError, type Logger } from '../../logger.js';
import type { RedisKeys } from '../../redis/client.js';
import {
  type AtBooks,
  BOOK_TERMS,
  type BookChange,
  type BookTerms,
  type EntryOutcome,
  type RedisBooks,
  releaseChange,
} from './books.js';
import { GroupCommit } from './group-commit.js';
import {
  decodeEntry,
  encodeEntry,
  type Journal,
  type JournalEntry,
  type RecoveredEntries,
  Writability,
} from './journal.js';

/**
 * Takes over the journals of instances whose heartbeat is older than the lease, in one script
 * (a script runs alone, so two instances recovering together cannot both take an entry): every
 * entry moves into the taker's own journal, and the dead one's journal and ownership go.
 * KEYS: owners set, heartbeat sorted set, the taker's journal. ARGV: taker id, oldest live
 * heartbeat (ms), the journal key prefix. Returns { owner, [field, value, …] } pairs.
 * The dead instances' keys are named in the script from the owners set: this needs one Redis
 * (not Redis Cluster), as the rest of the service's layout does.
 */
const TAKE_OVER = `
local out = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if owner ~= ARGV[1] then
    local beat = redis.call('ZSCORE', KEYS[2], owner)
    if (not beat) or tonumber(beat) < tonumber(ARGV[2]) then
      local key = ARGV[3] .. owner
      local all = redis.call('HGETALL', key)
      for i = 1, #all, 2 do redis.call('HSET', KEYS[3], all[i], all[i + 1]) end
      redis.call('DEL', key)
      redis.call('SREM', KEYS[1], owner)
      if #all > 0 then
        table.insert(out, owner)
        table.insert(out, all)
      end
    end
  end
end
return out
`;

/**
 * Releases entries, and books each one's change only if its field was still there to delete:
 * an entry is counted out once, even when a paused instance taken over as dead releases what
 * its taker also releases. KEYS: the instance's journal. ARGV: the number of terms n, their
 * names, then per entry its id, its tenant's books key and its n changes.
 */
const RELEASE = `
local n = tonumber(ARGV[1])
local i = n + 2
while i <= #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    for j = 1, n do
      local by = tonumber(ARGV[i + 1 + j])
      if by ~= 0 then redis.call('HINCRBY', ARGV[i + 1], ARGV[1 + j], by) end
    end
  end
  i = i + 2 + n
end
return 0
`;

/**
 * Appends entries and counts them in their tenants' books, stopping at the first command that
 * fails (a MULTI would run the increments after a failed HSET). KEYS: the owners set, the
 * instance's journal. ARGV: the instance id, the number of fields f, f fields (id, entry, …),
 * then (books key, term, by) triples. Fields go 500 pairs per HSET (Lua's unpack is bounded).
 */
const APPEND = `
local f = tonumber(ARGV[2])
for i = 3, 2 + f, 1000 do redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 999, 2 + f))) end
redis.call('SADD', KEYS[1], ARGV[1])
for i = 3 + f, #ARGV, 3 do redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
return 0
`;

/** What the journal knows of an entry it holds, to book its release. */
interface Held {
  tenant: TenantId;
  events: number;
  booked: boolean;
}

/** A release waiting for its write. */
interface Release {
  id: string;
  tenant: TenantId;
  change: BookChange;
  written: AtBooks | undefined;
}

/** A release Redis refused is tried again after this long (until the journal stops). */
const RELEASE_RETRY_MS = 1_000;

/**
 * The journal in Redis: one hash per instance (`journal:entries:<instance>`, entry id → entry),
 * so that any live instance can take over a dead one's without it coming back. Appends of a
 * moment go in one script call (one round trip) with their books' increments, the releases of a
 * moment in another that books them. What it survives is what Redis persistence keeps:
 * everything with AOF `always`, all but about a second with `everysec`.
 */
export class RedisJournal implements Journal {
  readonly kind = 'redis' as const;
  private readonly appends: GroupCommit<JournalEntry>;
  private readonly releases: GroupCommit<Release>;
  private readonly own = new Map<string, Held>();
  private stopped = false;
  private leftovers: JournalEntry[] = [];
  private readonly writable: Writability;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly books: RedisBooks,
    private readonly instanceId: string,
    private readonly log: Logger,
    /** An instance silent for this long is dead: its journal is taken over. */
    private readonly leaseMs: number,
    lingerMs = 0,
  ) {
    this.writable = new Writability(log, 'redis');
    this.appends = new GroupCommit(
      (entries) => this.writable.track(() => this.write(entries)),
      lingerMs,
    );
    this.releases = new GroupCommit((items) => this.remove(items), lingerMs);
  }

  private get ownersKey() {
    return this.keys.service('journal', 'owners');
  }
  private entriesKey(instance: string) {
    return this.keys.service('journal', 'entries', instance);
  }

  async start(): Promise<void> {
    // Left by an earlier process under this INSTANCE_ID: replayed as a dead instance's would be.
    const text = await this.redis.hvals(this.entriesKey(this.instanceId));
    this.leftovers = this.decodeAll(text, this.instanceId);
    for (const e of this.leftovers) this.hold(e);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.appends.idle();
    await this.releases.idle();
  }

  get available(): boolean {
    return this.writable.ok && this.redis.status === 'ready';
  }

  get held(): number {
    return this.own.size;
  }

  async append(entry: JournalEntry): Promise<void> {
    try {
      await this.appends.add(entry);
    } catch (err) {
      throw this.writable.refusal(err);
    }
    this.hold(entry);
  }

  release(id: string, outcome: EntryOutcome, written?: AtBooks): BookChange | null {
    const held = this.own.get(id);
    if (!held) return null;
    this.own.delete(id);
    const change = releaseChange(held.events, held.booked, outcome);
    this.releaseSurely({ id, tenant: held.tenant, change, written });
    return change;
  }

  book(tenant: TenantId, change: BookChange, booked?: AtBooks): Promise<void> {
    return this.books.book(tenant, change, booked);
  }

  read(tenant: TenantId, at?: AtBooks): Promise<BookTerms> {
    return this.books.read(tenant, at);
  }

  private hold(e: JournalEntry): void {
    this.own.set(e.id, { tenant: e.tenant, events: e.records.length, booked: e.booked !== false });
  }

  /** Writes a release, again after a while when Redis refuses it (kept meanwhile: never lost). */
  private releaseSurely(r: Release): void {
    this.releases.add(r).catch((err: unknown) => {
      // Left in Redis, the entry is replayed after a crash, and its settled places skipped.
      this.log.warn({ err: asError(err), entry: r.id }, 'journal entry not released yet; kept');
      if (this.stopped) return;
      setTimeout(() => this.releaseSurely(r), RELEASE_RETRY_MS).unref();
    });
  }

  async recover(): Promise<RecoveredEntries[]> {
    const found: RecoveredEntries[] = [];
    if (this.leftovers.length > 0) {
      found.push({ from: this.instanceId, entries: this.leftovers });
      this.leftovers = [];
    }
    const taken = (await this.redis.eval(
      TAKE_OVER,
      3,
      this.ownersKey,
      this.keys.service('cluster', 'instances'),
      this.entriesKey(this.instanceId),
      this.instanceId,
      String(Date.now() - this.leaseMs),
      this.entriesKey(''),
    )) as [string, string[]][] | (string | string[])[];
    for (let i = 0; i < taken.length; i += 2) {
      const owner = taken[i] as string;
      const flat = taken[i + 1] as string[];
      const values = flat.filter((_, j) => j % 2 === 1);
      const entries = this.decodeAll(values, owner);
      for (const e of entries) this.hold(e);
      if (entries.length > 0) found.push({ from: owner, entries });
    }
    return found;
  }

  private decodeAll(values: string[], owner: string): JournalEntry[] {
    const out: JournalEntry[] = [];
    for (const v of values) {
      try {
        out.push(decodeEntry(v));
      } catch (err) {
        this.log.error({ err: asError(err), owner }, 'journal entry unreadable; left out');
      }
    }
    return out;
  }

  private async write(entries: JournalEntry[]): Promise<void> {
    const fields: string[] = [];
    const accepted = new Map<TenantId, number>();
    for (const e of entries) {
      fields.push(e.id, encodeEntry(e));
      accepted.set(e.tenant, (accepted.get(e.tenant) ?? 0) + e.records.length);
    }
    const increments: (string | number)[] = [];
    for (const [tenant, n] of accepted) {
      increments.push(...this.books.increments(tenant, { accepted: n, pending: n }));
    }
    await this.redis.eval(
      APPEND,
      2,
      this.ownersKey,
      this.entriesKey(this.instanceId),
      this.instanceId,
      fields.length,
      ...fields,
      ...increments,
    );
  }

  private async remove(items: Release[]): Promise<void> {
    const args: (string | number)[] = [BOOK_TERMS.length, ...BOOK_TERMS];
    for (const r of items) {
      args.push(r.id, this.books.key(r.tenant), ...BOOK_TERMS.map((k) => r.change[k] ?? 0));
    }
    await this.redis.eval(RELEASE, 1, this.entriesKey(this.instanceId), ...args);
    for (const r of items) r.written?.();
  }
}
