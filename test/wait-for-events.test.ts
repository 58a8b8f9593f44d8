import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { redisEnv } from './support/realtime.js';

/**
 * waitForEvents: one HTTP request that answers once a correlation id's events are stored, for a
 * test in any language. Against the real service and PostgreSQL; the buffer is flushed by a
 * slow interval so that "without a flush" is visible.
 */

const WAIT = `query W($c: String!, $n: Int!, $t: Int) {
  waitForEvents(correlationId: $c, count: $n, timeoutMs: $t) {
    outcome done count stored deadLettered lastError waitedMs message } }`;

let t: TestApp;
const tenants: string[] = [];
const tenant = () => {
  const id = newTenant('wait');
  tenants.push(id);
  return id;
};
const events = (n: number, correlationId: string, over: Record<string, unknown> = {}) =>
  Array.from({ length: n }, () => event({ correlationId, ...over }));
const wait = async (id: string, c: string, n: number, timeoutMs?: number) =>
  (await t.gql(id, WAIT, { c, n, t: timeoutMs })).waitForEvents;

beforeAll(async () => {
  t = await startApp({ FLUSH_INTERVAL_MS: '1500' });
});
afterAll(async () => {
  await t?.stop();
  await dropTenants(...tenants);
});

describe('waitForEvents', () => {
  it('counts events stored before the call, and answers at once', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(150, 'before') } });
    const r = await wait(id, 'before', 150, 5_000);
    expect(r).toMatchObject({ outcome: 'STORED', done: true, stored: 150, deadLettered: 0 });
    expect(r.waitedMs).toBeLessThan(1_000);
  });

  it('answers once the interval writes BUFFERED events, with no flush', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(1, 'warm') } });
    const waiting = wait(id, 'interval', 150, 10_000);
    await new Promise((r) => setTimeout(r, 100));
    const r0 = await t.gql(id, CREATE, {
      input: { events: events(150, 'interval'), ack: 'BUFFERED' },
    });
    expect(r0.createAuditEvents.buffered).toBe(150);
    const r = await waiting;
    expect(r).toMatchObject({ outcome: 'STORED', stored: 150 });
    // Negative control: nothing else wrote them, so the wait lasted until the interval did.
    const rows = await sqlClient();
    try {
      const n = await rows.query(
        `select count(*)::int n from "t_${id}".audit_events where correlation_id = 'interval'`,
      );
      expect(n.rows[0].n).toBe(150);
    } finally {
      await rows.end();
    }
  });

  it('answers right after a flushAudit, long before the interval', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(1, 'warm') } });
    const waiting = wait(id, 'flushed', 150, 10_000);
    await t.gql(id, CREATE, { input: { events: events(150, 'flushed'), ack: 'BUFFERED' } });
    const flushedAt = Date.now();
    await t.gql(id, FLUSH, { timeoutMs: 5_000 });
    const r = await waiting;
    expect(r).toMatchObject({ outcome: 'STORED', stored: 150 });
    expect(Date.now() - flushedAt).toBeLessThan(1_000);
  });

  it('times out with what it saw, and counts only its own correlation id', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(120, 'short') } });
    await t.gql(id, CREATE, { input: { events: events(50, 'other') } });
    const r = await wait(id, 'short', 150, 400);
    expect(r).toMatchObject({ outcome: 'TIMED_OUT', done: false, stored: 120, count: 150 });
    expect(r.waitedMs).toBeGreaterThanOrEqual(390);
    expect(r.message).toMatch(/^timed out after \d+ ms: 120 of 150 stored$/);
  });

  it('fails with the dead letters’ reason when the rest cannot be stored', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(1, 'warm') } });
    const c = await sqlClient();
    try {
      await c.query(
        `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
      );
    } finally {
      await c.end();
    }
    const waiting = wait(id, 'doomed', 150, 10_000);
    const mixed = [...events(120, 'doomed'), ...events(30, 'doomed', { eventType: 'poison' })];
    await t.gql(id, CREATE, { input: { events: mixed, ack: 'BUFFERED' } });
    await t.gql(id, FLUSH, { timeoutMs: 5_000 });
    const r = await waiting;
    expect(r).toMatchObject({ outcome: 'DEAD_LETTERED', stored: 120, deadLettered: 30 });
    expect(r.lastError).toMatch(/poison|23514|check/);
    expect(r.message).toMatch(/^not all will be stored: 120 of 150 stored, 30 dead-lettered: /);
    // Dead letters there before the wait began count as well.
    const again = await wait(id, 'doomed', 150, 2_000);
    expect(again).toMatchObject({ outcome: 'DEAD_LETTERED', deadLettered: 30 });
  });

  it('is one plain HTTP request (what a test in any language sends)', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: events(3, 'plain') } });
    const res = await fetch(t.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-tenant-id': id },
      body: JSON.stringify({
        query:
          '{ waitForEvents(correlationId: "plain", count: 3, timeoutMs: 2000) { done message } }',
      }),
    });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.data.waitForEvents.done).toBe(true);
    expect(body.data.waitForEvents.message).toMatch(/^3 of 3 stored/);
  });

  it('refuses bad arguments by name', async () => {
    const id = tenant();
    for (const [vars, field] of [
      [{ c: 'x', n: 0 }, 'count'],
      [{ c: 'x', n: 100_001 }, 'count'],
      [{ c: '', n: 1 }, 'correlationId'],
      [{ c: 'x', n: 1, t: 0 }, 'timeoutMs'],
    ] as const) {
      const err = await t.refused(id, WAIT, vars);
      expect(err.extensions.code).toBe('BAD_USER_INPUT');
      expect(JSON.stringify(err)).toContain(field);
    }
  });

  it('sees what another instance writes (fan-out through Redis)', async () => {
    const env = { ...redisEnv(), FLUSH_INTERVAL_MS: '60000' };
    const a = await startApp(env);
    const b = await startApp(env);
    try {
      const id = tenant();
      await a.gql(id, CREATE, { input: { events: events(1, 'warm') } });
      const waiting = a.gql(id, WAIT, { c: 'elsewhere', n: 150, t: 10_000 });
      await new Promise((r) => setTimeout(r, 200));
      await b.gql(id, CREATE, { input: { events: events(150, 'elsewhere'), ack: 'BUFFERED' } });
      await b.gql(id, FLUSH, { timeoutMs: 5_000 });
      const r = (await waiting).waitForEvents;
      expect(r).toMatchObject({ outcome: 'STORED', stored: 150 });
      // Answered by B's announcement, not by A's own (60 s) interval or the timeout.
      expect(r.waitedMs).toBeLessThan(5_000);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('ends a wait at once when the instance stops, as SHUTTING_DOWN', async () => {
    const a = await startApp();
    const id = tenant();
    await a.gql(id, CREATE, { input: { events: events(1, 'warm') } });
    const waiting = a.raw(id, { query: WAIT, variables: { c: 'never', n: 1, t: 60_000 } });
    await new Promise((r) => setTimeout(r, 300));
    const stopping = Date.now();
    await a.stop();
    const { body } = await waiting;
    expect(Date.now() - stopping).toBeLessThan(10_000);
    expect(body.errors?.[0]?.extensions?.code).toBe('SHUTTING_DOWN');
  });
});
