import { randomBytes } from 'node:crypto';
import {
  AuditClient,
  AuditClientError,
  type AuditEventInput,
  WaitForEventsError,
} from 'auditgraph/client';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { childServices, deleteRedisKeys, type ServiceProcess } from './support/faults.js';
import { databaseUrl, dropTenants, newTenant } from './support/harness.js';
import { cuttableProxy } from './support/proxy.js';
import { redisEnv } from './support/realtime.js';

/**
 * auditgraph/client — imported by its package name, as a user would (dist/, built by the test
 * run's set-up) — against the service as its own process (compiled, as `npm start` runs it)
 * with real PostgreSQL and Redis. The buffer is written by a 1 s interval, so "without a flush"
 * is visible.
 */

const services = childServices();
const redis = redisEnv(`test:client:${randomBytes(4).toString('hex')}:`);
let svc: ServiceProcess;
let sql: pg.Client;
const tenants: string[] = [];
const tenant = (what: string) => {
  const id = newTenant(what);
  tenants.push(id);
  return id;
};
const client = (id: string, url = `${svc.base}/graphql`) =>
  new AuditClient({ url, tenant: id, webSocketImpl: WebSocket });

let seq = 0;
function events(n: number, correlationId: string, over: Partial<AuditEventInput> = {}) {
  return Array.from(
    { length: n },
    (): AuditEventInput => ({
      occurredAt: new Date().toISOString(),
      eventType: 'test.step',
      category: 'test',
      action: 'run',
      outcome: 'SUCCESS',
      correlationId,
      actor: { type: 'user', id: 'tester' },
      resource: { type: 'suite', id: 'client' },
      data: { seq: seq++ },
      ...over,
    }),
  );
}

async function rows(id: string, correlationId: string): Promise<number> {
  const r = await sql.query(
    `select count(*)::int n, count(distinct id)::int d from "t_${id}".audit_events where correlation_id = $1`,
    [correlationId],
  );
  expect(r.rows[0].d).toBe(r.rows[0].n); // never an event twice
  return r.rows[0].n;
}

beforeAll(async () => {
  svc = await services.spawn(
    { ...redis, FLUSH_INTERVAL_MS: '1000', BUFFER_CAPACITY: '400' },
    { compiled: true },
  );
  sql = new pg.Client({ connectionString: databaseUrl() });
  await sql.connect();
});
afterAll(async () => {
  await services.cleanup();
  await sql?.end();
  await dropTenants(...tenants);
  await deleteRedisKeys(redis.REDIS_URL, redis.REDIS_KEY_PREFIX);
});

