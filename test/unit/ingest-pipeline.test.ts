import { describe, expect, it } from 'vitest';
import {
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  LimitExceededError,
  ShuttingDownError,
} from '../../src/domain/errors.js';
import type { TenantId } from '../../src/domain/tenant.js';
import { harness, records, TENANT, watch } from '../support/pipeline-fakes.js';

/**
 * The write pipeline's rules on a fake sink and a fake clock: no database, no Redis, and no
 * time passes unless a test moves the clock. The harness checks the accounting identity
 * (accepted = stored + duplicates + pending + deadLettered + discarded) at every step.
 */

describe('size and interval triggers', () => {
  it('writes a full batch at once (size), and holds the rest for the interval', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(7), 'BUFFERED');
    await h.settle();
    // Two full batches of 3 start at once (writerConcurrency 2); the seventh event waits.
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([3, 3]);
    expect(h.stats()).toMatchObject({ accepted: 7, pending: 7, stored: 0 });
    for (const w of h.sink.open) w.succeed();
    await h.settle();
    expect(h.stats()).toMatchObject({ accepted: 7, pending: 1, stored: 6, batches: 2 });
    expect(h.listener.settled.map((b) => b.trigger)).toEqual(['size', 'size']);
    expect(h.sink.writes).toHaveLength(2);
  });

  it('starts a batch by size as soon as a call completes it', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    await h.advance(999);
    // Negative control: two of three wait for the interval.
    expect(h.sink.writes).toHaveLength(0);
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.settle();
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([3]);
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(h.listener.settled[0]!.trigger).toBe('size');
    // The interval was disarmed with the queue empty: nothing is written at its deadline.
    await h.advance(1);
    expect(h.sink.writes).toHaveLength(1);
    expect(h.clock.armed).toEqual([]);
  });

  it('writes a partial batch when the interval falls due (interval)', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.advance(500);
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.advance(499);
    expect(h.sink.writes).toHaveLength(0);
    await h.advance(1);
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([2]);
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(h.listener.settled.map((b) => b.trigger)).toEqual(['interval']);
    expect(h.stats()).toMatchObject({ accepted: 2, stored: 2, pending: 0 });
    // Nothing is left to write, so nothing stays armed.
    expect(h.clock.armed).toEqual([]);
  });
});

describe('acknowledgements: BUFFERED at once, COMMITTED once settled', () => {
  it('lingers briefly so concurrent COMMITTED calls share one write (commit-wait)', async () => {
    const h = harness();
    const first = watch(h.pipeline.accept(TENANT, records(1), 'COMMITTED'));
    await h.advance(5);
    const second = watch(h.pipeline.accept(TENANT, records(1), 'COMMITTED'));
    await h.advance(4);
    expect(h.sink.writes).toHaveLength(0);
    await h.advance(1);
    // Both calls in one batch, written after the linger of the first one.
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([2]);
    expect(first.done).toBe(false);
    h.sink.writes[0]!.succeed(['STORED', 'DUPLICATE']);
    await h.settle();
    expect(first.value!.map((e) => e.status)).toEqual(['STORED']);
    expect(second.value!.map((e) => e.status)).toEqual(['DUPLICATE']);
    expect(h.listener.settled[0]!.trigger).toBe('commit-wait');
    expect(h.stats()).toMatchObject({ stored: 1, duplicates: 1, pending: 0 });
    expect(h.commitWaits.map((c) => c.outcome)).toEqual(['settled', 'settled']);
    // The first call waited the whole linger; the second half of it.
    expect(h.commitWaits.map((c) => c.ms)).toEqual([10, 5]);
  });

  it('answers a BUFFERED call at once, before anything is written', async () => {
    const h = harness();
    const events = await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    expect(events.map((e) => e.status)).toEqual(['BUFFERED', 'BUFFERED']);
    expect(h.sink.writes).toHaveLength(0);
    await h.settle();
  });

  it('answers CommitTimeoutError when a COMMITTED call is not settled in time; its events stay pending', async () => {
    const h = harness();
    const call = watch(h.pipeline.accept(TENANT, records(2), 'COMMITTED'));
    await h.advance(10);
    expect(h.sink.writes).toHaveLength(1);
    await h.advance(4_989);
    expect(call.done).toBe(false);
    await h.advance(1);
    expect(call.error).toBeInstanceOf(CommitTimeoutError);
    expect(call.error).toMatchObject({ pending: 2, timeoutMs: 5_000 });
    expect((call.error as CommitTimeoutError).events.map((e) => e.status)).toEqual([
      'BUFFERED',
      'BUFFERED',
    ]);
    expect(h.commitWaits).toEqual([{ ms: 5_000, outcome: 'timeout' }]);
    expect(h.stats()).toMatchObject({ accepted: 2, pending: 2 });
    // Written later all the same.
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(h.stats()).toMatchObject({ stored: 2, pending: 0 });
  });
});

