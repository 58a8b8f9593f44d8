import { randomUUID } from 'node:crypto';
import {
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  ShuttingDownError,
} from '../domain/errors.js';
import { type AuditEventRecord, recordBytes } from '../domain/event.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { BatchWriter, WriteStatus } from './batch-writer.js';
import { classifyWriteError, describeWriteError } from './failure-classifier.js';
import { emptyStats, type TenantStats } from './stats.js';

export type Ack = 'COMMITTED' | 'BUFFERED';
export type EventStatus = WriteStatus | 'BUFFERED' | 'DEAD_LETTERED';
export type FlushTrigger = 'size' | 'interval' | 'flush' | 'commit-wait' | 'shutdown' | 'retry';

export interface IngestOptions {
  batchSize: number;
  flushIntervalMs: number;
  commitLingerMs: number;
  commitTimeoutMs: number;
  bufferCapacity: number;
  bufferMaxBytes: number;
  writerConcurrency: number;
  retryBaseMs: number;
  retryMaxMs: number;
  instanceId: string;
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

/** What happened to one settled batch; the seam for flushCompleted and the dead-letter queue. */
export interface BatchSettled {
  tenant: TenantId;
  batchId: string;
  trigger: FlushTrigger;
  attempts: number;
  committedAt: Date;
  durationMs: number;
  records: readonly AuditEventRecord[];
  statuses: readonly EventStatus[];
}

/** One createAuditEvents call: settles when every one of its events has a final status. */
class Ticket {
  readonly statuses: EventStatus[];
  remaining: number;
  stored = 0;
  duplicates = 0;
  deadLettered = 0;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(size: number) {
    this.statuses = new Array<EventStatus>(size).fill('BUFFERED');
    this.remaining = size;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  settle(index: number, status: EventStatus): void {
    this.statuses[index] = status;
    if (status === 'STORED') this.stored++;
    else if (status === 'DUPLICATE') this.duplicates++;
    else if (status === 'DEAD_LETTERED') this.deadLettered++;
    if (--this.remaining === 0) this.resolveDone();
  }
}

interface Entry {
  record: AuditEventRecord;
  bytes: number;
  ticket: Ticket;
  index: number;
}

interface Batch {
  id: string;
  entries: Entry[];
  trigger: FlushTrigger;
  attempts: number;
  retryTimer?: NodeJS.Timeout;
  retryAt?: number;
}

interface TenantState {
  tenant: TenantId;
  schema: string;
  queue: Entry[];
  inFlight: number;
  backoff: Set<Batch>;
  /** Tickets not yet settled, oldest first (a Set keeps insertion order). */
  outstanding: Set<Ticket>;
  stats: TenantStats;
  intervalTimer?: NodeJS.Timeout;
  lingerTimer?: NodeJS.Timeout;
  /** Write the queue without waiting for a full batch (a flush, commit-wait or interval is due). */
  urgent: FlushTrigger | null;
}

/**
 * The write path: per-tenant buffers, batches, retries and the flush barrier.
 *
 * Every accepted event is, at every moment, in exactly one place that a counter tracks: the
 * queue or a batch in flight or a batch in backoff (`pending`), or settled (`stored`,
 * `duplicates`, `deadLettered`). Nothing is ever removed from the buffer without a status.
 */
export class IngestService {
  private readonly tenants = new Map<TenantId, TenantState>();
  private bytesHeld = 0;
  private stopping = false;
  private readonly settledListeners: ((b: BatchSettled) => void)[] = [];

  constructor(
    private readonly writer: BatchWriter,
    private readonly log: Logger,
    private readonly opts: IngestOptions,
  ) {}

  /** Registers a listener called after each batch settles (subscriptions, metrics). */
  onBatchSettled(listener: (b: BatchSettled) => void): void {
    this.settledListeners.push(listener);
  }

