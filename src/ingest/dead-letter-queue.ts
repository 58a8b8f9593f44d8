import { type AuditEventRecord, recordFromJson } from '../domain/event.js';
import type { TenantId } from '../domain/tenant.js';
import type { JournalRef } from './journal/journal.js';

export type DeadLetterState = 'ACTIVE' | 'PARKED';

/**
 * Events that could not be stored, kept with why and how often they were tried. ACTIVE ones are
 * replayed by the retry worker on its schedule; after the last attempt they are PARKED: kept,
 * listed, and replayed only when someone asks (replayDeadLetters).
 */
export interface DeadLetter {
  /** Stable id; also the batch id of its replays, so the ledger recognises a replay already done. */
  id: string;
  tenant: TenantId;
  state: DeadLetterState;
  records: AuditEventRecord[];
  /** SQLSTATE of the last failure, when the database gave one. */
  errorCode: string | null;
  /** Sanitised message of the last failure (no SQL, no parameters). */
  error: string;
  /** Write attempts so far (in the writer and by the retry worker). */
  attempts: number;
  /** Replays by the retry worker since it was enqueued or last replayed by hand. */
  replays?: number;
  firstFailedAt: Date;
  lastFailedAt: Date;
  /** When the retry worker tries next (ACTIVE only). */
  nextAttemptAt: Date | null;
  /**
   * Each record's place in the journal (null: not journaled), while its call's entry may still
   * be there: recovery leaves to the queue what the queue holds, and a replay records it.
   */
  journalRefs?: (JournalRef | null)[] | undefined;
}

export interface DeadLetterDepth {
  entries: number;
  events: number;
  parkedEntries: number;
  parkedEvents: number;
  /** Age of the oldest dead letter, ms; 0 when empty. */
  oldestAgeMs: number;
}

export interface DeadLetterListOptions {
  state?: DeadLetterState | null;
  errorCode?: string | null;
}

/**
 * Where dead letters live: Redis streams (with REDIS_URL) or files beside the embedded database.
 * Every method that changes the queue resolves only once the change is durable in the store.
 */
export interface DeadLetterStore {
  readonly kind: 'redis' | 'file';
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Stores a new dead letter. */
  add(dl: DeadLetter): Promise<void>;
  get(tenant: TenantId, id: string): Promise<DeadLetter | null>;
  list(tenant: TenantId, opts?: DeadLetterListOptions): Promise<DeadLetter[]>;
  /**
   * Dead letters whose next attempt is due, claimed for this instance alone (several instances
   * share the work; a claim abandoned by a dead instance is reclaimed after a lease).
   */
  claimDue(limit: number): Promise<DeadLetter[]>;
  /** A claimed dead letter was stored: remove it. */
  complete(dl: DeadLetter): Promise<void>;
  /**
   * A claimed dead letter failed again, or was reduced to its bad rows under a new id
   * (`previousId` then names the claimed one): store its new state, ACTIVE or PARKED.
   */
  reschedule(dl: DeadLetter, previousId?: string): Promise<void>;
  /** Makes a PARKED dead letter ACTIVE and due now (attempts start again); null if no such parked one. */
  replay(tenant: TenantId, id: string): Promise<DeadLetter | null>;
  /** Removes a PARKED dead letter for good; returns it, or null if no such parked one. */
  discard(tenant: TenantId, id: string): Promise<DeadLetter | null>;
  depth(): Promise<DeadLetterDepth>;
  /** Is the store reachable right now? */
  healthy(): Promise<boolean>;
}

/** Dead letters as JSON (dates as ISO strings). */
export function serialiseDeadLetter(dl: DeadLetter): string {
  return JSON.stringify(dl);
}

export function parseDeadLetter(text: string): DeadLetter {
  const o = JSON.parse(text) as DeadLetter & Record<string, unknown>;
  const date = (v: unknown) => new Date(v as string);
  return {
    ...o,
    firstFailedAt: date(o.firstFailedAt),
    lastFailedAt: date(o.lastFailedAt),
    nextAttemptAt: o.nextAttemptAt ? date(o.nextAttemptAt) : null,
    records: o.records.map(recordFromJson),
  };
}
