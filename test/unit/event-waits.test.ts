import { describe, expect, it } from 'vitest';
import { ShuttingDownError } from '../../src/domain/errors.js';
import type { TenantId } from '../../src/domain/tenant.js';
import type { DeadLetter } from '../../src/ingest/dead-letter-queue.js';
import { createLogger } from '../../src/logger.js';
import { createRealtimeBus } from '../../src/realtime/pubsub.js';
import type { FlushCompletedMessage } from '../../src/realtime/topics.js';
import { EventWaits } from '../../src/usecases/event-waits.js';

/*
 * The wait's bookkeeping on the in-process bus, with a table whose count the test sets: the
 * announcements only say when to count again, and the count is what answers.
 */

const T = 'wait_unit' as TenantId;

function setup() {
  const bus = createRealtimeBus(
    { redisUrl: undefined, redisKeyPrefix: 'u:', subscriptionQueueMaxBytes: 1 << 20 },
    { instanceId: 'i1', log: createLogger({ logLevel: 'silent' }) },
  );
  const table = { rows: 0, counts: 0 };
  const deadLetters: DeadLetter[] = [];
  const waits = new EventWaits(
    bus,
    {
      async countCorrelation(_s, _c, atMost) {
        table.counts++;
        return Math.min(table.rows, atMost);
      },
    },
    { list: async () => deadLetters },
  );
  const announce = (stored: number, deadLettered = 0, correlationId = 'c') =>
    bus.publish(T, 'flushCompleted', () => message(correlationId, stored, deadLettered));
  return { bus, table, waits, announce, deadLetters };
}

function message(
  correlationId: string,
  stored: number,
  deadLettered: number,
): FlushCompletedMessage {
  return {
    batchId: crypto.randomUUID(),
    trigger: 'interval',
    attempts: 1,
    committedAt: new Date().toISOString(),
    durationMs: 1,
    instanceId: 'i1',
    recovered: false,
    correlations: [{ correlationId, stored, duplicates: 0, deadLettered }],
  };
}

const tick = () => new Promise((r) => setTimeout(r, 20));

describe('event waits', () => {
  it('answers from the table, never from announcements alone', async () => {
    const { table, waits, announce } = setup();
    table.rows = 100; // a batch of 50 committed before the count is in it…
    const waiting = waits.wait(T, { correlationId: 'c', count: 150, timeoutMs: 5_000 });
    await tick();
    announce(50); // …and its announcement arrives after: 150 announced, 100 in the table
    await tick();
    expect(table.counts).toBe(2); // counted again because the announcements reached 150
    announce(10, 0, 'another'); // not this correlation id: no count
    await tick();
    expect(table.counts).toBe(2);
    table.rows = 150;
    announce(50);
    const r = await waiting;
    expect(r).toMatchObject({ outcome: 'STORED', stored: 150, deadLettered: 0 });
    expect(table.counts).toBe(3);
  });

  it('does not count again before the announcements could reach the count', async () => {
    const { table, waits, announce } = setup();
    const waiting = waits.wait(T, { correlationId: 'c', count: 100, timeoutMs: 5_000 });
    await tick();
    for (let i = 0; i < 9; i++) {
      table.rows += 10;
      announce(10);
    }
    await tick();
    expect(table.counts).toBe(1);
    table.rows += 10;
    announce(10);
    expect((await waiting).outcome).toBe('STORED');
    expect(table.counts).toBe(2);
  });

  it('fails once the rest are dead letters, with their error', async () => {
    const { table, waits, announce, deadLetters } = setup();
    const waiting = waits.wait(T, { correlationId: 'c', count: 10, timeoutMs: 5_000 });
    await tick();
    table.rows = 7;
    deadLetters.push({
      id: 'dl1',
      tenant: T,
      state: 'ACTIVE',
      records: Array.from({ length: 3 }, () => ({ correlationId: 'c' }) as never),
      errorCode: '23514',
      error: '23514: violates check constraint',
      attempts: 1,
      firstFailedAt: new Date(),
      lastFailedAt: new Date(),
      nextAttemptAt: null,
    });
    announce(7, 3);
    expect(await waiting).toMatchObject({
      outcome: 'DEAD_LETTERED',
      stored: 7,
      deadLettered: 3,
      lastError: '23514: violates check constraint',
    });
  });

  it('times out with a last count, and is ended by the caller leaving', async () => {
    const { table, waits } = setup();
    table.rows = 4;
    const r = await waits.wait(T, { correlationId: 'c', count: 10, timeoutMs: 100 });
    expect(r).toMatchObject({ outcome: 'TIMED_OUT', stored: 4 });
    expect(r.waitedMs).toBeGreaterThanOrEqual(99);
    const abort = new AbortController();
    const waiting = waits.wait(
      T,
      { correlationId: 'c', count: 10, timeoutMs: 60_000 },
      abort.signal,
    );
    await tick();
    abort.abort();
    expect((await waiting).outcome).toBe('TIMED_OUT');
  });

  it('refuses as shutting down when the instance stops', async () => {
    const { bus, waits } = setup();
    const waiting = waits.wait(T, { correlationId: 'c', count: 10, timeoutMs: 60_000 });
    await tick();
    await bus.stop();
    await expect(waiting).rejects.toBeInstanceOf(ShuttingDownError);
  });
});
