/**
 * Per-tenant counters since the process started. Each is counted where its event happens —
 * none is derived from the others — so the identity
 *   accepted = stored + duplicates + pending + deadLettered + discarded
 * is a real check, not an arithmetic tautology.
 */
export interface TenantStats {
  accepted: number;
  stored: number;
  duplicates: number;
  /** In the buffer, in a write in flight, or waiting in backoff. */
  pending: number;
  deadLettered: number;
  discarded: number;
  /** Events the retry worker stored (or found duplicate) out of the dead-letter queue. */
  replayed: number;
  /**
   * Events taken back from a journal left by a process that is gone (also in `accepted` here,
   * which the dead process's counters no longer show).
   */
  recovered: number;
  /** Duplicates whose content differed from the stored event (a subset of `duplicates`). */
  conflicts: number;
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
