import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  countEvents,
  create,
  flush,
  identityOf,
  lockEvents,
  stats,
  waitUntil,
  writersWaitingOnLock,
} from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * The write path when the database does not move: a test holds ACCESS EXCLUSIVE on the tenant's
 * `audit_events` (a real lock in real PostgreSQL), so every batch INSERT blocks. Calls must then be
 * rejected whole (BackpressureError), answer CommitTimeoutError, or FlushTimeoutError — in
 * bounded time — and everything accepted must be stored once the lock is gone. Every lock is
 * released in a `finally` (and by a server-side watchdog if a test hangs), so a failing
 * assertion never leaves the service blocked. While locked, rows are counted on the locking
 * connection: any other reader would queue behind the lock too.
 */

const events = (n: number, overrides: Record<string, unknown> = {}) =>
  Array.from({ length: n }, () => event({ id: randomUUID(), ...overrides }));

/**
 * A flushAudit that succeeded after the lock was released. Batches unblocked by the release can
 * settle before the flush arrives, and a flush reports only what was outstanding at its call:
 * at most `pending`, all of it stored (no duplicates, nothing dead-lettered).
 */
function expectSettledByFlush(f: Record<string, any>, pending: number): void {
  expect(f.__typename).toBe('FlushAuditPayload');
  expect(f.waitedFor).toBeLessThanOrEqual(pending);
  expect(f).toMatchObject({ stored: f.waitedFor, duplicates: 0, deadLettered: 0 });
}

const appName = (what: string) => `ag-${what}-${randomBytes(4).toString('hex')}`;

describe('backpressure when the writer is blocked', () => {
  let t: TestApp;
  let c: pg.Client;
  const tn = newTenant('bp');
  const extra: string[] = [];
  const application = appName('bp');

  beforeAll(async () => {
    t = await startApp({
      BUFFER_CAPACITY: '200',
      FLUSH_INTERVAL_MS: '20',
      DATABASE_APPLICATION_NAME: application,
    });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(tn, ...extra);
  });

  it('a full buffer rejects the next call whole with BackpressureError, and everything accepted is stored after the lock goes', async () => {
    const first = await create(t, tn, [event()]); // provisions the tenant and its partitions
    expect(first.stored).toBe(1);

    const lock = await lockEvents(tn);
    try {
      // Fill the buffer to exactly BUFFER_CAPACITY: 4 calls of 50, all accepted.
      for (let i = 1; i <= 4; i++) {
        const r = await create(t, tn, events(50), 'BUFFERED');
        expect(r.__typename).toBe('CreateAuditEventsPayload');
        expect(r.buffered).toBe(50);
        expect((await stats(t, tn)).pending).toBe(50 * i);
      }
      // The interval (20 ms) has started batches, and they really are stuck on our lock — not
      // merely not yet started. No event announces "a backend is waiting", so look, bounded.
      await waitUntil(
        'a batch INSERT of the service to wait on the table lock',
        () => writersWaitingOnLock(c, application),
        (n) => n >= 1,
      );

      const before = await stats(t, tn);
      expect(before).toMatchObject({ accepted: 201, stored: 1, pending: 200, identityHolds: true });

      for (const [n, ack] of [
        [10, 'BUFFERED'],
        [1, 'BUFFERED'],
        [1, 'COMMITTED'],
      ] as const) {
        const rejected = await create(t, tn, events(n), ack);
        expect(rejected.__typename).toBe('BackpressureError');
        expect(rejected.retryable).toBe(true);
        expect(rejected.retryAfterMs).toBeGreaterThan(0);
        expect(rejected.limit).toBe('BUFFER_CAPACITY');
      }
      // Refused before its input is read: events the input types would refuse (an unknown
      // outcome, a date that is none) still answer BackpressureError — shaped as the selection
      // asks, alias and fragments included — not a variables error.
      const SHAPED = `mutation($events: [AuditEventInput!]!) {
        refused: createAuditEvents(input: { events: $events, ack: BUFFERED }) {
          kind: __typename ...on BackpressureError { after: retryAfterMs limit } } }`;
      const garbage = events(500).map((e) => ({ ...e, outcome: 'NOPE', occurredAt: 'never' }));
      const shed = await t.raw(tn, { query: SHAPED, variables: { events: garbage } });
      expect(shed.body.errors).toBeUndefined();
      expect(shed.body.data.refused).toEqual({
        kind: 'BackpressureError',
        after: expect.any(Number),
        limit: 'BUFFER_CAPACITY',
      });
      // Inline events are decided before they are validated (the input types still coerce them).
      const inline = await t.raw(tn, {
        query: `mutation { createAuditEvents(input: { events: [{ occurredAt: "2000-01-01T00:00:00Z",
          eventType: "x", category: "x", action: "x", outcome: SUCCESS, correlationId: "x",
          actor: { type: "u", id: "u" }, resource: { type: "r", id: "r" } }] }) { __typename } }`,
      });
      expect(inline.body.data.createAuditEvents.__typename).toBe('BackpressureError');
      // Another tenant with room is not refused, and the same garbage is refused for what it is.
      const other = newTenant('bp_other');
      extra.push(other);
      const control = await t.raw(other, { query: SHAPED, variables: { events: garbage } });
      expect(control.body.data ?? null).toBeNull();
      expect(JSON.stringify(control.body.errors)).toMatch(/NOPE/);
      // Nothing from the rejected calls was accepted.
      const after = await stats(t, tn);
      expect(after).toMatchObject({ accepted: 201, stored: 1, pending: 200, identityHolds: true });
      expect(await lock.count()).toBe(1);
    } finally {
      await lock.release();
    }

    // Once the lock is gone the blocked batches may finish before flushAudit arrives, so the
    // flush reports only what was still outstanding at its call; the totals are in the table.
    const f = await flush(t, tn);
    expectSettledByFlush(f, 200);
    expect(await countEvents(c, tn)).toBe(201);
    const s = await stats(t, tn);
    expect(identityOf(s)).toBe(true);
    expect(s).toMatchObject({ accepted: 201, stored: 201, pending: 0, identityHolds: true });

    // With room again, calls are accepted.
    expect((await create(t, tn, events(5))).stored).toBe(5);
  });
});

