import { addInto, type BookTerms, emptyTerms } from './journal/books.js';

/**
 * Per-tenant counters since the process started: the identity's terms as this process counted
 * them (`pending`: in the buffer, in a write in flight, or waiting in backoff), and more. Each is
 * counted where its event happens — none is derived from the others — so the identity
 *   accepted = stored + duplicates + pending + deadLettered + discarded
 * is a real check, not an arithmetic tautology.
 */
export interface TenantStats extends BookTerms {
  /** Events the retry worker stored (or found duplicate) out of the dead-letter queue. */
  replayed: number;
  /**
   * Events taken back from a journal left by a process that is gone (also in `accepted` here,
   * which the dead process's counters no longer show).
   */
  recovered: number;
  /** Duplicates whose content differed from the stored event (a subset of `duplicates`). */
  conflicts: number;
  /**
   * What this process decided and the books do not have yet (auditStats adds it to them): a
   * call outside the journal from its acceptance (accepted and pending, then its final terms)
   * until it is booked; a journal entry's release until it is written; a dead letter's move.
   */
  unbooked: BookTerms;
  /** Removed by retention (outside the identity). */
  expired: number;
  batches: number;
  failedWrites: number;
  lastError: string | null;
  lastErrorAt: Date | null;
}

export function emptyStats(): TenantStats {
  return {
    accepted: 0,
    stored: 0,
    duplicates: 0,
    pending: 0,
    deadLettered: 0,
    discarded: 0,
    replayed: 0,
    recovered: 0,
    conflicts: 0,
    unbooked: emptyTerms(),
    expired: 0,
    batches: 0,
    failedWrites: 0,
    lastError: null,
    lastErrorAt: null,
  };
}

/** True when the accounting identity holds. */
export function identityHolds(s: TenantStats): boolean {
  return s.accepted === s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded;
}

/**
 * The identity's terms as auditStats gives them: the books (every instance, every process since
 * the tenant's first event) plus what live instances decided and have not booked yet (`s`'s
 * `unbooked`, summed over them); the other counters as `s` has them (since the instances started).
 */
export function withBooks(s: TenantStats, books: BookTerms): TenantStats {
  const terms = { ...books };
  addInto(terms, s.unbooked);
  return { ...s, ...terms };
}
