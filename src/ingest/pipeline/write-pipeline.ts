import { randomUUID } from 'node:crypto';
import { sqlState } from '../../db/client.js';
import {
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  LimitExceededError,
  ShuttingDownError,
} from '../../domain/errors.js';
import { type AuditEventRecord, recordBytes } from '../../domain/event.js';
import type { TenantId } from '../../domain/tenant.js';
import type { Logger } from '../../logger.js';
import type { DeadLetter } from '../dead-letter-queue.js';
import type { FlushTrigger, SettledStatus } from '../events.js';
import { classifyWriteError, describeWriteError, writeErrorForLog } from '../failure-classifier.js';
import {
  addInto,
  type BookChange,
  bookSurely,
  type EntryOutcome,
  emptyTerms,
} from '../journal/books.js';
import type { JournalRef } from '../journal/journal.js';
import { emptyStats, type TenantStats } from '../stats.js';
import type { Clock, PipelineListener, PipelineSink, TimerHandle } from './ports.js';
import { type EventStatus, Ticket } from './ticket.js';

export type Ack = 'COMMITTED' | 'BUFFERED';

/**
 * Where a call's events are held. A client's writes count against BUFFER_CAPACITY. The
 * service's access records are held in their own per-tenant share instead
 * (ACCESS_LOG_BUFFER_CAPACITY), so that reads — however many — never take room from the
 * tenant's writes: `read` records are refused when the share is full (the read is then refused
 * too, never served unrecorded); `admin` records (key and tenant administration, dead-letter
 * actions: rare, and recording an action already done) are always given a place in it.
 */
export type Holding = 'client' | 'read' | 'admin';

export interface PipelineOptions {
  batchSize: number;
  flushIntervalMs: number;
  commitLingerMs: number;
  commitTimeoutMs: number;
  bufferCapacity: number;
  bufferMaxBytes: number;
  /** Access records one tenant may have pending, apart from bufferCapacity (`read` holdings). */
  accessLogBufferCapacity: number;
  writerConcurrency: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** Write attempts of a batch before it is dead-lettered. */
  writeMaxAttempts: number;
  /** Delay before the retry worker's first replay of a new dead letter. */
  deadLetterFirstRetryMs: number;
  instanceId: string;
  /** Told how long each COMMITTED call waited for its events (metrics). */
  onCommitWait?: (ms: number, outcome: 'settled' | 'timeout') => void;
}

export interface AcceptedEvent {
  id: string;
  occurredAt: Date;
  status: EventStatus;
}

export interface FlushResult {
  stored: number;
  duplicates: number;
  deadLettered: number;
  /** Events (of calls still pending at the moment of the flush) that were waited for. */
  waitedFor: number;
  durationMs: number;
  instances: string[];
}

/** Why events are being dead-lettered. */
interface Failure {
  code: string | null;
  message: string;
}

interface Entry {
  record: AuditEventRecord;
  bytes: number;
  ticket: Ticket;
  index: number;
  /** Held in the tenant's access-record share, not in its BUFFER_CAPACITY. */
  access: boolean;
  /** Where the event is in the journal (BUFFERED calls of clients, while it is on). */
  journal?: JournalRef;
}

interface Batch {
  id: string;
  entries: Entry[];
  trigger: FlushTrigger;
  attempts: number;
  firstFailedAt?: Date;
  /** Set when the rows are known to be refused: the next attempt only dead-letters them. */
  rejection?: Failure;
  /** Set by flush: the next failure dead-letters the batch at once instead of backing off. */
  force?: boolean;
  retryTimer?: TimerHandle;
  retryAt?: number;
}

interface TenantState {
  tenant: TenantId;
  queue: Entry[];
  /** Pending entries that are access records (part of `stats.pending`). */
  accessHeld: number;
  /** Events of calls being written to the journal: admitted, not accepted yet. */
  reserved: number;
  inFlight: number;
  backoff: Set<Batch>;
  /** Tickets not yet settled, oldest first (a Set keeps insertion order). */
  outstanding: Set<Ticket>;
  stats: TenantStats;
  intervalTimer?: TimerHandle;
  lingerTimer?: TimerHandle;
  /** Write the queue without waiting for a full batch (a flush, commit-wait or interval is due). */
  urgent: FlushTrigger | null;
  /** flush calls waiting: while any waits, a failed write is dead-lettered at once. */
  flushing: number;
}

type Settled = { record: AuditEventRecord; status: SettledStatus; chainSeq?: number | null };