  /**
   * Accepts a validated call whole, or rejects it whole (ShuttingDownError, BackpressureError).
   * With COMMITTED it resolves once every event is STORED or DUPLICATE (or throws
   * CommitTimeoutError, the events staying accepted and pending); with BUFFERED at once.
   */
  async accept(
    tenant: TenantId,
    records: readonly AuditEventRecord[],
    ack: Ack,
  ): Promise<AcceptedEvent[]> {
    if (this.stopping) throw new ShuttingDownError();
    const state = this.state(tenant);
    const bytes = records.map(recordBytes);
    const total = bytes.reduce((a, b) => a + b, 0);
    const held = state.stats.pending;
    if (held + records.length > this.opts.bufferCapacity) {
      throw new BackpressureError(this.retryAfterMs(state), 'BUFFER_CAPACITY');
    }
    if (this.bytesHeld + total > this.opts.bufferMaxBytes) {
      throw new BackpressureError(this.retryAfterMs(state), 'BUFFER_MAX_BYTES');
    }

    const ticket = new Ticket(records.length);
    state.outstanding.add(ticket);
    records.forEach((record, index) => {
      state.queue.push({ record, bytes: bytes[index]!, ticket, index });
    });
    this.bytesHeld += total;
    state.stats.accepted += records.length;
    state.stats.pending += records.length;
    void ticket.done.then(() => state.outstanding.delete(ticket));

    this.schedule(state, ack);

    if (ack === 'BUFFERED') {
      return records.map((r) => ({ id: r.id, occurredAt: r.occurredAt, status: 'BUFFERED' }));
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.opts.commitTimeoutMs);
    });
    const outcome = await Promise.race([ticket.done.then(() => 'done' as const), timedOut]);
    clearTimeout(timer);
    const events = records.map((r, i) => ({
      id: r.id,
      occurredAt: r.occurredAt,
      status: ticket.statuses[i]!,
    }));
    if (outcome === 'timeout')
      throw new CommitTimeoutError(this.opts.commitTimeoutMs, ticket.remaining, events);
    return events;
  }

  /**
   * The barrier: every event of this tenant accepted before the call (in the buffer, in flight,
   * in backoff, or a COMMITTED call still waiting) reaches a final status, or FlushTimeoutError
   * says how many did not. A batch waiting in backoff is retried now.
   */
  async flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult> {
    const started = performance.now();
    const state = this.tenants.get(tenant);
    const empty = { stored: 0, duplicates: 0, deadLettered: 0, waitedFor: 0 };
    if (!state || state.outstanding.size === 0) {
      return { ...empty, durationMs: 0, instances: [this.opts.instanceId] };
    }
    const watched = [...state.outstanding];
    state.urgent = 'flush';
    this.drain(state);
    for (const batch of state.backoff) this.retryNow(state, batch);

    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const outcome = await Promise.race([
      Promise.all(watched.map((t) => t.done)).then(() => 'done' as const),
      timedOut,
    ]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
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
      durationMs: performance.now() - started,
      instances: [this.opts.instanceId],
    };
  }

  /** Counters of one tenant since this process started (a copy). */
  stats(tenant: TenantId): TenantStats {
    const s = this.tenants.get(tenant)?.stats ?? emptyStats();
    return { ...s };
  }

  /** Sum of pending events over all tenants. */
  get pendingTotal(): number {
    let n = 0;
    for (const s of this.tenants.values()) n += s.stats.pending;
    return n;
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
    const deadline = Date.now() + deadlineMs;
    for (const state of this.tenants.values()) {
      clearTimeout(state.intervalTimer);
      clearTimeout(state.lingerTimer);
    }
    await Promise.all(
      [...this.tenants.keys()].map(async (tenant) => {
        try {
          await this.flush(tenant, Math.max(1, deadline - Date.now()));
        } catch (err) {
          this.log.error({ err, tenant }, 'flush at shutdown did not complete');
        }
      }),
    );
    for (const state of this.tenants.values()) {
      for (const b of state.backoff) clearTimeout(b.retryTimer);
    }
    const left = this.pendingTotal;
    if (left > 0)
      this.log.error({ pending: left }, 'shutting down with events still pending; they are lost');
    return left;
  }