describe('concurrency and tenants', () => {
  it('never has more writes of one tenant in flight than writerConcurrency', async () => {
    const h = harness({ writerConcurrency: 1 });
    await h.pipeline.accept(TENANT, records(9), 'BUFFERED');
    await h.settle();
    expect(h.sink.open).toHaveLength(1);
    h.sink.open[0]!.succeed();
    await h.settle();
    expect(h.sink.open).toHaveLength(1);
    expect(h.sink.writes).toHaveLength(2);
    h.sink.open[0]!.succeed();
    await h.settle();
    h.sink.open[0]!.succeed();
    await h.settle();
    expect(h.sink.writes).toHaveLength(3);
    expect(h.stats()).toMatchObject({ stored: 9, pending: 0 });
  });

  it('keeps tenants apart: one tenant’s batch size is not filled by another’s events', async () => {
    const h = harness();
    const other = 'globex' as TenantId;
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    await h.pipeline.accept(other, records(2), 'BUFFERED');
    await h.settle();
    expect(h.sink.writes).toHaveLength(0);
    await h.advance(1_000);
    expect(h.sink.writes.map((w) => [w.tenant, w.records.length])).toEqual([
      [TENANT, 2],
      [other, 2],
    ]);
  });
});

describe('backoff', () => {
  it('retries a failed batch under the same id on the backoff schedule, capped at retryMaxMs', async () => {
    // random() = 1: each delay is its ceiling, retryBaseMs × 2^(attempt-1) up to retryMaxMs.
    const h = harness({ writeMaxAttempts: 6 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    const id = h.sink.writes[0]!.batchId;
    const delays: number[] = [];
    for (const expected of [100, 200, 400, 800, 1_000]) {
      h.sink.open[0]!.fail();
      await h.settle();
      delays.push(h.clock.armed[0]!);
      expect(h.stats()).toMatchObject({ pending: 3, deadLettered: 0 });
      expect(h.sink.deadLetters).toHaveLength(0);
      // Not one millisecond early.
      const before = h.sink.writes.length;
      await h.advance(expected - 1);
      expect(h.sink.writes).toHaveLength(before);
      await h.advance(1);
      expect(h.sink.writes).toHaveLength(before + 1);
      expect(h.sink.writes.at(-1)!.batchId).toBe(id);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1_000]);
    expect(h.stats()).toMatchObject({ failedWrites: 5, lastError: expect.any(String) });
    h.sink.open[0]!.succeed();
    await h.settle();
    expect(h.stats()).toMatchObject({ stored: 3, pending: 0 });
    expect(h.listener.settled[0]).toMatchObject({ trigger: 'retry', attempts: 6, batchId: id });
  });

  it('jitters each delay between half its ceiling and the ceiling', async () => {
    const low = harness({}, () => 0);
    await low.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await low.settle();
    low.sink.open[0]!.fail();
    await low.settle();
    expect(low.clock.armed).toEqual([50]);
    const mid = harness({}, () => 0.5);
    await mid.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await mid.settle();
    mid.sink.open[0]!.fail();
    await mid.settle();
    expect(mid.clock.armed).toEqual([75]);
  });
});

describe('dead letters after the last attempt', () => {
  it('dead-letters a batch whose attempts are used up, under its own id, and not before', async () => {
    const h = harness({ writeMaxAttempts: 3 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    const id = h.sink.writes[0]!.batchId;
    const err = Object.assign(new Error('could not serialize access'), { code: '40001' });
    h.sink.open[0]!.fail(err);
    await h.advance(100);
    h.sink.open[0]!.fail(err);
    await h.settle();
    // Negative control: two failed attempts of three leave it in backoff.
    expect(h.sink.deadLetters).toHaveLength(0);
    expect(h.stats()).toMatchObject({ pending: 3, deadLettered: 0 });
    await h.advance(200);
    h.sink.open[0]!.fail(err);
    await h.settle();
    expect(h.sink.deadLetters).toHaveLength(1);
    expect(h.sink.deadLetters[0]).toMatchObject({
      id,
      tenant: TENANT,
      state: 'ACTIVE',
      attempts: 3,
      errorCode: '40001',
      error: '40001: could not serialize access',
    });
    expect(h.sink.deadLetters[0]!.nextAttemptAt!.getTime()).toBe(h.clock.now() + 30_000);
    expect(h.stats()).toMatchObject({ pending: 0, deadLettered: 3, failedWrites: 3 });
    expect(h.listener.deadLettered).toMatchObject([{ kind: 'ENQUEUED', events: 3, attempts: 3 }]);
    expect(h.listener.settled[0]!.statuses).toEqual([
      'DEAD_LETTERED',
      'DEAD_LETTERED',
      'DEAD_LETTERED',
    ]);
    expect(h.clock.armed).toEqual([]);
  });

  it('keeps an exhausted batch pending in backoff while the dead-letter queue is unreachable', async () => {
    const h = harness({ writeMaxAttempts: 1 });
    h.sink.deadLetterMode = 'fail';
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.open[0]!.fail();
    await h.settle();
    expect(h.stats()).toMatchObject({ pending: 3, deadLettered: 0 });
    expect(h.clock.armed).toEqual([100]);
    h.sink.deadLetterMode = 'accept';
    await h.advance(100);
    h.sink.open[0]!.fail();
    await h.settle();
    expect(h.stats()).toMatchObject({ pending: 0, deadLettered: 3 });
  });
});

describe('rows the database refuses', () => {
  it('stores the good rows of a batch and dead-letters the rows the database refused, under a new id', async () => {
    const h = harness();
    const call = watch(h.pipeline.accept(TENANT, records(3), 'COMMITTED'));
    await h.settle();
    const write = h.sink.writes[0]!;
    write.succeed(['STORED', 'REJECTED', 'STORED'], { sqlState: '22P02', message: 'bad text' });
    await h.settle();
    expect(h.stats()).toMatchObject({ stored: 2, deadLettered: 1, pending: 0, batches: 1 });
    expect(h.sink.deadLetters).toHaveLength(1);
    expect(h.sink.deadLetters[0]!.id).not.toBe(write.batchId);
    expect(h.sink.deadLetters[0]).toMatchObject({ errorCode: '22P02', error: 'bad text' });
    expect(h.sink.deadLetters[0]!.records).toEqual([write.records[1]]);
    expect(call.value!.map((e) => e.status)).toEqual(['STORED', 'DEAD_LETTERED', 'STORED']);
    // The refused row is never written again.
    expect(h.sink.writes).toHaveLength(1);
  });

  it('keeps refused rows pending while the dead-letter queue is unreachable, then only dead-letters them', async () => {
    const h = harness();
    h.sink.deadLetterMode = 'fail';
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.writes[0]!.succeed(['STORED', 'REJECTED', 'REJECTED']);
    await h.settle();
    expect(h.stats()).toMatchObject({ stored: 1, pending: 2, deadLettered: 0 });
    h.sink.deadLetterMode = 'accept';
    await h.advance(100);
    // The retry goes to the dead-letter queue, not to the database.
    expect(h.sink.writes).toHaveLength(1);
    expect(h.stats()).toMatchObject({ stored: 1, pending: 0, deadLettered: 2 });
  });
});

describe('counters outside the buffer', () => {
  it('counts conflicts, recoveries, discards, requeues and expiries without breaking the identity', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.writes[0]!.succeed(['STORED', 'DUPLICATE', 'DUPLICATE'], undefined, 1);
    await h.settle();
    expect(h.stats()).toMatchObject({ stored: 1, duplicates: 2, conflicts: 1 });
    h.pipeline.recordRequeued(TENANT, 4);
    h.checkIdentity();
    h.pipeline.recordRecovered(TENANT, 2, 1);
    h.checkIdentity();
    h.pipeline.recordDiscarded(TENANT, 1);
    h.checkIdentity();
    h.pipeline.recordExpired(TENANT, 2);
    h.checkIdentity();
    expect(h.stats()).toMatchObject({
      accepted: 7,
      stored: 3,
      duplicates: 3,
      deadLettered: 0,
      discarded: 1,
      replayed: 3,
      expired: 2,
    });
  });
});

describe('the flush barrier', () => {
  it('writes a partial batch at once and resolves when everything accepted before it has settled', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const flush = watch(h.pipeline.flush(TENANT, 10_000));
    await h.settle();
    expect(h.sink.writes).toHaveLength(1);
    // Events accepted after the flush began are not part of it.
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.settle();
    expect(flush.done).toBe(false);
    h.sink.writes[0]!.succeed(['STORED', 'DUPLICATE']);
    await h.settle();
    expect(flush.value).toMatchObject({
      stored: 1,
      duplicates: 1,
      deadLettered: 0,
      waitedFor: 2,
      instances: ['instance-1'],
    });
    expect(h.listener.settled[0]!.trigger).toBe('flush');
  });

  it('stays pending while a write never settles, and says how many at its timeout', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const flush = watch(h.pipeline.flush(TENANT, 3_000));
    await h.advance(2_999);
    expect(flush.done).toBe(false);
    await h.advance(1);
    expect(flush.error).toBeInstanceOf(FlushTimeoutError);
    expect(flush.error).toMatchObject({ pending: 2, timeoutMs: 3_000 });
    expect(h.stats()).toMatchObject({ pending: 2 });
  });

  it('waits for a COMMITTED call still lingering, and for a batch of it in flight', async () => {
    const h = harness({ batchSize: 2 });
    const committed = watch(h.pipeline.accept(TENANT, records(3), 'COMMITTED'));
    await h.settle();
    expect(h.sink.writes).toHaveLength(1);
    const flush = watch(h.pipeline.flush(TENANT, 10_000));
    await h.settle();
    // The lingering rest is written now, without waiting for the linger.
    expect(h.sink.writes).toHaveLength(2);
    h.sink.writes[1]!.succeed();
    await h.settle();
    expect(flush.done).toBe(false);
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(flush.value).toMatchObject({ stored: 3, waitedFor: 3 });
    expect(committed.value!.map((e) => e.status)).toEqual(['STORED', 'STORED', 'STORED']);
  });
});