/** What `events` events settling with `outcome` change: they leave pending for their terms. */
function moves(outcome: EntryOutcome, events: number): BookChange {
  return { pending: -events, ...outcome };
}

/** The entries' places in the journal, one per entry; undefined when none has one. */
function journalRefs(entries: readonly Entry[]): (JournalRef | null)[] | undefined {
  if (!entries.some((e) => e.journal)) return undefined;
  return entries.map((e) => e.journal ?? null);
}

/**
 * The write path's rules, without I/O of its own: per-tenant buffers, batches (by size, by
 * interval, or after a short linger for COMMITTED calls), retries with backoff, dead-lettering,
 * the flush barrier, backpressure, the shutdown hand-off and the counters. Writes, dead letters
 * and the spool go through the sink; time and timers come from the clock.
 *
 * Every accepted event is, at every moment, in exactly one place that a counter tracks: the
 * queue or a batch in flight or a batch in backoff (`pending`), or settled (`stored`,
 * `duplicates`, `deadLettered`). Nothing is ever removed from the buffer without a status.
 */
export class WritePipeline {
  private readonly tenants = new Map<TenantId, TenantState>();
  private bytesHeld = 0;
  /** Bytes of calls being written to the journal: admitted, not accepted yet. */
  private bytesReserved = 0;
  private stopping = false;
  /** Set by the dead-letter monitor: the queue is at capacity, so new writes are refused. */
  private deadLettersFull = false;

  constructor(
    private readonly sink: PipelineSink,
    private readonly listener: PipelineListener,
    private readonly log: Logger,
    private readonly opts: PipelineOptions,
    private readonly clock: Clock,
    /** Uniform in [0, 1): the jitter of the backoff schedule. */
    private readonly random: () => number = Math.random,
  ) {}

  /**
   * Accepts a call whole, or rejects it whole (ShuttingDownError, BackpressureError,
   * LimitExceededError, and JournalUnavailableError from the journal); the bounds are decided
   * before the first await. With COMMITTED it resolves once every event has a final status (or
   * throws CommitTimeoutError, the events staying accepted and pending); with BUFFERED once the
   * call is in the journal (at once without one).
   */
  async accept(
    tenant: TenantId,
    records: readonly AuditEventRecord[],
    ack: Ack,
    holding: Holding = 'client',
  ): Promise<AcceptedEvent[]> {
    if (this.stopping) throw new ShuttingDownError();
    const state = this.state(tenant);
    const bytes = records.map(recordBytes);
    const total = bytes.reduce((a, b) => a + b, 0);
    this.admit(state, records.length, total, holding);
    const journal = ack === 'BUFFERED' && holding === 'client' ? this.sink.journal : undefined;
    let entry: string | undefined;
    if (journal) {
      // The call's place is held while its entry is written, so calls admitted meanwhile cannot
      // take it; if the journal refuses the entry, nothing of the call was accepted.
      entry = randomUUID();
      state.reserved += records.length;
      this.bytesReserved += total;
      try {
        await journal.append({ id: entry, tenant, records });
      } finally {
        state.reserved -= records.length;
        this.bytesReserved -= total;
      }
      if (this.stopping) {
        const outcome = { stored: 0, duplicates: 0, deadLettered: 0, withdrawn: records.length };
        this.releaseEntry(state, entry, outcome, {});
        throw new ShuttingDownError();
      }
    }
    const ticket = this.enqueue(state, records, bytes, holding, entry);
    if (journal && entry !== undefined) {
      const id = entry;
      void ticket.done.then(() => {
        const outcome = ticket.outcome();
        this.releaseEntry(state, id, outcome, moves(outcome, records.length));
      });
    }
    this.schedule(state, ack);

    if (ack === 'BUFFERED') {
      return records.map((r) => ({ id: r.id, occurredAt: r.occurredAt, status: 'BUFFERED' }));
    }
    return this.awaitCommit(records, ticket);
  }