  private state(tenant: TenantId): TenantState {
    let s = this.tenants.get(tenant);
    if (!s) {
      s = {
        tenant,
        schema: tenantSchema(tenant),
        queue: [],
        inFlight: 0,
        backoff: new Set(),
        outstanding: new Set(),
        stats: emptyStats(),
        urgent: null,
      };
      this.tenants.set(tenant, s);
    }
    return s;
  }

  private schedule(state: TenantState, ack: Ack): void {
    if (state.queue.length >= this.opts.batchSize) {
      this.drain(state, 'size');
      return;
    }
    if (ack === 'COMMITTED') {
      // Linger briefly so concurrent COMMITTED calls share one transaction (group commit).
      state.lingerTimer ??= setTimeout(() => {
        state.lingerTimer = undefined;
        state.urgent ??= 'commit-wait';
        this.drain(state);
      }, this.opts.commitLingerMs);
      return;
    }
    state.intervalTimer ??= setTimeout(() => {
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
      clearTimeout(state.intervalTimer);
      state.intervalTimer = undefined;
    }
  }

  private async run(state: TenantState, batch: Batch): Promise<void> {
    state.inFlight++;
    batch.attempts++;
    const started = performance.now();
    const records = batch.entries.map((e) => e.record);
    try {
      const result = await this.writer.write(state.schema, batch.id, records);
      state.backoff.delete(batch);
      const statuses = result.statuses;
      batch.entries.forEach((entry, i) => {
        const status = statuses[i]!;
        if (status === 'STORED') state.stats.stored++;
        else state.stats.duplicates++;
        state.stats.pending--;
        this.bytesHeld -= entry.bytes;
        entry.ticket.settle(entry.index, status);
      });
      state.stats.conflicts += result.conflicts;
      state.stats.batches++;
      this.emitSettled({
        tenant: state.tenant,
        batchId: batch.id,
        trigger: batch.trigger,
        attempts: batch.attempts,
        committedAt: new Date(),
        durationMs: performance.now() - started,
        records,
        statuses,
      });
    } catch (err) {
      this.onWriteFailure(state, batch, err);
    } finally {
      state.inFlight--;
      if (state.queue.length > 0) this.drain(state);
    }
  }

  private onWriteFailure(state: TenantState, batch: Batch, err: unknown): void {
    const kind = classifyWriteError(err);
    const message = describeWriteError(err);
    state.stats.failedWrites++;
    state.stats.lastError = message;
    state.stats.lastErrorAt = new Date();
    // Without a dead-letter queue every failure is retried; the events stay pending and visible
    // (auditStats.pending, lastError) until a write succeeds.
    const delay = this.backoffDelay(batch.attempts);
    this.log.error(
      {
        tenant: state.tenant,
        batchId: batch.id,
        events: batch.entries.length,
        attempt: batch.attempts,
        kind,
        error: message,
        retryInMs: delay,
      },
      'batch write failed; will retry',
    );
    batch.trigger = 'retry';
    batch.retryAt = Date.now() + delay;
    state.backoff.add(batch);
    batch.retryTimer = setTimeout(() => this.retryNow(state, batch), delay);
  }

  private retryNow(state: TenantState, batch: Batch): void {
    if (!state.backoff.has(batch) || batch.retryTimer === undefined) return;
    clearTimeout(batch.retryTimer);
    batch.retryTimer = undefined;
    void this.run(state, batch);
  }

  /** Exponential backoff with full jitter, capped. */
  private backoffDelay(attempt: number): number {
    const ceiling = Math.min(
      this.opts.retryMaxMs,
      this.opts.retryBaseMs * 2 ** Math.min(attempt - 1, 20),
    );
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  private retryAfterMs(state: TenantState): number {
    let soonest = Number.POSITIVE_INFINITY;
    for (const b of state.backoff)
      if (b.retryAt !== undefined) soonest = Math.min(soonest, b.retryAt);
    if (Number.isFinite(soonest)) return Math.max(100, soonest - Date.now());
    return Math.max(100, Math.min(this.opts.flushIntervalMs, 1000));
  }

  private emitSettled(event: BatchSettled): void {
    for (const listener of this.settledListeners) {
      try {
        listener(event);
      } catch (err) {
        this.log.error({ err }, 'batch-settled listener failed');
      }
    }
  }
}
