import type { Redis } from 'ioredis';
import type { TenantId } from '../../domain/tenant.js';
import { asError, type Logger } from '../../logger.js';
import type { RedisKeys } from '../../redis/client.js';
import { GroupCommit } from './group-commit.js';

/**
 * A tenant's terms of the accounting identity
 *   accepted = stored + duplicates + pending + deadLettered + discarded
 * as the books keep them: since the tenant's first event, over every process and instance, in
 * the store the journal lives in (Redis, or the journal file) — not since a process started.
 */
export interface BookTerms {
  accepted: number;
  stored: number;
  duplicates: number;
  pending: number;
  deadLettered: number;
  discarded: number;
}

export const BOOK_TERMS = [
  'accepted',
  'stored',
  'duplicates',
  'pending',
  'deadLettered',
  'discarded',
] as const satisfies readonly (keyof BookTerms)[];

/** What a step changes in a tenant's books (absent terms do not change). */
export type BookChange = Partial<BookTerms>;

/** How a journal entry's events ended, as its release books them. */
export interface EntryOutcome {
  stored: number;
  duplicates: number;
  deadLettered: number;
  /** Events of the entry that were never accepted (the call was refused after its append). */
  withdrawn?: number;
}

export function emptyTerms(): BookTerms {
  return { accepted: 0, stored: 0, duplicates: 0, pending: 0, deadLettered: 0, discarded: 0 };
}

/** A tenant's terms in `map`, made empty there when it has none yet. */
export function termsOf(map: Map<TenantId, BookTerms>, tenant: TenantId): BookTerms {
  const found = map.get(tenant);
  if (found) return found;
  const made = emptyTerms();
  map.set(tenant, made);
  return made;
}

/** Adds `change` into `terms` (in place); `sign` -1 takes it out again. */
export function addInto(terms: BookTerms, change: BookChange, sign: 1 | -1 = 1): void {
  for (const k of BOOK_TERMS) terms[k] += sign * (change[k] ?? 0);
}

/**
 * What releasing an entry of `events` events changes: its events leave `pending` for their final
 * terms. An entry appended before the books existed (`booked` false) was never counted as
 * accepted and pending: it is counted as accepted now instead.
 */
export function releaseChange(events: number, booked: boolean, o: EntryOutcome): BookChange {
  const withdrawn = o.withdrawn ?? 0;
  return {
    ...(booked ? { pending: -events, accepted: -withdrawn } : { accepted: events - withdrawn }),
    stored: o.stored,
    duplicates: o.duplicates,
    deadLettered: o.deadLettered,
  };
}

/**
 * Called the moment a change is in the books, or the moment they are read: a process counts
 * what it decided and has not booked yet (auditStats adds it to the books), and takes it out in
 * the same step the store acknowledges it, so that a read here never counts it twice or not at
 * all. (Each store calls these in the first continuation of its I/O; see RedisBooks.)
 */
export type AtBooks = () => void;

/**
 * The books of every tenant. Appending and releasing a journal entry change them in the same
 * atomic step as the journal (see Journal); `book` changes them for what no entry carries: a
 * call outside the journal once its events are final (COMMITTED calls, access records), and
 * moves between final terms (a dead letter stored by a replay, or discarded).
 */
export interface Books {
  /** Resolves once the change is kept where `read` finds it (every instance, the next start). */
  book(tenant: TenantId, change: BookChange, booked?: AtBooks): Promise<void>;
  read(tenant: TenantId, at?: AtBooks): Promise<BookTerms>;
}

/** Books that last as long as the process: JOURNAL=off without Redis (counts since start). */
export class MemoryBooks implements Books {
  private readonly terms = new Map<TenantId, BookTerms>();
  async book(tenant: TenantId, change: BookChange, booked?: AtBooks): Promise<void> {
    addInto(termsOf(this.terms, tenant), change);
    booked?.();
  }
  async read(tenant: TenantId, at?: AtBooks): Promise<BookTerms> {
    at?.();
    return { ...(this.terms.get(tenant) ?? emptyTerms()) };
  }
}

/**
 * Adds (key, term, by) triples from ARGV with HINCRBY. A script, not a MULTI: ioredis settles
 * a script's reply as it settles an HGETALL's, so what is booked before a read is taken out of
 * this process's unbooked counts before the read is seen (a MULTI's reply settles later).
 */
const INCREMENT = `
for i = 1, #ARGV, 3 do redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
return 0
`;

interface Booking {
  tenant: TenantId;
  change: BookChange;
  booked: AtBooks | undefined;
}

/**
 * The books in Redis: one hash per tenant (`t:<tenant>:books`, term → count), read with one
 * HGETALL. `book` groups the changes of a moment into one script call; the journal adds its
 * own changes to its appends' and releases' scripts (`key`, `increments`).
 */
export class RedisBooks implements Books {
  private readonly changes: GroupCommit<Booking>;

  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
  ) {
    this.changes = new GroupCommit(async (items) => {
      const args: (string | number)[] = [];
      for (const { tenant, change } of items) args.push(...this.increments(tenant, change));
      if (args.length > 0) await this.redis.eval(INCREMENT, 0, ...args);
      for (const { booked } of items) booked?.();
    });
  }

  key(tenant: TenantId): string {
    return this.keys.tenant(tenant, 'books');
  }

  /** `change` as (key, term, by) triples, none for a term that does not change. */
  increments(tenant: TenantId, change: BookChange): (string | number)[] {
    const out: (string | number)[] = [];
    for (const k of BOOK_TERMS) {
      const by = change[k] ?? 0;
      if (by !== 0) out.push(this.key(tenant), k, by);
    }
    return out;
  }

  book(tenant: TenantId, change: BookChange, booked?: AtBooks): Promise<void> {
    return this.changes.add({ tenant, change, booked });
  }

  async read(tenant: TenantId, at?: AtBooks): Promise<BookTerms> {
    const h = await this.redis.hgetall(this.key(tenant));
    at?.();
    const terms = emptyTerms();
    for (const k of BOOK_TERMS) terms[k] = Number(h[k] ?? 0);
    return terms;
  }
}

/**
 * Books `change`, trying again (250 ms doubling to 5 s) while the store refuses, until it takes
 * it or `giveUp` says the process is stopping; resolves true once booked. The change is the
 * record of events already final: dropped, the books would show them pending (or in the wrong
 * term) for good.
 */
export async function bookSurely(
  books: Books,
  tenant: TenantId,
  change: BookChange,
  log: Logger,
  giveUp: () => boolean,
  booked?: AtBooks,
): Promise<boolean> {
  for (let delay = 250; ; delay = Math.min(delay * 2, 5_000)) {
    try {
      await books.book(tenant, change, booked);
      return true;
    } catch (err) {
      if (giveUp()) {
        log.error({ err: asError(err), tenant, change }, 'books not updated; the change is lost');
        return false;
      }
      log.warn({ err: asError(err), tenant, retryInMs: delay }, 'books not updated; trying again');
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
