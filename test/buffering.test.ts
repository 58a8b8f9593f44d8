import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchSettled } from '../src/ingest/events.js';
import { countEvents, create, flush, identityOf, type Stats, stats } from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Promises 1–3 on the write path: BUFFERED means "in the buffer" (not yet in the table),
 * flushAudit is the barrier, COMMITTED means committed, (id, occurredAt) is idempotent, and
 * accepted = stored + duplicates + pending + deadLettered + discarded at every moment.
 */

const statuses = (r: Record<string, any>): string[] =>
  r.events.map((e: { status: string }) => e.status);

function events(n: number, overrides: Record<string, unknown> = {}) {
  return Array.from({ length: n }, () => event({ id: randomUUID(), ...overrides }));
}

/**
 * Resolves once batches of `tenant` holding `n` events in total have settled, as reported by the
 * ingest service's batch-settled hook (the seam flushCompleted is built on): an event to await,
 * not a poll. Rejects after `timeoutMs` with how many had settled.
 */
function settledEvents(t: TestApp, tenant: string, n: number, timeoutMs: number): Promise<void> {
  let seen = 0;
  return new Promise((resolve, reject) => {
    const stopListening = t.app.graph.events.onBatchSettled((b: BatchSettled) => {
      if (b.tenant !== tenant) return;
      seen += b.records.length;
      if (seen >= n) {
        clearTimeout(timer);
        stopListening();
        resolve();
      }
    });
    const timer = setTimeout(() => {
      stopListening();
      reject(new Error(`only ${seen} of ${n} events settled within ${timeoutMs} ms`));
    }, timeoutMs);
  });
}