  /**
   * Takes back a BUFFERED call found in a journal left by a process that is gone: its events
   * (`records`, at `positions` in the entry: those that no committed batch or dead letter holds;
   * `before` says how the others ended) are accepted again here (counted in `accepted` and
   * `recovered`) and written as any others, keeping their places in the entry, and the entry is
   * released with the whole call's outcome once each has a final status. Never refused: they
   * were acknowledged. Resolves once they are final.
   */
  adopt(
    tenant: TenantId,
    entry: { id: string; events: number; booked: boolean },
    records: readonly AuditEventRecord[],
    positions: readonly number[],
    before: EntryOutcome,
  ): Promise<void> {
    const state = this.state(tenant);
    const settled = before.stored + before.duplicates + before.deadLettered;
    // How this process sees the entry against the books: they count it as appended (accepted
    // and pending), or not at all when a version without books appended it.
    const known: BookChange = entry.booked
      ? { ...before, pending: -settled }
      : { ...before, accepted: entry.events, pending: entry.events - settled };
    addInto(state.stats.unbooked, known);
    if (records.length === 0) {
      this.releaseEntry(state, entry.id, before, known);
      return Promise.resolve();
    }
    const ticket = this.enqueue(
      state,
      records,
      records.map(recordBytes),
      'client',
      entry.id,
      positions,
    );
    state.stats.recovered += records.length;
    void ticket.done.then(() => {
      const now = ticket.outcome();
      const outcome = {
        stored: before.stored + now.stored,
        duplicates: before.duplicates + now.duplicates,
        deadLettered: before.deadLettered + now.deadLettered,
      };
      const counted = { ...emptyTerms(), ...known };
      addInto(counted, moves(now, records.length));
      this.releaseEntry(state, entry.id, outcome, counted);
    });
    // They have waited already: written now, not after another interval.
    state.urgent ??= 'interval';
    this.drain(state);
    this.schedule(state, 'BUFFERED');
    return ticket.done;
  }

  /** Puts a call's events into the tenant's queue: accepted and pending from now on. */
  private enqueue(
    state: TenantState,
    records: readonly AuditEventRecord[],
    bytes: readonly number[],
    holding: Holding,
    /** The call's journal entry, if it has one. */
    journalEntry?: string,
    /** The records' places in that entry (default: their order). */
    positions?: readonly number[],
  ): Ticket {
    const access = holding !== 'client';
    const ticket = new Ticket(records.length);
    state.outstanding.add(ticket);
    records.forEach((record, index) => {
      const journal =
        journalEntry === undefined
          ? undefined
          : { entry: journalEntry, position: positions?.[index] ?? index };
      state.queue.push({ record, bytes: bytes[index]!, ticket, index, access, journal });
    });
    if (access) state.accessHeld += records.length;
    this.bytesHeld += bytes.reduce((a, b) => a + b, 0);
    state.stats.accepted += records.length;
    state.stats.pending += records.length;
    void ticket.done.then(() => state.outstanding.delete(ticket));
    // A journaled call was booked with its append (and is booked out by its release).
    if (journalEntry === undefined && this.sink.books) this.bookOnceFinal(state, ticket);
    return ticket;
  }

  /**
   * A call outside the journal is booked once all its events are final — accepted and final in
   * one change — and counted `unbooked` until then: accepted and pending from now, its final
   * terms once known. Lost in a crash before it is booked, the books never count it: the
   * identity still holds over what they do.
   */
  private bookOnceFinal(state: TenantState, ticket: Ticket): void {
    const events = ticket.statuses.length;
    addInto(state.stats.unbooked, { accepted: events, pending: events });
    // Each event's move to its final term is counted as it settles (see `release`).
    void ticket.done.then(() =>
      this.book(state.tenant, { accepted: events, ...ticket.outcome() }, true),
    );
  }

  /**
   * Books `change` (tried until taken, or the process stops), counting it `unbooked` until the
   * books have it; `counted` when it is in `unbooked` already.
   */
  book(tenant: TenantId, change: BookChange, counted = false): void {
    const books = this.sink.books;
    if (!books) return;
    const unbooked = this.state(tenant).stats.unbooked;
    if (!counted) addInto(unbooked, change);
    void bookSurely(
      books,
      tenant,
      change,
      this.log,
      () => this.stopping,
      () => addInto(unbooked, change, -1),
    );
  }

  /**
   * Releases a journal entry with its outcome. Until the release is written, `unbooked` holds
   * the change it books; `counted` is what `unbooked` holds for the entry already (its events'
   * moves as they settled), replaced by that change.
   */
  private releaseEntry(
    state: TenantState,
    entry: string,
    outcome: EntryOutcome,
    counted: BookChange,
  ): void {
    const journal = this.sink.journal;
    if (!journal) return;
    const unbooked = state.stats.unbooked;
    let change: BookChange | null = null;
    let written = false;
    change = journal.release(entry, outcome, () => {
      written = true;
      if (change) addInto(unbooked, change, -1);
    });
    if (change && !written) addInto(unbooked, change);
    addInto(unbooked, counted, -1);
  }

