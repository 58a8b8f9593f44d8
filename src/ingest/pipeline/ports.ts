import type { AuditEventRecord } from '../../domain/event.js';
import type { TenantId } from '../../domain/tenant.js';
import type { RowRejection, WriteStatus } from '../batch-writer.js';
import type { DeadLetter } from '../dead-letter-queue.js';
import type { BatchSettled, DeadLetterEvent } from '../events.js';
import type { Books } from '../journal/books.js';
import type { Journal, JournalRef } from '../journal/journal.js';

/** What one batch write decided, row by row. */
export interface WriteOutcome {
  /** One status per record, in the order given. */
  statuses: readonly WriteStatus[];
  /** Why each REJECTED record (by position) was refused. */
  rejections: ReadonlyMap<number, RowRejection>;
  /** Duplicates whose content differs from the stored event. */
  conflicts: number;
  /** Each STORED record's position in its month's chain, when the sink knows it. */
  chainSeqs?: readonly (number | null)[];
}

/**
 * Everything the write pipeline hands out of the process. Each method resolves once its
 * destination has the events durably, and throws when it cannot take them.
 */
export interface PipelineSink {
  /**
   * Writes one batch of a tenant under `batchId` (a retry reuses the id). Throws when the batch
   * as a whole was not written (connection lost, timeout, …); rows the database refuses come
   * back as REJECTED instead.
   */
  write(
    tenant: TenantId,
    batchId: string,
    records: readonly AuditEventRecord[],
    /** Each record's place in the journal (null: not journaled); recorded with the commit. */
    journal?: readonly (JournalRef | null)[],
  ): Promise<WriteOutcome>;
  /** Stores a dead letter in the dead-letter queue. */
  deadLetter(dl: DeadLetter): Promise<void>;
  /**
   * At shutdown, keeps a dead letter that the dead-letter queue could not take (local files the
   * next start re-queues). Absent: such events stay pending and are reported lost.
   */
  spool?(dl: DeadLetter): Promise<void>;
  /**
   * The write-ahead journal of clients' BUFFERED calls: such a call is answered only once its
   * entry is appended (it throws when it cannot be), and the entry is released once every event
   * of the call has a final status. Absent: BUFFERED means this process's memory.
   */
  journal?: Pick<Journal, 'append' | 'release'>;
  /**
   * The books (the identity's terms that outlive the process): a call outside the journal is
   * booked here once every one of its events is final. Absent: only this process's counters.
   */
  books?: Books;
}

/** Who is told what the pipeline settled (subscriptions, metrics). Called synchronously. */
export interface PipelineListener {
  batchSettled(e: BatchSettled): void;
  deadLetter(e: DeadLetterEvent): void;
}

/** An armed timer, as `Clock.setTimeout` returned it; only ever given back to `clearTimeout`. */
export type TimerHandle = unknown;

/** Time as the pipeline sees it: wall clock, a monotonic clock for durations, and timers. */
export interface Clock {
  /** Milliseconds since the epoch (timestamps and deadlines). */
  now(): number;
  /** Monotonic milliseconds (durations only). */
  monotonic(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(timer: TimerHandle | undefined): void;
}

/** The process's clock and timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout | undefined),
};