describe('buffering with a 60 s flush interval', () => {
  let t: TestApp;
  let c: pg.Client;
  const tenants: string[] = [];
  const tenant = (prefix: string) => {
    const id = newTenant(prefix);
    tenants.push(id);
    return id;
  };

  beforeAll(async () => {
    // The interval never fires during a test: whatever gets written is written by size, by a
    // COMMITTED call's linger, or by flushAudit.
    t = await startApp({ FLUSH_INTERVAL_MS: '60000', BATCH_SIZE: '100' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(...tenants);
  });

  it('BUFFERED events are not in the table until flushAudit, which then reports and stores all of them', async () => {
    const tn = tenant('buf');
    await create(t, tn, [event()]); // provision the tenant (COMMITTED, stored at once)
    const n = 60; // below BATCH_SIZE: only the interval or a flush could write them
    const calls = [events(20), events(20), events(20)];
    for (const batch of calls) {
      const r = await create(t, tn, batch, 'BUFFERED');
      expect(r.__typename).toBe('CreateAuditEventsPayload');
      expect(statuses(r)).toEqual(batch.map(() => 'BUFFERED'));
      expect(r).toMatchObject({ accepted: 20, buffered: 20, stored: 0 });
    }
    expect(await countEvents(c, tn)).toBe(1);
    expect(await stats(t, tn)).toMatchObject({ accepted: n + 1, stored: 1, pending: n });

    const f = await flush(t, tn);
    expect(f.__typename).toBe('FlushAuditPayload');
    expect(f).toMatchObject({ stored: n, duplicates: 0, deadLettered: 0, waitedFor: n });
    expect(f.instances).toHaveLength(1);
    expect(await countEvents(c, tn)).toBe(n + 1);
    const s = await stats(t, tn);
    expect(s).toMatchObject({ accepted: n + 1, stored: n + 1, pending: 0, identityHolds: true });
  });

  it('reaching BATCH_SIZE writes a batch without waiting for the interval, never more than BATCH_SIZE per batch', async () => {
    const tn = tenant('size');
    await create(t, tn, [event()]);
    const twoFull = settledEvents(t, tn, 200, 10_000);
    // Calls of 50, 50, 80, 70: the 2nd brings the buffer to exactly 100, the 4th to 150 — one
    // full batch of 100 and 50 left over, which must not ride along in an oversized batch.
    for (const n of [50, 50, 80, 70]) {
      const r = await create(t, tn, events(n), 'BUFFERED');
      expect(r.buffered).toBe(n);
    }
    await twoFull; // two full batches settled long before the 60 s interval
    expect(await countEvents(c, tn)).toBe(1 + 200);
    expect(await stats(t, tn)).toMatchObject({ pending: 50 });

    // flushAudit reports per call: the 4th call (70 events, 20 of them already in the second
    // batch) is the only one still outstanding.
    const f = await flush(t, tn);
    expect(f).toMatchObject({ stored: 70, waitedFor: 70 });
    expect(await countEvents(c, tn)).toBe(1 + 250);

    const { rows } = await c.query<{ event_count: number; stored_count: number }>(
      `select event_count, stored_count from "t_${tn}".batch_ledger order by committed_at`,
    );
    expect(rows.reduce((n, r) => n + r.event_count, 0)).toBe(251);
    expect(Math.max(...rows.map((r) => r.event_count))).toBeLessThanOrEqual(100);
    expect(rows.map((r) => r.event_count).sort((a, b) => a - b)).toEqual([1, 50, 100, 100]);
  });

  it('COMMITTED answers STORED per event with the rows already visible, without flushAudit', async () => {
    const tn = tenant('commit');
    const n = 40;
    const batch = events(n);
    const r = await create(t, tn, batch, 'COMMITTED');
    expect(r.__typename).toBe('CreateAuditEventsPayload');
    expect(statuses(r)).toEqual(batch.map(() => 'STORED'));
    expect(r.events.map((e: { id: string }) => e.id)).toEqual(batch.map((e) => e.id));
    expect(await countEvents(c, tn)).toBe(n);
    expect(await stats(t, tn)).toMatchObject({ accepted: n, stored: n, pending: 0 });
  });

  it('the same batch sent three times is stored once: STORED, then DUPLICATE, DUPLICATE', async () => {
    const tn = tenant('idem');
    const n = 25;
    const batch = events(n);
    const first = await create(t, tn, batch);
    expect(statuses(first)).toEqual(batch.map(() => 'STORED'));
    for (let i = 0; i < 2; i++) {
      const again = await create(t, tn, batch);
      expect(again.__typename).toBe('CreateAuditEventsPayload');
      expect(statuses(again)).toEqual(batch.map(() => 'DUPLICATE'));
      expect(again).toMatchObject({ stored: 0, duplicates: n });
    }
    expect(await countEvents(c, tn)).toBe(n);
    const s = await stats(t, tn);
    expect(s).toMatchObject({
      accepted: 3 * n,
      stored: n,
      duplicates: 2 * n,
      pending: 0,
      conflicts: 0, // identical content is not a conflict
      identityHolds: true,
    });
  });

  it('a repeated (id, occurredAt) within one call: the first occurrence is STORED, the second DUPLICATE', async () => {
    const tn = tenant('dupcall');
    const a = event({ id: randomUUID() });
    const b = event({ id: randomUUID() });
    for (const ack of ['COMMITTED', 'BUFFERED'] as const) {
      const c1 = { ...a, id: randomUUID() };
      const c2 = { ...b, id: randomUUID() };
      const r = await create(t, tn, [c1, c2, { ...c1 }], ack);
      if (ack === 'BUFFERED') {
        expect(statuses(r)).toEqual(['BUFFERED', 'BUFFERED', 'BUFFERED']);
        expect(await flush(t, tn)).toMatchObject({ stored: 2, duplicates: 1, waitedFor: 3 });
      } else {
        expect(statuses(r)).toEqual(['STORED', 'STORED', 'DUPLICATE']);
      }
    }
    expect(await countEvents(c, tn)).toBe(4);
    expect(await stats(t, tn)).toMatchObject({
      accepted: 6,
      stored: 4,
      duplicates: 2,
      conflicts: 0,
      pending: 0,
      identityHolds: true,
    });
  });

  it('a duplicate with different content is counted as a conflict and the stored event is unchanged', async () => {
    const tn = tenant('conflict');
    const original = event({
      id: randomUUID(),
      action: 'start',
      severity: 'info',
      data: { version: 1, nested: { a: [1, 2] } },
    });
    expect(statuses(await create(t, tn, [original]))).toEqual(['STORED']);

    const changed = { ...original, action: 'stop', severity: 'critical', data: { version: 2 } };
    expect(statuses(await create(t, tn, [changed]))).toEqual(['DUPLICATE']);

    const s = await stats(t, tn);
    expect(s).toMatchObject({ accepted: 2, stored: 1, duplicates: 1, conflicts: 1 });
    const { rows } = await c.query(
      `select action, severity, data from "t_${tn}".audit_events where id = $1`,
      [original.id],
    );
    expect(rows).toEqual([
      { action: 'start', severity: 'info', data: { version: 1, nested: { a: [1, 2] } } },
    ]);
  });
});

describe('accounting identity under concurrent BUFFERED load', () => {
  let t: TestApp;
  let c: pg.Client;
  const tn = newTenant('load');

  beforeAll(async () => {
    // Short interval so writes settle while the load runs and every counter moves.
    t = await startApp({ FLUSH_INTERVAL_MS: '20', BATCH_SIZE: '200' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(tn);
  });

  it('auditStats satisfies accepted = stored + duplicates + pending + deadLettered + discarded at every sample, and stored equals count(*) after flushAudit', async () => {
    await create(t, tn, [event()]);
    const writers = 8;
    const callsPerWriter = 20;
    const perCall = 50;
    const total = writers * callsPerWriter * perCall;
    // Every 10th call repeats the previous call of the same writer: duplicates move too.
    let duplicatesSent = 0;

    let loadDone = false;
    const samples: Stats[] = [];
    const sampler = (async () => {
      // Samples for as long as the load runs (bounded by the load itself).
      while (!loadDone) samples.push(await stats(t, tn));
    })();

    const load = Array.from({ length: writers }, async () => {
      let previous: Record<string, unknown>[] = [];
      for (let i = 0; i < callsPerWriter; i++) {
        const repeat = i % 10 === 9;
        const batch = repeat ? previous : events(perCall);
        if (repeat) duplicatesSent += perCall;
        const r = await create(t, tn, batch, 'BUFFERED');
        expect(r.__typename).toBe('CreateAuditEventsPayload');
        previous = batch;
      }
    });
    try {
      await Promise.all(load);
    } finally {
      loadDone = true;
      await sampler;
    }

    expect(samples.length).toBeGreaterThan(5);
    for (const s of samples) {
      expect(s.identityHolds).toBe(true);
      expect(identityOf(s)).toBe(true);
    }
    // The load was really concurrent with writing: some sample saw events pending and stored.
    expect(samples.some((s) => s.pending > 0 && s.stored > 1)).toBe(true);

    const f = await flush(t, tn);
    expect(f.__typename).toBe('FlushAuditPayload');
    const s = await stats(t, tn);
    expect(identityOf(s)).toBe(true);
    expect(s).toMatchObject({
      accepted: 1 + total,
      stored: 1 + total - duplicatesSent,
      duplicates: duplicatesSent,
      pending: 0,
      deadLettered: 0,
      discarded: 0,
      identityHolds: true,
    });
    expect(await countEvents(c, tn)).toBe(s.stored);
  });
});

describe('a call larger than BATCH_SIZE (the part left after the full batches)', () => {
  let t: TestApp;
  let c: pg.Client;
  const committed = newTenant('bigc');
  const buffered = newTenant('bigb');

  beforeAll(async () => {
    t = await startApp({ BATCH_SIZE: '100', FLUSH_INTERVAL_MS: '200', COMMIT_TIMEOUT_MS: '3000' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(committed, buffered);
  });

  it('a COMMITTED call of 150 events with BATCH_SIZE 100 answers STORED for all 150 (no CommitTimeoutError)', async () => {
    await create(t, committed, [event()]);
    const batch = events(150);
    const r = await create(t, committed, batch, 'COMMITTED');
    expect(r.__typename).toBe('CreateAuditEventsPayload');
    expect(statuses(r)).toEqual(batch.map(() => 'STORED'));
    expect(await countEvents(c, committed)).toBe(151);
  });

  it('a BUFFERED call of 150 events with BATCH_SIZE 100 has all 150 written within the flush interval, without flushAudit', async () => {
    await create(t, buffered, [event()]);
    // FLUSH_INTERVAL_MS is 200: allow 15 intervals before calling the remainder stranded.
    const all = settledEvents(t, buffered, 150, 3_000);
    const r = await create(t, buffered, events(150), 'BUFFERED');
    expect(r.buffered).toBe(150);
    await all;
    expect(await countEvents(c, buffered)).toBe(151);
  });
});