  /**
   * The refusal accept() would answer now for a client call of `events` events, decided from
   * their number alone, before anything of the call is read: null when it may be accepted. Their
   * bytes are not known yet, so the byte bound refuses only once it is reached. Only for a
   * tenant this process has state for: a tenant it never wrote for may be unknown, and that
   * refusal comes first.
   */
  refusal(tenant: TenantId, events: number): Error | null {
    if (this.stopping) return new ShuttingDownError();
    const state = this.tenants.get(tenant);
    // Every event is at least a byte: `events` is a lower bound of the call's bytes.
    return state ? this.bound(state, events, events, 'client') : null;
  }

  /** Throws when a call of `events` events (`bytes` in all) would go past a bound. */
  private admit(state: TenantState, events: number, bytes: number, holding: Holding): void {
    const refused = this.bound(state, events, bytes, holding);
    if (refused) throw refused;
  }

  private bound(
    state: TenantState,
    events: number,
    bytes: number,
    holding: Holding,
  ): BackpressureError | LimitExceededError | null {
    if (
      holding === 'client' &&
      state.stats.pending + state.reserved - state.accessHeld + events > this.opts.bufferCapacity
    ) {
      return new BackpressureError(this.retryAfterMs(state), 'BUFFER_CAPACITY');
    }
    if (holding === 'read' && state.accessHeld + events > this.opts.accessLogBufferCapacity) {
      return new LimitExceededError(
        'ACCESS_LOG_BUFFER_CAPACITY',
        this.opts.accessLogBufferCapacity,
        'access records of this tenant waiting to be written',
      );
    }
    if (this.bytesHeld + this.bytesReserved + bytes > this.opts.bufferMaxBytes) {
      return new BackpressureError(this.retryAfterMs(state), 'BUFFER_MAX_BYTES');
    }
    if (this.deadLettersFull) {
      return new BackpressureError(5_000, 'DLQ_MAX_EVENTS');
    }
    return null;
  }

  /** A COMMITTED call's wait: its events' final statuses, or CommitTimeoutError. */
  private async awaitCommit(
    records: readonly AuditEventRecord[],
    ticket: Ticket,
  ): Promise<AcceptedEvent[]> {
    const waitStarted = this.clock.monotonic();
    const { outcome, timer } = this.raceTimeout(ticket.done, this.opts.commitTimeoutMs);
    const won = await outcome;
    this.clock.clearTimeout(timer);
    try {
      this.opts.onCommitWait?.(
        this.clock.monotonic() - waitStarted,
        won === 'done' ? 'settled' : 'timeout',
      );
    } catch (err) {
      // The events are accepted whatever an observer does: never turn that into an error.
      this.log.error({ err }, 'commit-wait observer failed');
    }
    const events = records.map((r, i) => ({
      id: r.id,
      occurredAt: r.occurredAt,
      status: ticket.statuses[i]!,
    }));
    if (won === 'timeout')
      throw new CommitTimeoutError(this.opts.commitTimeoutMs, ticket.remaining, events);
    return events;
  }

