import { randomUUID } from 'node:crypto';
import { sqlState } from '../db/client.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import { asError, type Logger } from '../logger.js';
import type { BatchWriter } from './batch-writer.js';
import type { DeadLetter, DeadLetterDepth, DeadLetterStore } from './dead-letter-queue.js';
import type { DeadLetterEventKind, IngestEvents } from './events.js';
import { describeWriteError } from './failure-classifier.js';
import type { IngestService } from './ingest-service.js';

export interface RetryWorkerOptions {
  pollMs: number;
  /** Delays between replays; after the last one a dead letter is parked. */
  scheduleMs: number[];
  /** Dead-lettered events at which new writes are refused (never trimmed). */
  maxEvents: number;
  instanceId: string;
}

/**
 * Replays dead letters on their schedule (several instances share the work through the store's
 * claims), parks them after the last attempt, and watches the queue's depth and health.
 */
export class RetryWorker {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;
  /** Last observation of the queue, for readiness and metrics. */
  lastDepth: DeadLetterDepth = {
    entries: 0,
    events: 0,
    parkedEntries: 0,
    parkedEvents: 0,
    oldestAgeMs: 0,
  };
  lastHealthy = true;

  constructor(
    private readonly store: DeadLetterStore,
    private readonly writer: BatchWriter,
    private readonly ingest: IngestService,
    private readonly events: IngestEvents,
    private readonly log: Logger,
    private readonly opts: RetryWorkerOptions,
    private readonly spool?: DeadLetterStore,
  ) {}

