import { type AuditEventRecord, recordFromJson } from '../../domain/event.js';
import type { TenantId } from '../../domain/tenant.js';

/** One BUFFERED call as the journal keeps it, until every one of its events has a final status. */
export interface JournalEntry {
  id: string;
  tenant: TenantId;
  records: readonly AuditEventRecord[];
}

/** What recovery found: entries left by a process that is gone, and whose they were. */
export interface RecoveredEntries {
  /** The instance whose journal held them (this one's own leftovers at start, or a dead one's). */
  from: string;
  entries: JournalEntry[];
}

/**
 * The write-ahead journal of BUFFERED calls: a call is answered BUFFERED only once its events
 * are here, and an entry leaves only once all of its events are stored, duplicates or
 * dead-lettered. What a crashed process held is found here by the next start, or (with Redis)
 * by a live instance once the dead one's heartbeat is older than the lease.
 */
export interface Journal {
  readonly kind: 'redis' | 'file';
  start(): Promise<void>;
  /** Writes what is still being released, then lets go (entries still held stay for recovery). */
  stop(): Promise<void>;
  /**
   * Resolves once the entry is durable, written together with every entry appended meanwhile.
   * Throws JournalUnavailableError when it could not be written.
   */
  append(entry: JournalEntry): Promise<void>;
  /** Every event of the entry has a final status: it leaves the journal (grouped, in the background). */
  release(id: string): void;
  /**
   * Entries no live process holds, moved into this instance's journal before they are returned
   * (so a kill during their replay leaves them to the next recovery): at start this instance's
   * own leftovers, later the journals of instances whose heartbeat stopped.
   */
  recover(): Promise<RecoveredEntries[]>;
  /** True while appends succeed (false after a failed one, until one succeeds again). */
  readonly available: boolean;
  /** Entries held now by this instance (appended or recovered, not yet released). */
  readonly held: number;
}

/** Encodes an entry as text (dates as ISO strings). */
export function encodeEntry(e: JournalEntry): string {
  return JSON.stringify({ id: e.id, tenant: e.tenant, records: e.records });
}

/** Decodes `encodeEntry`'s text; throws on anything else. */
export function decodeEntry(text: string): JournalEntry {
  const o = JSON.parse(text) as { id: string; tenant: TenantId; records: AuditEventRecord[] };
  if (typeof o.id !== 'string' || typeof o.tenant !== 'string' || !Array.isArray(o.records)) {
    throw new Error('not a journal entry');
  }
  return {
    id: o.id,
    tenant: o.tenant,
    records: o.records.map(recordFromJson),
  };
}
