import type { AuditEventRecord } from '../domain/event.js';
import type { TenantId } from '../domain/tenant.js';
import type { Logger } from '../logger.js';

export type FlushTrigger = 'size' | 'interval' | 'flush' | 'commit-wait' | 'shutdown' | 'retry';
export type SettledStatus = 'STORED' | 'DUPLICATE' | 'DEAD_LETTERED';
/** How a COMMITTED call's wait ended: its events settled, or CommitTimeoutError. */
export type CommitOutcome = 'settled' | 'timeout';

/** A COMMITTED createAuditEvents call was answered after `ms`. */
export interface CommitWaited {
  ms: number;
  outcome: CommitOutcome;
}

/** One batch reached a final status for each of its events (some may be dead-lettered). */
export interface BatchSettled {
  tenant: TenantId;
  batchId: string;
  trigger: FlushTrigger;
  attempts: number;
  committedAt: Date;
  durationMs: number;
  instanceId: string;
  records: readonly AuditEventRecord[];
  statuses: readonly SettledStatus[];
  /**
   * Each STORED record's position in its month's hash chain, parallel to `records` (null for the
   * others, and where the writer could not say: a batch an earlier attempt had committed).
   */
  chainSeqs?: readonly (number | null)[];
  /**
   * True when these events come out of the dead-letter queue: they were already reported once
   * (as DEAD_LETTERED), so a waiter counting its events must not count them again.
   */
  recovered?: boolean;
}

export type DeadLetterEventKind =
  | 'ENQUEUED'
  | 'RETRIED'
  | 'RECOVERED'
  | 'PARKED'
  | 'REPLAYED'
  | 'DISCARDED';

/** A step in the life of a dead letter. */
export interface DeadLetterEvent {
  tenant: TenantId;
  kind: DeadLetterEventKind;
  deadLetterId: string;
  events: number;
  attempts: number;
  error: string | null;
  at: Date;
  instanceId: string;
}

/**
 * What the write path reports to the rest of the service (subscriptions, metrics). Listeners
 * run synchronously after the fact; one that throws is logged and never disturbs the writer.
 */
export class IngestEvents {
  private readonly settled: ((e: BatchSettled) => void)[] = [];
  private readonly deadLetters: ((e: DeadLetterEvent) => void)[] = [];
  private readonly commitWaits: ((e: CommitWaited) => void)[] = [];

  constructor(private readonly log: Logger) {}

  onBatchSettled(listener: (e: BatchSettled) => void): () => void {
    this.settled.push(listener);
    return () => remove(this.settled, listener);
  }

  onDeadLetter(listener: (e: DeadLetterEvent) => void): () => void {
    this.deadLetters.push(listener);
    return () => remove(this.deadLetters, listener);
  }

  onCommitWaited(listener: (e: CommitWaited) => void): () => void {
    this.commitWaits.push(listener);
    return () => remove(this.commitWaits, listener);
  }

  batchSettled(e: BatchSettled): void {
    this.emit(this.settled, e);
  }

  deadLetter(e: DeadLetterEvent): void {
    this.emit(this.deadLetters, e);
  }

  commitWaited(ms: number, outcome: CommitOutcome): void {
    this.emit(this.commitWaits, { ms, outcome });
  }

  private emit<E>(listeners: ((e: E) => void)[], e: E): void {
    for (const listener of [...listeners]) {
      try {
        listener(e);
      } catch (err) {
        this.log.error({ err }, 'ingest event listener failed');
      }
    }
  }
}

function remove<T>(list: T[], item: T): void {
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
}
