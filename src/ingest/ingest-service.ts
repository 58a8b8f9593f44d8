import { ShuttingDownError } from '../domain/errors.js';
import type { AuditEventRecord } from '../domain/event.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { DeadLetter, DeadLetterStore } from './dead-letter-queue.js';
import { type BookChange, type Books, type BookTerms, MemoryBooks } from './journal/books.js';
import type { Journal, JournalEntry, JournalRef } from './journal/journal.js';
import {
  type PipelineListener,
  type PipelineSink,
  systemClock,
  type WriteOutcome,
} from './pipeline/ports.js';
import {
  type AcceptedEvent,
  type Ack,
  type FlushResult,
  type Holding,
  type PipelineOptions,
  WritePipeline,
} from './pipeline/write-pipeline.js';
import type { TenantStats } from './stats.js';

export type { EventStatus } from './pipeline/ticket.js';
export type { AcceptedEvent, Ack, FlushResult, Holding } from './pipeline/write-pipeline.js';

/** Look-ups of what a stopped process had written before its calls are replayed whole. */
const RECOVERY_LOOKUP_ATTEMPTS = 4;

export interface IngestOptions extends PipelineOptions {
  /**
   * Refuses (throws ValidationError) a call whose months would take the tenant past its
   * partition ceilings, before anything of it is accepted (the partition manager).
   */
  partitions?: { admit(schema: string, dates: readonly Date[]): Promise<void> };
}

/** What the service needs of the database writer: one batch into one tenant schema. */
export interface BatchSink {
  write(
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    journal?: readonly (JournalRef | null)[],
  ): Promise<WriteOutcome>;
  /** For each of these journal entries, the places committed batches settled. */
  settledPositions(schema: string, entries: readonly string[]): Promise<Map<string, Set<number>>>;
}

/**
 * The write path: the pipeline's rules (WritePipeline) over the database writer, the
 * dead-letter queue, the shutdown spool and the service's ingest events, on the process clock.
 * Partition ceilings are checked here, before the pipeline sees a call.
 */
export class IngestService {
  private readonly pipeline: WritePipeline;

  constructor(
    private readonly writer: BatchSink,
    private readonly deadLetters: DeadLetterStore,
    events: PipelineListener,
    private readonly log: Logger,
    private readonly opts: IngestOptions,
    /** Local files for what neither the database nor the dead-letter queue took at shutdown. */
    spool?: DeadLetterStore,
    /** Where BUFFERED calls are kept until written (absent: JOURNAL=off). */
    readonly journal?: Journal,
    /**
     * The identity's terms that outlive the process (default: the journal's; without one, this
     * process's memory).
     */
    private readonly books: Books = journal ?? new MemoryBooks(),
  ) {
    const sink: PipelineSink = {
      write: (tenant, batchId, records, refs) =>
        writer.write(tenantSchema(tenant), batchId, records, refs),
      deadLetter: (dl) => deadLetters.add(dl),
      spool: spool ? (dl: DeadLetter) => spool.add(dl) : undefined,
      journal,
      books,
    };
    this.pipeline = new WritePipeline(sink, events, log, opts, systemClock);
  }