  /** `done` raced against a timer of `ms` (the caller clears the timer once it has the answer). */
  private raceTimeout(
    done: Promise<unknown>,
    ms: number,
  ): { outcome: Promise<'done' | 'timeout'>; timer: TimerHandle } {
    let timer: TimerHandle;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = this.clock.setTimeout(() => resolve('timeout'), ms);
    });
    const outcome = Promise.race([done.then(() => 'done' as const), timedOut]);
    return { outcome, timer };
  }

  /**
   * The barrier: every event of this tenant accepted before the call (in the buffer, in flight,
   * in backoff, or a COMMITTED call still waiting) reaches a final status, or FlushTimeoutError
   * says how many did not. A batch waiting in backoff is retried now.
   */
  async flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult> {
    const started = this.clock.monotonic();
    const state = this.tenants.get(tenant);
    const empty = { stored: 0, duplicates: 0, deadLettered: 0, waitedFor: 0 };
    if (!state || state.outstanding.size === 0) {
      return { ...empty, durationMs: 0, instances: [this.opts.instanceId] };
    }
    const watched = [...state.outstanding];
    state.flushing++;
    state.urgent = 'flush';
    this.drain(state);
    // A batch waiting in backoff is decided now: written, or dead-lettered if it fails again.
    for (const batch of state.backoff) {
      batch.force = true;
      this.retryNow(state, batch);
    }

    const all = Promise.all(watched.map((t) => t.done));
    const { outcome, timer } = this.raceTimeout(all, timeoutMs);
    const won = await outcome.finally(() => state.flushing--);
    this.clock.clearTimeout(timer);
    if (won === 'timeout') {
      const pending = watched.reduce((n, t) => n + t.remaining, 0);
      throw new FlushTimeoutError(timeoutMs, pending, state.stats.lastError);
    }
    const result = watched.reduce(
      (acc, t) => ({
        stored: acc.stored + t.stored,
        duplicates: acc.duplicates + t.duplicates,
        deadLettered: acc.deadLettered + t.deadLettered,
        waitedFor: acc.waitedFor + t.statuses.length,
      }),
      empty,
    );
    return {
      ...result,
      durationMs: this.clock.monotonic() - started,
      instances: [this.opts.instanceId],
    };
  }

  /** Counters of one tenant since this process started (a copy). */
  stats(tenant: TenantId): TenantStats {
    const s = this.tenants.get(tenant)?.stats ?? emptyStats();
    return { ...s, unbooked: { ...s.unbooked } };
  }

  /** Tenants this process has accepted events for (or counted dead letters of) since it started. */
  tenantIds(): TenantId[] {
    return [...this.tenants.keys()];
  }

  /** Bytes held by pending events over all tenants (bounded by bufferMaxBytes). */
  get bufferBytes(): number {
    return this.bytesHeld;
  }

  /** Sum of pending events over all tenants. */
  get pendingTotal(): number {
    let n = 0;
    for (const s of this.tenants.values()) n += s.stats.pending;
    return n;
  }

  /** The retry worker stored (part of) a dead letter: it leaves `deadLettered`. */
  recordRecovered(tenant: TenantId, stored: number, duplicates: number): void {
    const s = this.state(tenant).stats;
    s.stored += stored;
    s.duplicates += duplicates;
    s.deadLettered -= stored + duplicates;
    s.replayed += stored + duplicates;
  }

  /** A dead letter was discarded on purpose: counted, never silent. */
  recordDiscarded(tenant: TenantId, events: number): void {
    const s = this.state(tenant).stats;
    s.deadLettered -= events;
    s.discarded += events;
  }

  /** Stored events removed by retention (a dropped month): counted, outside the identity. */
  recordExpired(tenant: TenantId, events: number): void {
    this.state(tenant).stats.expired += events;
  }

  /** Events moved into the dead-letter queue from outside the buffers (a spool re-queued at start). */
  recordRequeued(tenant: TenantId, events: number): void {
    const s = this.state(tenant).stats;
    s.accepted += events;
    s.deadLettered += events;
  }

  /** The dead-letter monitor's verdict: at capacity, new writes get BackpressureError. */
  setDeadLettersFull(full: boolean): void {
    if (full !== this.deadLettersFull) {
      this.log[full ? 'error' : 'info'](
        { full },
        full ? 'dead-letter queue full: refusing writes' : 'dead-letter queue has room again',
      );
    }
    this.deadLettersFull = full;
  }

  get isDeadLetterQueueFull(): boolean {
    return this.deadLettersFull;
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  /**
   * Stops accepting, then writes everything held until done or the deadline passes. Returns how
   * many events are still pending (they are logged as an error: the process is about to lose them).
   */
  async stop(deadlineMs: number): Promise<number> {
    this.stopping = true;
    const deadline = this.clock.now() + deadlineMs;
    for (const state of this.tenants.values()) {
      this.clock.clearTimeout(state.intervalTimer);
      this.clock.clearTimeout(state.lingerTimer);
    }
    // Most of the deadline goes to writing; the rest to putting aside what could not be written.
    const flushBudget = Math.max(1, Math.floor(deadlineMs * 0.6));
    await Promise.all(
      [...this.tenants.keys()].map(async (tenant) => {
        try {
          await this.flush(tenant, flushBudget);
        } catch (err) {
          this.log.error({ err, tenant }, 'flush at shutdown did not complete');
        }
      }),
    );
    // Writes still in flight finish (or fail back into backoff) before what is left is put aside;
    // a batch being written must not also be spooled.
    while (this.clock.now() < deadline && [...this.tenants.values()].some((t) => t.inFlight > 0)) {
      await new Promise((resolve) => this.clock.setTimeout(() => resolve(undefined), 20));
    }
    for (const state of this.tenants.values()) await this.putAside(state);
    const left = this.pendingTotal;
    if (left > 0) {
      this.log.error(
        { pending: left, msLeft: deadline - this.clock.now() },
        'stopping with events still in writes that did not finish; they are lost',
      );
    }
    return left;
  }

  /**
   * At shutdown, what is still buffered or in backoff goes to the dead-letter queue, or, when
   * that is unreachable too, to the spool that the next start re-queues. A batch in backoff
   * keeps its id (its commit may have happened unseen; the ledger will tell).
   */
  private async putAside(state: TenantState): Promise<void> {
    const groups: Batch[] = [...state.backoff];
    for (const b of groups) this.clock.clearTimeout(b.retryTimer);
    state.backoff.clear();
    const queued = state.queue.splice(0);
    if (queued.length > 0) {
      groups.push({ id: randomUUID(), entries: queued, trigger: 'shutdown', attempts: 0 });
    }
    for (const batch of groups) await this.putBatchAside(state, batch);
  }

  private async putBatchAside(state: TenantState, batch: Batch): Promise<void> {
    const { entries } = batch;
    const failure = {
      code: null,
      message: 'the instance stopped before these events could be written',
    };
    try {
      await this.deadLetter(state, batch, entries, failure, batch.id);
      return;
    } catch (err) {
      this.log.error(
        { tenant: state.tenant, err: writeErrorForLog(err) },
        'dead-letter queue unavailable at shutdown',
      );
    }
    if (!this.sink.spool) return;
    const now = new Date(this.clock.now());
    try {
      await this.sink.spool({
        id: batch.id,
        tenant: state.tenant,
        state: 'ACTIVE',
        records: entries.map((e) => e.record),
        errorCode: null,
        error: failure.message,
        attempts: batch.attempts,
        firstFailedAt: batch.firstFailedAt ?? now,
        lastFailedAt: now,
        nextAttemptAt: now,
        journalRefs: journalRefs(entries),
      });
      for (const entry of entries) {
        state.stats.deadLettered++;
        this.release(state, entry, 'DEAD_LETTERED');
      }
      this.log.warn(
        { tenant: state.tenant, events: entries.length },
        'events spooled to local disk; re-queued at next start',
      );
    } catch (err) {
      this.log.error(
        { tenant: state.tenant, events: entries.length, err },
        'could not spool events; they are lost',
      );
    }
  }

  private state(tenant: TenantId): TenantState {
    let s = this.tenants.get(tenant);
    if (!s) {
      s = {
        tenant,
        queue: [],
        accessHeld: 0,
        reserved: 0,
        inFlight: 0,
        backoff: new Set(),
        outstanding: new Set(),
        stats: emptyStats(),
        urgent: null,
        flushing: 0,
      };
      this.tenants.set(tenant, s);
    }
    return s;
  }

  private schedule(state: TenantState, ack: Ack): void {
    if (state.queue.length >= this.opts.batchSize) this.drain(state, 'size');
    // What is left after the full batches still needs its own deadline.
    if (state.queue.length === 0) return;
    if (ack === 'COMMITTED') {
      // Linger briefly so concurrent COMMITTED calls share one transaction (group commit).
      state.lingerTimer ??= this.clock.setTimeout(() => {
        state.lingerTimer = undefined;
        state.urgent ??= 'commit-wait';
        this.drain(state);
      }, this.opts.commitLingerMs);
      return;
    }
    state.intervalTimer ??= this.clock.setTimeout(() => {
      state.intervalTimer = undefined;
      state.urgent ??= 'interval';
      this.drain(state);
    }, this.opts.flushIntervalMs);
  }

  /** Starts batches while there is room: full batches always, partial ones only when urgent. */
  private drain(state: TenantState, trigger?: FlushTrigger): void {
    while (state.inFlight < this.opts.writerConcurrency && state.queue.length > 0) {
      const full = state.queue.length >= this.opts.batchSize;
      if (!full && !state.urgent) break;
      const entries = state.queue.splice(0, this.opts.batchSize);
      const batch: Batch = {
        id: randomUUID(),
        entries,
        trigger: full ? (trigger ?? 'size') : state.urgent!,
        attempts: 0,
      };
      void this.run(state, batch);
    }
    if (state.queue.length === 0) {
      state.urgent = null;
      this.clock.clearTimeout(state.intervalTimer);
      state.intervalTimer = undefined;
    }
  }

  /** One attempt at a batch: written (its refused rows dead-lettered), or into backoff. */
  private async run(state: TenantState, batch: Batch): Promise<void> {
    state.inFlight++;
    batch.attempts++;
    const started = this.clock.monotonic();
    try {
      // What this batch settled now, for flushCompleted; rows refused by the database that the
      // dead-letter queue could not take yet are reported later, by the batch that retries them.
      const settled: Settled[] = [];
      if (batch.rejection) {
        await this.deadLetter(state, batch, batch.entries, batch.rejection);
        for (const e of batch.entries) settled.push({ record: e.record, status: 'DEAD_LETTERED' });
      } else {
        await this.write(state, batch, settled);
      }
      state.backoff.delete(batch);
      state.stats.batches++;
      this.reportSettled(state, batch, settled, this.clock.monotonic() - started);
    } catch (err) {
      await this.onWriteFailure(state, batch, err);
    } finally {
      state.inFlight--;
      if (state.queue.length > 0) this.drain(state);
    }
  }

  /**
   * Writes the batch through the sink and settles what it decided; the rows it refused go to
   * the dead-letter queue (or, when that cannot take them, into backoff as a batch of their own).
   * Throws when the write as a whole failed.
   */
  private async write(state: TenantState, batch: Batch, settled: Settled[]): Promise<void> {
    const records = batch.entries.map((e) => e.record);
    const result = await this.sink.write(
      state.tenant,
      batch.id,
      records,
      journalRefs(batch.entries),
    );
    state.stats.conflicts += result.conflicts;
    const rejected: Entry[] = [];
    let failure: Failure | undefined;
    batch.entries.forEach((entry, i) => {
      const status = result.statuses[i]!;
      if (status === 'REJECTED') {
        rejected.push(entry);
        const why = result.rejections.get(i);
        failure ??= {
          code: why?.sqlState ?? null,
          message: why?.message ?? 'rejected by the database',
        };
        return;
      }
      if (status === 'STORED') state.stats.stored++;
      else state.stats.duplicates++;
      this.release(state, entry, status);
      settled.push({ record: entry.record, status, chainSeq: result.chainSeqs?.[i] ?? null });
    });
    if (rejected.length === 0) return;
    // The good rows are committed; the refused ones leave this batch for the dead-letter queue,
    // and stay pending until it has them.
    const rest: Batch = {
      id: randomUUID(),
      entries: rejected,
      trigger: 'retry',
      attempts: batch.attempts,
      firstFailedAt: new Date(this.clock.now()),
      rejection: failure!,
    };
    try {
      await this.deadLetter(state, rest, rejected, failure!);
      for (const e of rejected) settled.push({ record: e.record, status: 'DEAD_LETTERED' });
    } catch (err) {
      await this.onWriteFailure(state, rest, err);
    }
  }

  /** Tells listeners (flushCompleted, metrics) what a batch settled. */
  private reportSettled(
    state: TenantState,
    batch: Batch,
    settled: Settled[],
    durationMs: number,
  ): void {
    this.listener.batchSettled({
      tenant: state.tenant,
      instanceId: this.opts.instanceId,
      batchId: batch.id,
      trigger: batch.trigger,
      attempts: batch.attempts,
      committedAt: new Date(this.clock.now()),
      durationMs,
      records: settled.map((s) => s.record),
      statuses: settled.map((s) => s.status),
      chainSeqs: settled.map((s) => s.chainSeq ?? null),
    });
  }

  /**
   * Settles one entry: it leaves `pending` and the buffer's byte count, and moves in `unbooked`
   * from pending to its final term (the books learn it when its call is booked or released).
   */
  private release(state: TenantState, entry: Entry, status: EventStatus): void {
    state.stats.pending--;
    const u = state.stats.unbooked;
    u.pending--;
    if (status === 'STORED') u.stored++;
    else if (status === 'DUPLICATE') u.duplicates++;
    else if (status === 'DEAD_LETTERED') u.deadLettered++;
    if (entry.access) state.accessHeld--;
    this.bytesHeld -= entry.bytes;
    entry.ticket.settle(entry.index, status);
  }

  /**
   * Hands entries to the dead-letter queue; once it has them durably they are settled as
   * DEAD_LETTERED. Throws (and settles nothing) when the queue cannot take them.
   */
  private async deadLetter(
    state: TenantState,
    batch: Batch,
    entries: Entry[],
    failure: Failure,
    /**
     * The failed batch's own id when the whole batch goes: its commit may have happened with the
     * answer lost, and a replay under the same id then finds it in the ledger (stored, not
     * duplicates). Rows that never committed get a new id.
     */
    id: string = randomUUID(),
  ): Promise<void> {
    const now = new Date(this.clock.now());
    const dl: DeadLetter = {
      id,
      tenant: state.tenant,
      state: 'ACTIVE',
      records: entries.map((e) => e.record),
      errorCode: failure.code,
      error: failure.message,
      attempts: batch.attempts,
      firstFailedAt: batch.firstFailedAt ?? now,
      lastFailedAt: now,
      nextAttemptAt: new Date(now.getTime() + this.opts.deadLetterFirstRetryMs),
      journalRefs: journalRefs(entries),
    };
    await this.sink.deadLetter(dl);
    for (const entry of entries) {
      state.stats.deadLettered++;
      this.release(state, entry, 'DEAD_LETTERED');
    }
    this.log.warn(
      {
        tenant: state.tenant,
        deadLetterId: dl.id,
        events: entries.length,
        error: failure.message,
        attempts: dl.attempts,
      },
      'events dead-lettered',
    );
    this.listener.deadLetter({
      tenant: state.tenant,
      kind: 'ENQUEUED',
      deadLetterId: dl.id,
      events: entries.length,
      attempts: dl.attempts,
      error: failure.message,
      at: now,
      instanceId: this.opts.instanceId,
    });
  }

  /**
   * A failed attempt: the batch is dead-lettered when its attempts are used up, a flush waits,
   * or it was forced; otherwise (or when the dead-letter queue cannot take it) it backs off.
   */
  private async onWriteFailure(state: TenantState, batch: Batch, err: unknown): Promise<void> {
    const message = describeWriteError(err);
    batch.firstFailedAt ??= new Date(this.clock.now());
    state.stats.failedWrites++;
    state.stats.lastError = message;
    state.stats.lastErrorAt = new Date(this.clock.now());
    if (
      !batch.rejection &&
      (batch.force || state.flushing > 0 || batch.attempts >= this.opts.writeMaxAttempts)
    ) {
      try {
        const failure = { code: sqlState(err) ?? null, message };
        await this.deadLetter(state, batch, batch.entries, failure, batch.id);
        state.backoff.delete(batch);
        const settled = batch.entries.map((e) => ({
          record: e.record,
          status: 'DEAD_LETTERED' as const,
        }));
        this.reportSettled(state, batch, settled, 0);
        return;
      } catch (dlqErr) {
        this.log.error(
          { tenant: state.tenant, batchId: batch.id, err: writeErrorForLog(dlqErr) },
          'dead-letter queue unavailable; the batch stays pending in memory',
        );
      }
    }
    this.backOff(state, batch, err);
  }

  /**
   * The batch waits for its next attempt. Its events stay pending and visible
   * (auditStats.pending, lastError) until a write or the dead-letter queue takes them.
   */
  private backOff(state: TenantState, batch: Batch, err: unknown): void {
    batch.force = false;
    const delay = this.backoffDelay(batch.attempts);
    this.log.error(
      {
        tenant: state.tenant,
        batchId: batch.id,
        events: batch.entries.length,
        attempt: batch.attempts,
        kind: classifyWriteError(err),
        error: describeWriteError(err),
        retryInMs: delay,
      },
      'batch write failed; will retry',
    );
    batch.trigger = 'retry';
    batch.retryAt = this.clock.now() + delay;
    state.backoff.add(batch);
    batch.retryTimer = this.clock.setTimeout(() => this.retryNow(state, batch), delay);
  }

  private retryNow(state: TenantState, batch: Batch): void {
    if (!state.backoff.has(batch) || batch.retryTimer === undefined) return;
    this.clock.clearTimeout(batch.retryTimer);
    batch.retryTimer = undefined;
    // In flight now, not in backoff: a shutdown must not put aside a batch still being written
    // (a failure puts it back).
    state.backoff.delete(batch);
    void this.run(state, batch);
  }

  /** Exponential backoff with full jitter, capped. */
  private backoffDelay(attempt: number): number {
    const ceiling = Math.min(
      this.opts.retryMaxMs,
      this.opts.retryBaseMs * 2 ** Math.min(attempt - 1, 20),
    );
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  private retryAfterMs(state: TenantState): number {
    let soonest = Number.POSITIVE_INFINITY;
    for (const b of state.backoff)
      if (b.retryAt !== undefined) soonest = Math.min(soonest, b.retryAt);
    if (Number.isFinite(soonest)) return Math.max(100, soonest - this.clock.now());
    return Math.max(100, Math.min(this.opts.flushIntervalMs, 1000));
  }
}