describe('the flush barrier over batches in backoff', () => {
  it('decides a batch in backoff now, dead-lettering it if it fails again', async () => {
    const h = harness({ writeMaxAttempts: 10 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.open[0]!.fail();
    await h.settle();
    expect(h.clock.armed).toEqual([100]);
    const flush = watch(h.pipeline.flush(TENANT, 10_000));
    await h.settle();
    // Retried at once, not after its delay.
    expect(h.sink.writes).toHaveLength(2);
    h.sink.open[0]!.fail();
    await h.settle();
    expect(flush.value).toMatchObject({ deadLettered: 3, stored: 0 });
    expect(h.sink.deadLetters[0]!.attempts).toBe(2);
    expect(h.stats()).toMatchObject({ deadLettered: 3, pending: 0 });
  });

  it('dead-letters at once a batch that fails while a flush waits', async () => {
    const h = harness({ writeMaxAttempts: 10 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    const flush = watch(h.pipeline.flush(TENANT, 10_000));
    await h.settle();
    h.sink.open[0]!.fail();
    await h.settle();
    expect(flush.value).toMatchObject({ deadLettered: 3 });
    // Negative control: without a flush waiting, the same failure backs off.
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.open[0]!.fail();
    await h.settle();
    expect(h.stats()).toMatchObject({ pending: 3, deadLettered: 3 });
    expect(h.clock.armed).toEqual([100]);
  });

  it('answers at once for a tenant with nothing outstanding', async () => {
    const h = harness();
    expect(await h.pipeline.flush(TENANT, 1)).toMatchObject({ waitedFor: 0, durationMs: 0 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(await h.pipeline.flush(TENANT, 1)).toMatchObject({ waitedFor: 0, stored: 0 });
  });
});

describe('backpressure', () => {
  it('refuses a call whole when it would pass bufferCapacity, and takes calls again once written', async () => {
    const h = harness({ bufferCapacity: 5, batchSize: 100 });
    await h.pipeline.accept(TENANT, records(4), 'BUFFERED');
    const refused = await h.pipeline.accept(TENANT, records(2), 'BUFFERED').catch((e) => e);
    expect(refused).toBeInstanceOf(BackpressureError);
    expect(refused).toMatchObject({ limit: 'BUFFER_CAPACITY', retryAfterMs: 1_000 });
    expect(h.stats()).toMatchObject({ accepted: 4, pending: 4 });
    // Exactly at the bound is still accepted.
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.settle();
    await h.advance(1_000);
    h.sink.writes[0]!.succeed();
    await h.settle();
    await h.pipeline.accept(TENANT, records(5), 'BUFFERED');
    expect(h.stats()).toMatchObject({ accepted: 10, stored: 5, pending: 5 });
    await h.settle();
  });

  it('says to retry when the soonest batch in backoff is due', async () => {
    const h = harness({ bufferCapacity: 3 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    h.sink.open[0]!.fail();
    await h.settle();
    await h.advance(30);
    const refused = await h.pipeline.accept(TENANT, records(1), 'BUFFERED').catch((e) => e);
    // Never less than 100 ms.
    expect(refused).toMatchObject({ limit: 'BUFFER_CAPACITY', retryAfterMs: 100 });
    const slow = harness({ bufferCapacity: 3, retryBaseMs: 1_000, retryMaxMs: 5_000 });
    await slow.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await slow.settle();
    slow.sink.open[0]!.fail();
    await slow.advance(300);
    const later = await slow.pipeline.accept(TENANT, records(1), 'BUFFERED').catch((e) => e);
    expect(later).toMatchObject({ retryAfterMs: 700 });
  });

  it('refuses a call that would pass bufferMaxBytes over all tenants', async () => {
    const one = harness().pipeline;
    await one.accept(TENANT, records(1), 'BUFFERED');
    const perRecord = one.bufferBytes;
    const h = harness({ bufferMaxBytes: perRecord * 3 });
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const other = 'globex' as TenantId;
    const refused = await h.pipeline.accept(other, records(2), 'BUFFERED').catch((e) => e);
    expect(refused).toMatchObject({ limit: 'BUFFER_MAX_BYTES' });
    await h.pipeline.accept(other, records(1), 'BUFFERED');
    expect(h.pipeline.bufferBytes).toBe(perRecord * 3);
    await h.settle();
  });

  it('refuses writes while the dead-letter queue is full, and takes them again after', async () => {
    const h = harness();
    h.pipeline.setDeadLettersFull(true);
    expect(h.pipeline.isDeadLetterQueueFull).toBe(true);
    const refused = await h.pipeline.accept(TENANT, records(1), 'BUFFERED').catch((e) => e);
    expect(refused).toMatchObject({ limit: 'DLQ_MAX_EVENTS', retryAfterMs: 5_000 });
    h.pipeline.setDeadLettersFull(false);
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    expect(h.stats()).toMatchObject({ accepted: 1 });
    await h.settle();
  });

  it('holds access records in their own share: reads never take room from writes', async () => {
    const h = harness({ bufferCapacity: 3, accessLogBufferCapacity: 2, batchSize: 100 });
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED', 'read');
    const full = await h.pipeline.accept(TENANT, records(1), 'BUFFERED', 'read').catch((e) => e);
    expect(full).toBeInstanceOf(LimitExceededError);
    expect(full).toMatchObject({ limit: 'ACCESS_LOG_BUFFER_CAPACITY', max: 2 });
    // The client's whole capacity is still free.
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    const refused = await h.pipeline.accept(TENANT, records(1), 'BUFFERED').catch((e) => e);
    expect(refused).toMatchObject({ limit: 'BUFFER_CAPACITY' });
    // Administration records always get a place.
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED', 'admin');
    expect(h.stats()).toMatchObject({ accepted: 7, pending: 7 });
    await h.advance(1_000);
    h.sink.writes[0]!.succeed();
    await h.settle();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED', 'read');
    await h.settle();
  });
});

/** Retries later than any shutdown deadline below, so a batch in backoff stays there. */
const SLOW_RETRIES = { retryBaseMs: 10_000, retryMaxMs: 10_000 };

describe('shutdown', () => {
  it('refuses new calls once stopping, writes what it holds, and leaves no timer armed', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const committed = watch(h.pipeline.accept('globex' as TenantId, records(1), 'COMMITTED'));
    const stop = watch(h.pipeline.stop(10_000));
    expect(h.pipeline.isStopping).toBe(true);
    await expect(h.pipeline.accept(TENANT, records(1), 'BUFFERED')).rejects.toBeInstanceOf(
      ShuttingDownError,
    );
    await h.settle();
    // Written at once: the interval and the linger are not waited for.
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([2, 1]);
    for (const w of h.sink.open) w.succeed();
    await h.settle();
    expect(stop.value).toBe(0);
    expect(committed.value!.map((e) => e.status)).toEqual(['STORED']);
    expect(h.listener.settled.map((b) => b.trigger)).toEqual(['flush', 'flush']);
    expect(h.stats()).toMatchObject({ accepted: 2, stored: 2 });
    expect(h.sink.deadLetters).toHaveLength(0);
    expect(h.clock.armed).toEqual([]);
  });

  it('dead-letters a batch that fails while stopping, and spools it when the queue is unreachable', async () => {
    const h = harness(SLOW_RETRIES);
    h.sink.deadLetterMode = 'fail';
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const stop = watch(h.pipeline.stop(1_000));
    await h.settle();
    const id = h.sink.writes[0]!.batchId;
    h.sink.open[0]!.fail();
    await h.settle();
    // In backoff, its dead letter refused: the flush waits out its 60% of the deadline.
    expect(stop.done).toBe(false);
    expect(h.stats()).toMatchObject({ pending: 2 });
    await h.advance(600);
    expect(stop.value).toBe(0);
    expect(h.sink.spooled).toHaveLength(1);
    expect(h.sink.spooled[0]).toMatchObject({ id, attempts: 1, state: 'ACTIVE' });
    expect(h.stats()).toMatchObject({ deadLettered: 2, pending: 0 });
    // Negative control: with the queue reachable the spool is not used.
    const ok = harness();
    await ok.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const stopped = watch(ok.pipeline.stop(10_000));
    await ok.settle();
    ok.sink.open[0]!.fail();
    await ok.settle();
    expect(stopped.value).toBe(0);
    expect(ok.sink.spooled).toHaveLength(0);
    expect(ok.sink.deadLetters.map((d) => d.id)).toEqual([ok.sink.writes[0]!.batchId]);
  });

  it('reports events lost when neither the queue nor a spool takes them', async () => {
    const h = harness(SLOW_RETRIES);
    h.sink.deadLetterMode = 'fail';
    h.sink.spoolMode = null;
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const stop = watch(h.pipeline.stop(1_000));
    await h.settle();
    h.sink.open[0]!.fail();
    await h.advance(600);
    expect(stop.value).toBe(2);
    expect(h.stats()).toMatchObject({ pending: 2, deadLettered: 0 });
  });
});

describe('shutdown deadline', () => {
  it('waits for a write in flight until the deadline, and never puts aside a batch being written', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const stop = watch(h.pipeline.stop(1_000));
    await h.settle();
    expect(h.sink.writes).toHaveLength(1);
    // The flush has 60% of the deadline; then the write in flight is waited for until the end.
    await h.advance(600);
    expect(stop.done).toBe(false);
    await h.advance(399);
    expect(stop.done).toBe(false);
    await h.advance(20);
    expect(stop.value).toBe(2);
    expect(h.sink.deadLetters).toHaveLength(0);
    expect(h.sink.spooled).toHaveLength(0);
  });

  it('lets a write that ends before the deadline settle instead of putting it aside', async () => {
    const h = harness();
    await h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    const stop = watch(h.pipeline.stop(1_000));
    await h.advance(700);
    expect(stop.done).toBe(false);
    h.sink.open[0]!.succeed();
    await h.advance(20);
    expect(stop.value).toBe(0);
    expect(h.stats()).toMatchObject({ stored: 2, pending: 0 });
  });

  it('spools a batch in backoff and a batch failed while stopping, each under its own id', async () => {
    const h = harness({ ...SLOW_RETRIES, writerConcurrency: 1, batchSize: 2 });
    await h.pipeline.accept(TENANT, records(3), 'BUFFERED');
    await h.settle();
    const first = h.sink.writes[0]!.batchId;
    h.sink.open[0]!.fail();
    await h.settle();
    // One batch in backoff, one event queued behind it; the queue is unreachable from now on.
    expect(h.stats()).toMatchObject({ pending: 3 });
    h.sink.deadLetterMode = 'fail';
    const stop = watch(h.pipeline.stop(1_000));
    await h.settle();
    // The flush writes the queued event and retries the batch in backoff at once.
    expect(h.sink.open.map((w) => w.records.length)).toEqual([1, 2]);
    const second = h.sink.open[0]!.batchId;
    for (const w of h.sink.open) w.fail();
    await h.advance(600);
    expect(stop.value).toBe(0);
    expect(h.sink.spooled.map((d) => d.id).sort()).toEqual([first, second].sort());
    expect(h.sink.spooled.find((d) => d.id === first)!.attempts).toBe(2);
    expect(h.stats()).toMatchObject({ pending: 0, deadLettered: 3 });
  });

  it('puts the queue aside under a new id, and leaves a batch still being written alone', async () => {
    const h = harness({ writerConcurrency: 1, batchSize: 2 });
    const all = records(3);
    await h.pipeline.accept(TENANT, all, 'BUFFERED');
    await h.settle();
    const stop = watch(h.pipeline.stop(1_000));
    await h.settle();
    // The one write allowed is in flight and never answers; the third event stays queued.
    expect(h.sink.writes).toHaveLength(1);
    await h.advance(1_020);
    expect(stop.value).toBe(2);
    expect(h.sink.deadLetters).toHaveLength(1);
    expect(h.sink.deadLetters[0]).toMatchObject({
      attempts: 0,
      records: [all[2]],
      error: 'the instance stopped before these events could be written',
    });
    expect(h.sink.deadLetters[0]!.id).not.toBe(h.sink.writes[0]!.batchId);
    expect(h.stats()).toMatchObject({ pending: 2, deadLettered: 1 });
  });
});
