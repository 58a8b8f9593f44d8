import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { expect } from 'vitest';
import type { AuditEventRecord } from '../../src/domain/event.js';
import type { TenantId } from '../../src/domain/tenant.js';
import type { RowRejection, WriteStatus } from '../../src/ingest/batch-writer.js';
import type { DeadLetter } from '../../src/ingest/dead-letter-queue.js';
import type { BatchSettled, DeadLetterEvent } from '../../src/ingest/events.js';
import type { JournalRef } from '../../src/ingest/journal/journal.js';
import type {
  Clock,
  PipelineListener,
  PipelineSink,
  TimerHandle,
  WriteOutcome,
} from '../../src/ingest/pipeline/ports.js';
import { type PipelineOptions, WritePipeline } from '../../src/ingest/pipeline/write-pipeline.js';
import { identityHolds } from '../../src/ingest/stats.js';

/** Lets every promise chain that can run now run (one turn of the event loop, no time passes). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Time that passes only when a test says so; timers fire in due order, ties in arming order. */
export class FakeClock implements Clock {
  static readonly EPOCH = Date.UTC(2030, 0, 1);
  private t = FakeClock.EPOCH;
  private nextId = 1;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  monotonic(): number {
    return this.t - FakeClock.EPOCH;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(timer: TimerHandle | undefined): void {
    if (typeof timer === 'number') this.timers.delete(timer);
  }

  /** Milliseconds from now to each armed timer, soonest first. */
  get armed(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }

  /** Moves time on by `ms`, firing every timer that falls due on the way (and what they start). */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let due: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at <= end && (!due || entry[1].at < due[1].at)) due = entry;
      }
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
    }
    this.t = end;
    await settle();
  }
}

/** One call of FakeSink.write, answered when the test says so. */
export interface FakeWrite {
  tenant: TenantId;
  batchId: string;
  records: readonly AuditEventRecord[];
  /** Each record's place in the journal, as the pipeline gave it (absent: none journaled). */
  journal: readonly (JournalRef | null)[] | undefined;
  answered: boolean;
  /** Answers with these statuses (default: every row STORED); REJECTED rows get `why`. */
  succeed(statuses?: WriteStatus[], why?: RowRejection, conflicts?: number): void;
  /** The write as a whole failed. */
  fail(err?: Error): void;
}

export type StoreMode = 'accept' | 'fail' | 'hang';

/** A sink that records what it is given: writes wait for the test; the stores obey their mode. */
export class FakeSink implements PipelineSink {
  readonly writes: FakeWrite[] = [];
  readonly deadLetters: DeadLetter[] = [];
  readonly spooled: DeadLetter[] = [];
  deadLetterMode: StoreMode = 'accept';
  /** null: the sink has no spool. */
  spoolMode: StoreMode | null = 'accept';
  deadLetterCalls = 0;
  /** Absent unless a test gives one: BUFFERED then means memory. */
  journal?: PipelineSink['journal'];
  /** Absent unless a test gives them: only the pipeline's own counters. */
  books?: PipelineSink['books'];

  write(
    tenant: TenantId,
    batchId: string,
    records: readonly AuditEventRecord[],
    journal?: readonly (JournalRef | null)[],
  ): Promise<WriteOutcome> {
    return new Promise((resolve, reject) => {
      const call: FakeWrite = {
        tenant,
        batchId,
        records,
        journal,
        answered: false,
        succeed: (statuses, why, conflicts = 0) => {
          call.answered = true;
          const all = statuses ?? records.map(() => 'STORED' as const);
          const rejections = new Map<number, RowRejection>();
          all.forEach((s, i) => {
            if (s === 'REJECTED') rejections.set(i, why ?? { sqlState: null, message: 'bad row' });
          });
          resolve({ statuses: all, rejections, conflicts });
        },
        fail: (err = new Error('connection terminated unexpectedly')) => {
          call.answered = true;
          reject(err);
        },
      };
      this.writes.push(call);
    });
  }

  /** Writes not answered yet, oldest first. */
  get open(): FakeWrite[] {
    return this.writes.filter((w) => !w.answered);
  }