describe('timeouts when the writer is blocked', () => {
  let t: TestApp;
  let c: pg.Client;
  const commitTenant = newTenant('ctimeout');
  const flushTenant = newTenant('ftimeout');

  beforeAll(async () => {
    t = await startApp({ COMMIT_TIMEOUT_MS: '300' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(commitTenant, flushTenant);
  });

  it('a COMMITTED call answers CommitTimeoutError listing its (generated) ids; the events are stored later and a retry with those ids is DUPLICATE', async () => {
    const tn = commitTenant;
    expect((await create(t, tn, [event()])).stored).toBe(1);
    const occurredAt = new Date(Date.now() - 60_000).toISOString();
    // No client ids: the error must tell which ids the service generated, for the retry.
    const inputs = Array.from({ length: 10 }, (_, i) =>
      event({ occurredAt, correlationId: `ct-${i}` }),
    );

    let timedOut: Record<string, any> = {};
    const lock = await lockEvents(tn);
    try {
      const started = performance.now();
      timedOut = await create(t, tn, inputs, 'COMMITTED');
      const elapsed = performance.now() - started;
      expect(timedOut.__typename).toBe('CommitTimeoutError');
      expect(timedOut.retryable).toBe(true);
      expect(timedOut.pending).toBe(10);
      expect(timedOut.events).toHaveLength(10);
      for (const e of timedOut.events) {
        expect(e.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
        expect(e.status).toBe('BUFFERED');
      }
      expect(new Set(timedOut.events.map((e: { id: string }) => e.id)).size).toBe(10);
      expect(elapsed).toBeGreaterThanOrEqual(290);
      expect(elapsed).toBeLessThan(5_000);

      // Accepted and pending, not lost, not in the table.
      const s = await stats(t, tn);
      expect(s).toMatchObject({ accepted: 11, stored: 1, pending: 10, identityHolds: true });
      expect(await lock.count()).toBe(1);
    } finally {
      await lock.release();
    }

    expectSettledByFlush(await flush(t, tn), 10);
    expect(await countEvents(c, tn)).toBe(11);
    const { rows } = await c.query<{ id: string }>(
      `select id from "t_${tn}".audit_events where correlation_id like 'ct-%' order by correlation_id`,
    );
    expect(rows.map((r) => r.id)).toEqual(timedOut.events.map((e: { id: string }) => e.id));

    // The retry the error invites: same events, with the ids it reported.
    const retry = await create(
      t,
      tn,
      inputs.map((e, i) => ({ ...e, id: timedOut.events[i].id })),
      'COMMITTED',
    );
    expect(retry.__typename).toBe('CreateAuditEventsPayload');
    expect(retry.events.map((e: { status: string }) => e.status)).toEqual(
      inputs.map(() => 'DUPLICATE'),
    );
    expect(await countEvents(c, tn)).toBe(11);
    expect(await stats(t, tn)).toMatchObject({
      accepted: 21,
      stored: 11,
      duplicates: 10,
      conflicts: 0,
      pending: 0,
      identityHolds: true,
    });
  });

  it('flushAudit answers FlushTimeoutError with the pending count within its timeout (no hang), and succeeds once the lock is gone', async () => {
    const tn = flushTenant;
    expect((await create(t, tn, [event()])).stored).toBe(1);

    const lock = await lockEvents(tn);
    try {
      const r = await create(t, tn, events(30), 'BUFFERED');
      expect(r.buffered).toBe(30);

      const started = performance.now();
      const f = await flush(t, tn, 300);
      const elapsed = performance.now() - started;
      expect(f.__typename).toBe('FlushTimeoutError');
      expect(f.retryable).toBe(true);
      expect(f.pending).toBe(30);
      expect(elapsed).toBeGreaterThanOrEqual(290);
      expect(elapsed).toBeLessThan(5_000);

      expect(await stats(t, tn)).toMatchObject({ accepted: 31, pending: 30, identityHolds: true });
      expect(await lock.count()).toBe(1);
    } finally {
      await lock.release();
    }

    expectSettledByFlush(await flush(t, tn), 30);
    expect(await countEvents(c, tn)).toBe(31);
    expect(await stats(t, tn)).toMatchObject({
      accepted: 31,
      stored: 31,
      pending: 0,
      identityHolds: true,
    });
  });
});