  /**
   * Takes back what the journal holds that no live process will write (this instance's own
   * leftovers at start; with Redis, the journals of instances whose heartbeat stopped): of each
   * call, the events that no committed batch settled and no dead letter holds (a process killed
   * between its commit and its journal's release leaves such places) are accepted here again and
   * written as any others, so that none is stored twice or comes back as its own duplicate.
   * The books count them pending (from their append) until their entry's release books how each
   * ended, those found settled included. Resolves once they are in the buffers (not once
   * written). Returns the number of events taken back.
   */
  async recoverJournal(): Promise<number> {
    const journal = this.journal;
    if (!journal) return 0;
    let total = 0;
    for (const { from, entries } of await journal.recover()) {
      const byTenant = new Map<TenantId, JournalEntry[]>();
      for (const e of entries) {
        const of = byTenant.get(e.tenant);
        if (of) of.push(e);
        else byTenant.set(e.tenant, [e]);
      }
      let events = 0;
      let settled = 0;
      let deadLettered = 0;
      const written: Promise<void>[] = [];
      for (const [tenant, held] of byTenant) {
        const { stored, queued } = await this.placesTaken(tenant, held);
        for (const e of held) {
          const positions: number[] = [];
          // Settled before the stop: booked as stored (a committed batch does not say which of
          // its places were duplicates) or dead-lettered with the entry's release.
          const before = { stored: 0, duplicates: 0, deadLettered: 0 };
          e.records.forEach((_, i) => {
            if (stored.get(e.id)?.has(i)) before.stored++;
            else if (queued.get(e.id)?.has(i)) before.deadLettered++;
            else positions.push(i);
          });
          settled += before.stored;
          deadLettered += before.deadLettered;
          events += positions.length;
          written.push(
            this.pipeline.adopt(
              tenant,
              { id: e.id, events: e.records.length, booked: e.booked !== false },
              positions.map((i) => e.records[i]!),
              positions,
              before,
            ),
          );
        }
      }
      total += events;
      this.log.warn(
        {
          from,
          calls: entries.length,
          events,
          alreadyStored: settled,
          alreadyDeadLettered: deadLettered,
        },
        'journal recovered: writing BUFFERED events a stopped process had not written',
      );
      void Promise.all(written).then(() =>
        this.log.info({ from, calls: entries.length, events }, 'journal recovery written'),
      );
    }
    return total;
  }

  /**
   * Places of these entries that are settled already (in a committed batch) or queued (in a
   * dead letter). Asked a few times (about 2 s in all); when the database or the queue still
   * cannot say, nothing is taken as settled: the calls are replayed whole and kept visibly
   * pending meanwhile — a repeat of an event the stopped process had stored then comes back as a
   * DUPLICATE, never as a loss.
   */
  private async placesTaken(
    tenant: TenantId,
    entries: readonly JournalEntry[],
  ): Promise<{ stored: Map<string, Set<number>>; queued: Map<string, Set<number>> }> {
    const ids = new Set(entries.map((e) => e.id));
    for (let attempt = 1; ; attempt++) {
      try {
        const stored = await this.writer.settledPositions(tenantSchema(tenant), [...ids]);
        const queued = new Map<string, Set<number>>();
        for (const dl of await this.deadLetters.list(tenant)) {
          for (const ref of dl.journalRefs ?? []) {
            if (!ref || !ids.has(ref.entry)) continue;
            const places = queued.get(ref.entry) ?? new Set<number>();
            places.add(ref.position);
            queued.set(ref.entry, places);
          }
        }
        return { stored, queued };
      } catch (err) {
        if (attempt >= RECOVERY_LOOKUP_ATTEMPTS || this.pipeline.isStopping) {
          this.log.error(
            { err, tenant, calls: entries.length },
            'journal recovery cannot tell what a stopped process had written; replaying its calls whole',
          );
          return { stored: new Map(), queued: new Map() };
        }
        const delayMs = 250 * 2 ** (attempt - 1);
        this.log.warn(
          { err, tenant, attempt, retryInMs: delayMs },
          'journal recovery waits: cannot yet tell what a stopped process had written',
        );
        await new Promise((resolve) => setTimeout(resolve, delayMs));
      }
    }
  }

  /**
   * What accept() would refuse a call of `events` events with now, from their number alone
   * (WritePipeline.refusal); null when it may be accepted.
   */
  refusal(tenant: TenantId, events: number): Error | null {
    return this.pipeline.refusal(tenant, events);
  }

