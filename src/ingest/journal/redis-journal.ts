import type { Redis } from 'ioredis';
import { asError, type Logger } from '../../logger.js';
import { execChecked, type RedisKeys } from '../../redis/client.js';
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
 * The journal in Redis: one hash per instance (`journal:entries:<instance>`, entry id → entry),
 * so that any live instance can take over a dead one's without it coming back. Appends of a
 * moment go in one MULTI (one round trip); releases in one HDEL. What it survives is what Redis
 * persistence keeps: everything with AOF `always`, all but about a second with `everysec`.
 */
export class RedisJournal implements Journal {
  readonly kind = 'redis' as const;
  private readonly appends: GroupCommit<JournalEntry>;
  private readonly releases: GroupCommit<string>;
  private readonly own = new Set<string>();
  private leftovers: JournalEntry[] = [];
  private readonly writable: Writability;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
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
    this.releases = new GroupCommit((ids) => this.remove(ids), lingerMs);
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
    for (const e of this.leftovers) this.own.add(e.id);
  }

  async stop(): Promise<void> {
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
    this.own.add(entry.id);
  }

  release(id: string): void {
    if (!this.own.delete(id)) return;
    this.releases.add(id).catch((err: unknown) => {
      // Left in Redis, the entry is replayed after a crash and found stored: a duplicate, not a loss.
      this.log.warn({ err: asError(err), entry: id }, 'journal entry not released; kept');
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
      for (const e of entries) this.own.add(e.id);
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
    for (const e of entries) fields.push(e.id, encodeEntry(e));
    await execChecked(
      this.redis
        .multi()
        .sadd(this.ownersKey, this.instanceId)
        .hset(this.entriesKey(this.instanceId), ...fields),
    );
  }

  private async remove(ids: string[]): Promise<void> {
    await this.redis.hdel(this.entriesKey(this.instanceId), ...ids);
  }
}