  async start(): Promise<void> {
    this.stopped = false;
    await this.requeueSpool();
    await this.observe();
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /**
   * Runs one round that starts after this call (tests and flushes use it instead of waiting for
   * the timer), so what it observes includes everything done before the call.
   */
  async runOnce(): Promise<void> {
    // A round already under way may have looked at the queue before the caller's change (a
    // dead letter just enqueued): wait for it, then join or start one that begins after the call.
    if (this.running) await this.running.catch(() => undefined);
    this.running ??= this.round().finally(() => {
      this.running = undefined;
    });
    await this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.runOnce().finally(() => this.schedule());
    }, this.opts.pollMs);
    this.timer.unref();
  }

  private async round(): Promise<void> {
    await this.observe();
    if (!this.lastHealthy) return;
    let due: DeadLetter[] = [];
    try {
      due = await this.store.claimDue(20);
    } catch (err) {
      this.log.warn({ err: asError(err) }, 'could not read the dead-letter queue');
      return;
    }
    for (const dl of due) {
      if (this.stopped) break;
      await this.replay(dl);
    }
  }

  private async observe(): Promise<void> {
    this.lastHealthy = await this.store.healthy();
    if (!this.lastHealthy) return;
    try {
      this.lastDepth = await this.store.depth();
      this.ingest.setDeadLettersFull(this.lastDepth.events >= this.opts.maxEvents);
    } catch (err) {
      this.lastHealthy = false;
      this.log.warn({ err: asError(err) }, 'could not measure the dead-letter queue');
    }
  }

  private async replay(dl: DeadLetter): Promise<void> {
    const started = performance.now();
    let result: Awaited<ReturnType<BatchWriter['write']>>;
    try {
      result = await this.writer.write(tenantSchema(dl.tenant), dl.id, dl.records, dl.journalRefs);
    } catch (err) {
      await this.failed(dl, dl.id, dl.records, {
        code: sqlState(err) ?? null,
        message: describeWriteError(err),
      });
      return;
    }
    const rejected = dl.records.filter((_, i) => result.statuses[i] === 'REJECTED');
    const stored = result.statuses.filter((s) => s === 'STORED').length;
    const duplicates = result.statuses.filter((s) => s === 'DUPLICATE').length;
    const first = [...result.rejections.values()][0];
    if (rejected.length === 0) {
      await this.store.complete(dl);
      this.emit(dl, 'RECOVERED', dl.records.length, null);
    } else if (stored + duplicates === 0) {
      await this.failed(dl, dl.id, dl.records, {
        code: first?.sqlState ?? null,
        message: first?.message ?? 'rejected by the database',
      });
    } else {
      // The good rows are stored; what remains is only the refused rows, under a new id (the
      // old id is now a committed batch in the ledger).
      const journalRefs = dl.journalRefs?.filter((_, i) => result.statuses[i] === 'REJECTED');
      await this.failed({ ...dl, id: randomUUID(), journalRefs }, dl.id, rejected, {
        code: first?.sqlState ?? null,
        message: first?.message ?? 'rejected by the database',
      });
    }
    // Counted only once the queue no longer holds them: a replay whose removal failed is
    // replayed again, found in the ledger, and counted then.
    if (stored + duplicates > 0) {
      this.ingest.recordRecovered(dl.tenant, stored, duplicates);
      this.events.batchSettled({
        tenant: dl.tenant,
        batchId: dl.id,
        trigger: 'retry',
        recovered: true,
        attempts: dl.attempts + 1,
        committedAt: new Date(),
        durationMs: performance.now() - started,
        instanceId: this.opts.instanceId,
        records: dl.records.filter((_, i) => result.statuses[i] !== 'REJECTED'),
        statuses: result.statuses.filter((s) => s !== 'REJECTED') as ('STORED' | 'DUPLICATE')[],
        chainSeqs: result.chainSeqs?.filter((_, i) => result.statuses[i] !== 'REJECTED'),
      });
    }
  }

  private async failed(
    dl: DeadLetter,
    previousId: string,
    records: DeadLetter['records'],
    failure: { code: string | null; message: string },
  ): Promise<void> {
    // Replay k waits scheduleMs[k - 1] (the first, from the dead-lettering); after as many
    // replays as the schedule has delays, the dead letter is parked.
    const replays = (dl.replays ?? 0) + 1;
    const park = replays >= this.opts.scheduleMs.length;
    const delay = this.opts.scheduleMs[replays] ?? 0;
    const next: DeadLetter = {
      ...dl,
      records,
      state: park ? 'PARKED' : 'ACTIVE',
      attempts: dl.attempts + 1,
      replays,
      errorCode: failure.code,
      error: failure.message,
      lastFailedAt: new Date(),
      // Jitter keeps instances that failed together from retrying together.
      nextAttemptAt: park
        ? null
        : new Date(Date.now() + Math.round(delay * (0.8 + Math.random() * 0.4))),
    };
    await this.store.reschedule(next, previousId);
    this.log.warn(
      { tenant: dl.tenant, deadLetterId: next.id, replays, parked: park, error: failure.message },
      park ? 'dead letter parked after its last replay' : 'dead letter replay failed; rescheduled',
    );
    this.emit(next, park ? 'PARKED' : 'RETRIED', records.length, failure.message);
  }

  private emit(
    dl: DeadLetter,
    kind: DeadLetterEventKind,
    events: number,
    error: string | null,
  ): void {
    this.events.deadLetter({
      tenant: dl.tenant,
      kind,
      deadLetterId: dl.id,
      events,
      attempts: dl.attempts,
      error,
      at: new Date(),
      instanceId: this.opts.instanceId,
    });
  }

  /** Moves what a previous run spooled to local disk (the queue was unreachable) into the queue. */
  private async requeueSpool(): Promise<void> {
    if (!this.spool || this.spool === this.store) return;
    let spooled: DeadLetter[];
    try {
      spooled = await this.spool.claimDue(Number.MAX_SAFE_INTEGER);
    } catch {
      return;
    }
    for (const dl of spooled) {
      try {
        await this.store.add(dl);
        await this.spool.complete(dl);
        this.ingest.recordRequeued(dl.tenant as TenantId, dl.records.length);
        this.log.info(
          { tenant: dl.tenant, deadLetterId: dl.id, events: dl.records.length },
          'spooled events re-queued',
        );
        this.emit(dl, 'ENQUEUED', dl.records.length, dl.error);
      } catch (err) {
        this.log.error(
          { err: asError(err), deadLetterId: dl.id },
          'could not re-queue spooled events; kept on disk',
        );
      }
    }
  }
}
