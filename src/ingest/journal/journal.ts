import { JournalUnavailableError } from '../../domain/errors.js';
import { type AuditEventRecord, recordFromJson } from '../../domain/event.js';
import type { TenantId } from '../../domain/tenant.js';
import { asError, type Logger } from '../../logger.js';
import type { AtBooks, BookChange, Books, EntryOutcome } from './books.js';

/** One BUFFERED call as the journal keeps it, until every one of its events has a final status. */
export interface JournalEntry {
  id: string;
  tenant: TenantId;
  records: readonly AuditEventRecord[];
  /**
   * Its append counted its events in the books as accepted and pending (false only for an entry
   * a version without books left behind: its release counts them as accepted instead).
   */
  booked?: boolean;
}

/**
 * Where an accepted event sits in the journal: its call's entry and its place in that call.
 * It travels with the event into its batch (whose transaction records, for every entry, the
 * places it settled) and into a dead letter, so that recovery replays only what neither holds.
 */
export interface JournalRef {
  entry: string;
  position: number;
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
export interface Journal extends Books {
  readonly kind: 'redis' | 'file';
  start(): Promise<void>;
  /** Writes what is still being released, then lets go (entries still held stay for recovery). */
  stop(): Promise<void>;
  /**
   * Resolves once the entry is durable, written together with every entry appended meanwhile,
   * and its events counted in the books as accepted and pending in the same atomic step.
   * Throws JournalUnavailableError when it could not be written (nothing is then counted).
   */
  append(entry: JournalEntry): Promise<void>;
  /**
   * Every event of the entry has a final status: it leaves the journal (grouped, in the
   * background), and its events leave `pending` in the books for `outcome`'s terms in the same
   * atomic step — once, however often it is released. Retried while the store refuses: until
   * released, the entry's events stay pending in the books. Returns the change it books (null
   * when the entry is not held, or is being released already); `written` is called the moment
   * it is in the books.
   */
  release(id: string, outcome: EntryOutcome, written?: AtBooks): BookChange | null;
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

/** Encodes an entry as text (dates as ISO strings); a new entry (no `booked`) is booked. */
export function encodeEntry(e: JournalEntry): string {
  return JSON.stringify({
    id: e.id,
    tenant: e.tenant,
    records: e.records,
    booked: e.booked !== false,
  });
}

/** Decodes `encodeEntry`'s text; throws on anything else. */
export function decodeEntry(text: string): JournalEntry {
  return entryOf(JSON.parse(text));
}

/** An entry from its parsed JSON; throws when `o` is not one. */
export function entryOf(o: unknown): JournalEntry {
  const e = o as {
    id: string;
    tenant: TenantId;
    records: Parameters<typeof recordFromJson>[0][];
    booked?: unknown;
  };
  if (typeof e?.id !== 'string' || typeof e.tenant !== 'string' || !Array.isArray(e.records)) {
    throw new Error('not a journal entry');
  }
  return {
    id: e.id,
    tenant: e.tenant,
    records: e.records.map(recordFromJson),
    booked: e.booked === true,
  };
}

/**
 * Whether a journal's appends succeed, logged when that changes (once, not per call), and the
 * typed error a refused append is answered with.
 */
export class Writability {
  private failing = false;

  constructor(
    private readonly log: Logger,
    /** Where the journal is, as the refusal names it (`redis`, a file's path). */
    private readonly where: string,
  ) {}

  get ok(): boolean {
    return !this.failing;
  }

  /** Runs one group's write, noting whether it worked; its error is passed on. */
  async track(write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (err) {
      if (!this.failing) {
        this.log.error({ err: asError(err) }, 'journal not writable: BUFFERED calls are refused');
      }
      this.failing = true;
      throw err;
    }
    if (this.failing) this.log.info('journal writable again');
    this.failing = false;
  }

  /** The answer to a call whose append failed with `err`. */
  refusal(err: unknown): JournalUnavailableError {
    return new JournalUnavailableError(`${this.where}: ${asError(err).message}`);
  }
}