  deadLetter(dl: DeadLetter): Promise<void> {
    this.deadLetterCalls++;
    return this.store(this.deadLetterMode, this.deadLetters, dl, 'dead-letter queue unreachable');
  }

  get spool(): ((dl: DeadLetter) => Promise<void>) | undefined {
    const mode = this.spoolMode;
    if (mode === null) return undefined;
    return (dl) => this.store(mode, this.spooled, dl, 'disk full');
  }

  private store(mode: StoreMode, into: DeadLetter[], dl: DeadLetter, why: string) {
    if (mode === 'fail') return Promise.reject(new Error(why));
    if (mode === 'hang') return new Promise<void>(() => {});
    into.push(dl);
    return Promise.resolve();
  }
}

/** Keeps what the pipeline reports. */
export class FakeListener implements PipelineListener {
  readonly settled: BatchSettled[] = [];
  readonly deadLettered: DeadLetterEvent[] = [];
  batchSettled(e: BatchSettled): void {
    this.settled.push(e);
  }
  deadLetter(e: DeadLetterEvent): void {
    this.deadLettered.push(e);
  }
}

export const TENANT = 'acme' as TenantId;

export function record(n = 0): AuditEventRecord {
  const at = new Date(FakeClock.EPOCH - 60_000 + n);
  return {
    id: randomUUID(),
    occurredAt: at,
    receivedAt: at,
    eventType: 'user.login',
    category: 'auth',
    action: 'login',
    outcome: 'SUCCESS',
    correlationId: `c-${n}`,
    actorType: 'user',
    actorId: 'u-1',
    actorIp: null,
    resourceType: 'session',
    resourceId: `s-${n}`,
    resourceName: null,
    parentEventId: null,
    severity: null,
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: null,
  };
}

export function records(count: number): AuditEventRecord[] {
  return Array.from({ length: count }, (_, i) => record(i));
}

export const OPTIONS: PipelineOptions = {
  batchSize: 3,
  flushIntervalMs: 1_000,
  commitLingerMs: 10,
  commitTimeoutMs: 5_000,
  bufferCapacity: 10,
  bufferMaxBytes: 1_000_000,
  accessLogBufferCapacity: 4,
  writerConcurrency: 2,
  retryBaseMs: 100,
  retryMaxMs: 1_000,
  writeMaxAttempts: 3,
  deadLetterFirstRetryMs: 30_000,
  instanceId: 'instance-1',
};

/**
 * A pipeline on a fake sink and a fake clock. `advance` and `settle` check the accounting
 * identity (and that nothing settled still holds buffer bytes) for every tenant each time.
 */
export function harness(options: Partial<PipelineOptions> = {}, random: () => number = () => 1) {
  const clock = new FakeClock();
  const sink = new FakeSink();
  const listener = new FakeListener();
  const commitWaits: { ms: number; outcome: string }[] = [];
  const opts = {
    ...OPTIONS,
    onCommitWait: (ms: number, outcome: string) => commitWaits.push({ ms, outcome }),
    ...options,
  };
  const log = pino({ level: 'silent' });
  const pipeline = new WritePipeline(sink, listener, log, opts, clock, random);
  const checkIdentity = () => {
    for (const tenant of pipeline.tenantIds()) {
      const s = pipeline.stats(tenant);
      expect(identityHolds(s), JSON.stringify(s)).toBe(true);
      expect(s.pending).toBeGreaterThanOrEqual(0);
    }
    if (pipeline.pendingTotal === 0) expect(pipeline.bufferBytes).toBe(0);
  };
  return {
    clock,
    sink,
    listener,
    pipeline,
    commitWaits,
    stats: (tenant: TenantId = TENANT) => pipeline.stats(tenant),
    async settle() {
      await settle();
      checkIdentity();
    },
    async advance(ms: number) {
      await clock.advance(ms);
      checkIdentity();
    },
    checkIdentity,
  };
}

/** Follows a promise without awaiting it: `state()` says whether it is still pending. */
export function watch<T>(p: Promise<T>) {
  const seen: { done: boolean; value?: T; error?: unknown } = { done: false };
  p.then(
    (value) => {
      seen.done = true;
      seen.value = value;
    },
    (error) => {
      seen.done = true;
      seen.error = error;
    },
  );
  return seen;
}
