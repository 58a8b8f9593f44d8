import { randomUUID } from 'node:crypto';
import type { Client } from 'graphql-ws';
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
import {
  EVENTS_ADDED,
  FLUSH_COMPLETED,
  redisEnv,
  waitForSettled,
  wsClient,
  wsSubscribe,
} from './support/realtime.js';

/**
 * Subscriptions over graphql-ws, fanned out through Redis (this file's own key prefix): a client
 * waits for exactly its own events, sees only its tenant, and is refused without a tenant.
 */
describe('subscriptions over graphql-ws (Redis fan-out)', () => {
  let t: TestApp;
  const tenants: string[] = [];
  const clients: Client[] = [];
  const tenant = (prefix: string) => {
    const id = newTenant(prefix);
    tenants.push(id);
    return id;
  };
  const client = (tenantId: string) => {
    const c = wsClient(t.url, { tenantId });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    t = await startApp({
      ...redisEnv(),
      BATCH_SIZE: '25',
      FLUSH_INTERVAL_MS: '60000',
      MAX_SUBSCRIPTIONS_PER_CONNECTION: '3',
      INSTANCE_ID: 'ws-a',
    });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.dispose()));
    await t.stop();
    await dropTenants(...tenants);
  });

  it('settles exactly the events a client sent, whatever their outcome, without polling', async () => {
    const me = tenant('ws');
    const corr = `run-${randomUUID()}`;
    const sub = wsSubscribe(client(me), 'flushCompleted', FLUSH_COMPLETED, {
      correlationId: corr,
    });
    const ready = await sub.next();
    expect(ready).toMatchObject({ __typename: 'SubscriptionReady', instanceId: 'ws-a' });

    // 90 new events BUFFERED in three calls, a flush; then 10 of them again (duplicates) and 20
    // new ones, and another flush: 120 sent, 110 stored, 10 duplicates.
    const first = Array.from({ length: 90 }, () =>
      event({ id: randomUUID(), correlationId: corr }),
    );
    for (let i = 0; i < 90; i += 30) {
      const r = await t.gql(me, CREATE, {
        input: { events: first.slice(i, i + 30), ack: 'BUFFERED' },
      });
      expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    }
    expect((await t.gql(me, FLUSH, {})).flushAudit.__typename).toBe('FlushAuditPayload');
    const again = [
      ...first.slice(0, 10),
      ...Array.from({ length: 20 }, () => event({ correlationId: corr })),
    ];
    await t.gql(me, CREATE, { input: { events: again, ack: 'BUFFERED' } });
    await t.gql(me, FLUSH, {});

    const settled = await waitForSettled(sub, corr, 120);
    expect(settled).toMatchObject({ settled: 120, stored: 110, duplicates: 10, deadLettered: 0 });
    expect(settled.batches).toBeGreaterThanOrEqual(5); // BATCH_SIZE 25
    for (const m of settled.messages) {
      expect(m).toMatchObject({
        instanceId: 'ws-a',
        trigger: expect.stringMatching(/^(SIZE|FLUSH)$/),
      });
      expect(m.correlations).toHaveLength(1);
      expect(m.stored + m.duplicates + m.deadLettered).toBeGreaterThan(0);
      expect(Date.parse(m.committedAt)).not.toBeNaN();
    }
    const c = await sqlClient();
    try {
      const { rows } = await c.query(
        `select count(*)::int as n from "t_${me}".audit_events where correlation_id = $1`,
        [corr],
      );
      expect(rows[0].n).toBe(110);
    } finally {
      await c.end();
    }
    await sub.close();
  });

  it("never shows a tenant another tenant's messages, even with the same correlation id", async () => {
    const a = tenant('wsa');
    const b = tenant('wsb');
    const corr = `shared-${randomUUID()}`;
    const subA = wsSubscribe(client(a), 'flushCompleted', FLUSH_COMPLETED, { correlationId: corr });
    const subB = wsSubscribe(client(b), 'flushCompleted', FLUSH_COMPLETED, { correlationId: corr });
    expect((await subA.next()).__typename).toBe('SubscriptionReady');
    expect((await subB.next()).__typename).toBe('SubscriptionReady');

    // B writes first and sees its own batch: B's messages have been published and delivered.
    const bEvents = Array.from({ length: 5 }, () => event({ correlationId: corr }));
    await t.gql(b, CREATE, { input: { events: bEvents } });
    expect((await waitForSettled(subB, corr, 5)).stored).toBe(5);

    // Then A writes one event. Messages reach a subscriber in publish order, so had anything of
    // B's leaked to A it would come before this; A's first message must be its own single event.
    await t.gql(a, CREATE, { input: { events: [event({ correlationId: corr })] } });
    const firstOfA = await subA.next();
    expect(firstOfA).toMatchObject({ __typename: 'FlushCompleted', stored: 1, duplicates: 0 });
    expect(firstOfA.correlations).toEqual([
      { correlationId: corr, stored: 1, duplicates: 0, deadLettered: 0 },
    ]);

    // Control for the method: when the 5 events do belong to A, they are what A sees first.
    await t.gql(a, CREATE, { input: { events: bEvents } });
    await t.gql(a, CREATE, { input: { events: [event({ correlationId: corr })] } });
    expect(await subA.next()).toMatchObject({ stored: 5 });
    expect(await subA.next()).toMatchObject({ stored: 1 });
    await Promise.all([subA.close(), subB.close()]);
  });

  it('tails committed events matching the filter, each once, with the AuditEvent shape', async () => {
    const me = tenant('tail');
    const corr = `tail-${randomUUID()}`;
    const tail = wsSubscribe(client(me), 'auditEventsAdded', EVENTS_ADDED, {
      filter: { correlationId: corr, outcome: 'FAILURE', dataContains: { tag: 'keep' } },
    });
    expect((await tail.next()).__typename).toBe('SubscriptionReady');

    const keep = [1, 2, 3].map((n) =>
      event({
        id: randomUUID(),
        correlationId: corr,
        outcome: 'FAILURE',
        data: { tag: 'keep', n },
      }),
    );
    const skip = [
      event({ correlationId: corr, outcome: 'SUCCESS', data: { tag: 'keep' } }),
      event({ correlationId: `other-${corr}`, outcome: 'FAILURE', data: { tag: 'keep' } }),
      event({ correlationId: corr, outcome: 'FAILURE', data: { tag: 'drop' } }),
      event({ correlationId: corr, outcome: 'FAILURE' }),
    ];
    await t.gql(me, CREATE, { input: { events: [...keep, ...skip], ack: 'BUFFERED' } });
    await t.gql(me, FLUSH, {});
    // The same event again is a DUPLICATE: not repeated by the tail.
    await t.gql(me, CREATE, { input: { events: [keep[0]] } });
    // A last matching event, committed after everything above: the tail delivers in commit
    // order, so once it arrives nothing earlier is still on its way.
    const sentinel = event({
      id: randomUUID(),
      correlationId: corr,
      outcome: 'FAILURE',
      data: { tag: 'keep', last: true },
    });
    await t.gql(me, CREATE, { input: { events: [sentinel] } });

    const seen = await tail.until((m) => m.node?.id === sentinel.id);
    expect(seen.every((m) => m.__typename === 'AuditEventAdded')).toBe(true);
    expect(seen.map((m) => m.node.id).sort()).toEqual(
      [...keep.map((e) => e.id), sentinel.id].sort(),
    );
    const one = seen.find((m) => m.node.id === keep[1]!.id)!;
    expect(one.node).toMatchObject({
      correlationId: corr,
      outcome: 'FAILURE',
      data: { tag: 'keep', n: 2 },
      occurredAt: keep[1]!.occurredAt,
      actor: keep[1]!.actor,
      batchId: expect.stringMatching(/^[0-9a-f-]{36}$/),
    });
    await tail.close();
  });

  it('refuses an invalid filter with an `error` message: BAD_USER_INPUT naming the field', async () => {
    const me = tenant('bad');
    const refusal = await new Promise<unknown>((resolve, reject) => {
      client(me).subscribe(
        { query: EVENTS_ADDED, variables: { filter: { correlationId: 'x'.repeat(300) } } },
        {
          next: (r) => reject(new Error(`a refused subscription sent ${JSON.stringify(r)}`)),
          error: resolve,
          complete: () => reject(new Error('a refused subscription completed')),
        },
      );
    });
    // graphql-ws' `error` message (an array of errors), not a `next` then `complete`.
    expect(refusal).toEqual([
      expect.objectContaining({
        extensions: expect.objectContaining({
          code: 'BAD_USER_INPUT',
          retryable: false,
          issues: [expect.objectContaining({ field: 'filter.correlationId' })],
        }),
      }),
    ]);
    expect((refusal as { extensions: object }[])[0]!.extensions).not.toHaveProperty('http');
  });

  it('refuses a connection without a valid tenantId, saying why', async () => {
    for (const [params, expected] of [
      [undefined, /tenantId/],
      [{ tenantId: '' }, /tenantId/],
      [{ tenantId: 'Public' }, /must match/],
      [{ tenantId: 'pg_catalog' }, /reserved/],
    ] as const) {
      let closed: { code: number; reason: string } | undefined;
      const c = wsClient(t.url, params, {
        closed: (e) => {
          closed = e as { code: number; reason: string };
        },
      });
      const sub = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, {});
      await expect(sub.next()).rejects.toMatchObject({ code: 4403 });
      expect(closed?.code).toBe(4403);
      expect(closed?.reason).toMatch(expected);
      await c.dispose();
    }
  });

  it('bounds the operations of one connection and keeps the connection usable', async () => {
    const me = tenant('cap');
    const c = client(me);
    const subs = [1, 2, 3].map(() => wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, {}));
    for (const s of subs) expect((await s.next()).__typename).toBe('SubscriptionReady');
    const fourth = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, {});
    // graphql-ws answers an `error` message for that operation alone (a list of GraphQL errors).
    await expect(fourth.next()).rejects.toMatchObject([
      {
        message: expect.stringContaining('at most 3'),
        extensions: { code: 'TOO_MANY_SUBSCRIPTIONS' },
      },
    ]);
    await subs[0]!.close();
    const again = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, {});
    expect((await again.next()).__typename).toBe('SubscriptionReady');
    await Promise.all([again.close(), subs[1]!.close(), subs[2]!.close()]);
  });

  it('ends every subscription at shutdown with SHUTTING_DOWN, after the last batch, then closes', async () => {
    const me = tenant('stop');
    const corr = `stop-${randomUUID()}`;
    let closed: { code: number; reason: string } | undefined;
    const c = wsClient(
      t.url,
      { tenantId: me },
      {
        closed: (e) => {
          closed = e as { code: number; reason: string };
        },
      },
      // A lazy client closes (1000) as soon as its last subscription ends; this one stays open,
      // so what ends the connection is the server's own close at shutdown.
      { lazyCloseTimeout: 60_000 },
    );
    clients.push(c);
    const sub = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, { correlationId: corr });
    expect((await sub.next()).__typename).toBe('SubscriptionReady');
    // Buffered and not flushed (FLUSH_INTERVAL_MS is a minute): only the shutdown writes them.
    await t.gql(me, CREATE, {
      input: {
        events: Array.from({ length: 7 }, () => event({ correlationId: corr })),
        ack: 'BUFFERED',
      },
    });
    const stopped = t.stop();
    const settled = await waitForSettled(sub, corr, 7);
    expect(settled).toMatchObject({ stored: 7 });
    expect(settled.messages.at(-1)!.trigger).toMatch(/^(FLUSH|SHUTDOWN)$/);
    expect(await sub.next()).toMatchObject({
      __typename: 'SubscriptionInterruptedError',
      reason: 'SHUTTING_DOWN',
      retryable: true,
    });
    await expect(sub.next()).rejects.toThrow('the subscription ended');
    await stopped;
    expect(closed).toMatchObject({ code: 1001, reason: 'server shutting down' });
  });
});