  /**
   * Accepts a validated call whole, or rejects it whole (ShuttingDownError, BackpressureError,
   * ValidationError when its months would need more partitions than the tenant may have).
   * With COMMITTED it resolves once every event is STORED or DUPLICATE (or throws
   * CommitTimeoutError, the events staying accepted and pending); with BUFFERED at once.
   */
  async accept(
    tenant: TenantId,
    records: readonly AuditEventRecord[],
    ack: Ack,
    holding: Holding = 'client',
  ): Promise<AcceptedEvent[]> {
    if (this.pipeline.isStopping) throw new ShuttingDownError();
    if (this.opts.partitions) {
      await this.opts.partitions.admit(
        tenantSchema(tenant),
        records.map((r) => r.occurredAt),
      );
      // Nothing is held across that wait; the pipeline decides at once (stopping included).
    }
    return this.pipeline.accept(tenant, records, ack, holding);
  }

  /**
   * The barrier: every event of this tenant accepted before the call (in the buffer, in flight,
   * in backoff, or a COMMITTED call still waiting) reaches a final status, or FlushTimeoutError
   * says how many did not. A batch waiting in backoff is retried now.
   */
  flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult> {
    return this.pipeline.flush(tenant, timeoutMs);
  }

  /** Counters of one tenant since this process started (a copy). */
  stats(tenant: TenantId): TenantStats {
    return this.pipeline.stats(tenant);
  }

  /**
   * The tenant's books, and this process's counters taken at the moment they are read (so that
   * what it has not booked yet is counted once): see withBooks.
   */
  async readBooks(tenant: TenantId): Promise<{ books: BookTerms; local: TenantStats }> {
    let local: TenantStats | undefined;
    const books = await this.books.read(tenant, () => {
      local = this.pipeline.stats(tenant);
    });
    return { books, local: local ?? this.pipeline.stats(tenant) };
  }

  /** Books a move between final terms (in the background, tried until it is taken). */
  private rebook(tenant: TenantId, change: BookChange): void {
    this.pipeline.book(tenant, change);
  }

  /** Tenants this process has accepted events for (or counted dead letters of) since it started. */
  tenantIds(): TenantId[] {
    return this.pipeline.tenantIds();
  }

  /** Bytes held by pending events over all tenants (bounded by bufferMaxBytes). */
  get bufferBytes(): number {
    return this.pipeline.bufferBytes;
  }

  /** Sum of pending events over all tenants. */
  get pendingTotal(): number {
    return this.pipeline.pendingTotal;
  }

  /** The retry worker stored (part of) a dead letter: it leaves `deadLettered`. */
  recordRecovered(tenant: TenantId, stored: number, duplicates: number): void {
    this.pipeline.recordRecovered(tenant, stored, duplicates);
    this.rebook(tenant, { deadLettered: -(stored + duplicates), stored, duplicates });
  }

  /** A dead letter was discarded on purpose: counted, never silent. */
  recordDiscarded(tenant: TenantId, events: number): void {
    this.pipeline.recordDiscarded(tenant, events);
    this.rebook(tenant, { deadLettered: -events, discarded: events });
  }

  /** Stored events removed by retention (a dropped month): counted, outside the identity. */
  recordExpired(tenant: TenantId, events: number): void {
    this.pipeline.recordExpired(tenant, events);
  }

  /** Events moved into the dead-letter queue from outside the buffers (a spool re-queued at start). */
  recordRequeued(tenant: TenantId, events: number): void {
    this.pipeline.recordRequeued(tenant, events);
    // Spooled at a stop that could not reach the queue (nor, then, the books): booked now.
    this.rebook(tenant, { accepted: events, deadLettered: events });
  }

  /** The dead-letter monitor's verdict: at capacity, new writes get BackpressureError. */
  setDeadLettersFull(full: boolean): void {
    this.pipeline.setDeadLettersFull(full);
  }

  get isDeadLetterQueueFull(): boolean {
    return this.pipeline.isDeadLetterQueueFull;
  }

  get isStopping(): boolean {
    return this.pipeline.isStopping;
  }

  /**
   * Stops accepting, then writes everything held until done or the deadline passes. Returns how
   * many events are still pending (they are logged as an error: the process is about to lose them).
   */
  stop(deadlineMs: number): Promise<number> {
    return this.pipeline.stop(deadlineMs);
  }
}