describe('auditgraph/client', () => {
  it('12 tenants × 150 BUFFERED events: each wait resolves once the interval writes them, with no flush', async () => {
    const ids = Array.from({ length: 12 }, () => tenant('cli12'));
    const started = Date.now();
    const results = await Promise.all(
      ids.map(async (id) => {
        const c = client(id);
        const wrote = await c.createEvents(events(150, 'incident'), { ack: 'BUFFERED' });
        expect(wrote.buffered).toBe(150);
        const r = await c.waitForEvents({
          correlationId: 'incident',
          count: 150,
          timeoutMs: 15_000,
        });
        return { id, r };
      }),
    );
    for (const { id, r } of results) {
      expect(r).toMatchObject({ outcome: 'STORED', stored: 150 });
      expect(await rows(id, 'incident')).toBe(150);
    }
    // No flush was sent: the interval wrote them (bounded, not instantaneous).
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('resolves right after flushAudit, and counts events stored before the wait began', async () => {
    const id = tenant('cliflush');
    const c = client(id);
    await c.createEvents(events(100, 'mixed')); // COMMITTED: stored before the wait
    const waiting = c.waitForEvents({ correlationId: 'mixed', count: 150, timeoutMs: 10_000 });
    await c.createEvents(events(50, 'mixed'), { ack: 'BUFFERED' });
    const flushed = Date.now();
    await c.flush({ timeoutMs: 5_000 });
    const r = await waiting;
    expect(r.stored).toBe(150);
    expect(Date.now() - flushed).toBeLessThan(800); // the interval is 1 s: this was the flush
  });

  it('fails with what it saw: a timeout, and a dead-lettered batch with its reason', async () => {
    const id = tenant('clidl');
    const c = client(id);
    await c.createEvents(events(120, 'partial'));
    const timedOut = await c
      .waitForEvents({ correlationId: 'partial', count: 150, timeoutMs: 500 })
      .catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(WaitForEventsError);
    expect((timedOut as Error).message).toMatch(/^timed out after \d+ ms: 120 of 150 stored$/);

    await sql.query(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const waiting = c
      .waitForEvents({ correlationId: 'doomed', count: 150, timeoutMs: 10_000 })
      .catch((e: unknown) => e);
    await c.createEvents(
      [...events(120, 'doomed'), ...events(30, 'doomed', { eventType: 'poison' })],
      { ack: 'BUFFERED' },
    );
    const failed = await waiting;
    expect(failed).toBeInstanceOf(WaitForEventsError);
    expect((failed as WaitForEventsError).result).toMatchObject({
      outcome: 'DEAD_LETTERED',
      stored: 120,
      deadLettered: 30,
    });
    expect((failed as Error).message).toMatch(/120 of 150 stored, 30 dead-lettered: .*poison/);
  });

  it('survives the connection being cut mid-wait', async () => {
    const id = tenant('clicut');
    const proxy = await cuttableProxy(svc.port);
    try {
      const c = client(id, `http://127.0.0.1:${proxy.port}/graphql`);
      const waiting = c.waitForEvents({ correlationId: 'cut', count: 150, timeoutMs: 15_000 });
      await until(() => proxy.open > 0);
      await new Promise((r) => setTimeout(r, 200));
      expect(proxy.cut()).toBeGreaterThan(0); // the wait's request is gone
      await client(id).createEvents(events(150, 'cut'), { ack: 'BUFFERED' });
      expect((await waiting).stored).toBe(150);
      expect(proxy.accepted).toBeGreaterThanOrEqual(2); // it came back on a new connection
    } finally {
      await proxy.close();
    }
  });

  it('createEvents retries through backpressure with the same ids: every event stored once', async () => {
    const id = tenant('clibp');
    const c = client(id);
    // 8 calls of 100 at once against a buffer of 400: some are refused, and come back.
    const results = await Promise.all(
      Array.from({ length: 8 }, () => c.createEvents(events(100, 'flood'), { ack: 'BUFFERED' })),
    );
    expect(results.some((r) => r.attempts > 1)).toBe(true); // the negative control: refusals happened
    await c.flush({ timeoutMs: 10_000 });
    expect(await rows(id, 'flood')).toBe(800);
    const ids = new Set(results.flatMap((r) => r.events.map((e) => e.eventId)));
    expect(ids.size).toBe(800);
  });

  it('does not retry what cannot succeed: a ValidationError throws at once', async () => {
    const c = client(tenant('clival'));
    const bad = events(1, 'bad', { occurredAt: '2001-01-01T00:00:00Z' });
    const err = await c.createEvents(bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuditClientError);
    expect((err as AuditClientError).retryable).toBe(false);
    expect((err as AuditClientError).details.issues).toBeInstanceOf(Array);
  });

  it('events() pages through every matching event', async () => {
    const id = tenant('clipage');
    const c = client(id);
    const sent = events(230, 'paged');
    const wrote = await c.createEvents(sent);
    const seen: string[] = [];
    for await (const e of c.events({
      filter: { correlationId: 'paged' },
      order: 'OCCURRED_AT_ASC',
      pageSize: 50,
    })) {
      seen.push(e.eventId);
    }
    expect(seen).toHaveLength(230);
    expect(new Set(seen)).toEqual(new Set(wrote.events.map((e) => e.eventId)));
  });

  it('tail() yields every event written while 4 writers run, once, each writer in order', async () => {
    const id = tenant('clitail');
    const c = client(id);
    const tail = c.tail({ filter: { correlationId: 'tailed' } });
    await tail.ready;
    const writers = Array.from({ length: 4 }, (_, w) => async () => {
      for (let call = 0; call < 5; call++) {
        const batch = events(20, 'tailed').map((e, i) => ({
          ...e,
          data: { writer: w, n: call * 20 + i },
        }));
        await client(id).createEvents(batch);
      }
    });
    const seen: { writer: number; n: number; id: string }[] = [];
    const reading = (async () => {
      for await (const e of tail) {
        seen.push({ ...(e.data as { writer: number; n: number }), id: e.eventId });
        if (seen.length === 400) break;
      }
    })();
    await Promise.all(writers.map((w) => w()));
    await reading;
    expect(new Set(seen.map((s) => s.id)).size).toBe(400);
    for (let w = 0; w < 4; w++) {
      const mine = seen.filter((s) => s.writer === w).map((s) => s.n);
      // COMMITTED calls one after another: their events are committed, and arrive, in order.
      expect(mine).toEqual([...mine].sort((a, b) => a - b));
      expect(mine).toHaveLength(100);
    }
    await c.close();
  });
});

describe('auditgraph/client tail from a cursor', () => {
  /** Writer `w`'s calls, one after another (COMMITTED): its events are committed in order. */
  const writer = (id: string, w: number, calls: number, size: number, corr: string) => async () => {
    for (let call = 0; call < calls; call++) {
      const batch = events(size, corr).map((e, i) => ({
        ...e,
        data: { writer: w, n: call * size + i },
      }));
      await client(id).createEvents(batch);
      await new Promise((r) => setTimeout(r, 15));
    }
  };
  type Seen = { writer: number; n: number; id: string };
  const take = async (
    t: AsyncIterable<{ data: unknown; eventId: string }>,
    n: number,
    into: Seen[],
  ) => {
    // Not `for await`: leaving one with `break` would close the tail.
    const it = t[Symbol.asyncIterator]();
    while (into.length < n) {
      const r = await it.next();
      if (r.done) throw new Error(`the tail ended after ${into.length} events`);
      into.push({ ...(r.value.data as { writer: number; n: number }), id: r.value.eventId });
    }
  };

  it('tail({ after }) while 4 writers run: every event exactly once, each writer in order', async () => {
    const id = tenant('cliresume');
    const c = client(id);
    const first = c.tail({ filter: { correlationId: 'resumed' } });
    await first.ready;
    const writers = Array.from({ length: 4 }, (_, w) => writer(id, w, 10, 10, 'resumed')());
    const before: Seen[] = [];
    await take(first, 120, before);
    const cursor = first.cursor;
    expect(cursor).toEqual(expect.any(String));
    // Nobody tails while at least one more call commits: those events come from the replay.
    await client(id).createEvents(
      events(5, 'resumed').map((e, i) => ({ ...e, data: { writer: 9, n: i } })),
    );
    const resumed = c.tail({ filter: { correlationId: 'resumed' }, after: cursor });
    // Negative control: a tail opened at the same moment without the cursor misses the gap.
    const plain = c.tail({ filter: { correlationId: 'resumed' } });
    await Promise.all([resumed.ready, plain.ready]);
    const after: Seen[] = [];
    const plainSeen: Seen[] = [];
    const reading = take(resumed, 405 - 120, after);
    await Promise.all(writers);
    await reading;
    const all = [...before, ...after];
    expect(new Set(all.map((s) => s.id)).size).toBe(405);
    expect(all).toHaveLength(405);
    for (const w of [0, 1, 2, 3, 9]) {
      const mine = all.filter((s) => s.writer === w).map((s) => s.n);
      expect(mine).toEqual([...mine].sort((x, y) => x - y));
      expect(mine).toHaveLength(w === 9 ? 5 : 100);
    }
    // What the plain tail saw, it saw after opening: it cannot have the writer-9 events.
    const sentinel = events(1, 'resumed').map((e) => ({ ...e, data: { writer: 8, n: 0 } }));
    await client(id).createEvents(sentinel);
    for await (const e of plain) {
      plainSeen.push({ ...(e.data as { writer: number; n: number }), id: e.eventId });
      if ((e.data as { writer: number }).writer === 8) break;
    }
    expect(plainSeen.some((s) => s.writer === 9)).toBe(false);
    expect(plainSeen.length).toBeLessThan(405 - 120 + 1);
    await c.close();
  });

  it('resumes by itself from its cursor when the connection is cut: nothing missed or repeated', async () => {
    const id = tenant('clicut');
    const proxy = await cuttableProxy(svc.port);
    try {
      const c = client(id, `http://127.0.0.1:${proxy.port}/graphql`);
      const t = c.tail({ filter: { correlationId: 'cut-tail' } });
      await t.ready;
      await client(id).createEvents(
        events(50, 'cut-tail').map((e, i) => ({ ...e, data: { writer: 0, n: i } })),
      );
      const seen: Seen[] = [];
      await take(t, 20, seen);
      expect(proxy.cut()).toBeGreaterThan(0);
      // Written while the tail has no connection.
      await client(id).createEvents(
        events(50, 'cut-tail').map((e, i) => ({ ...e, data: { writer: 0, n: 50 + i } })),
      );
      await take(t, 100, seen);
      expect(seen.map((s) => s.n)).toEqual(Array.from({ length: 100 }, (_, i) => i));
      expect(proxy.accepted).toBeGreaterThan(1); // it did reconnect
      await c.close();
    } finally {
      await proxy.close();
    }
  });
});

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
