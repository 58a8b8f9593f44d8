import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';
import { EVENTS_ADDED, FLUSH_COMPLETED, sseSubscribe, waitForSettled } from './support/realtime.js';

/**
 * Subscriptions over SSE (yoga's built-in), with the in-process bus (no REDIS_URL): the tenant
 * is the x-tenant-id header, as for every HTTP request.
 */
describe('subscriptions over SSE (in-process bus)', () => {
  let t: TestApp;
  const tenants: string[] = [];
  const tenant = (prefix: string) => {
    const id = newTenant(prefix);
    tenants.push(id);
    return id;
  };

  beforeAll(async () => {
    t = await startApp({ BATCH_SIZE: '20', FLUSH_INTERVAL_MS: '60000', INSTANCE_ID: 'sse-a' });
    expect(t.app.services.realtime.mode).toBe('in-process');
  });
  afterAll(async () => {
    await t.stop();
    await dropTenants(...tenants);
  });

  it('lets a client wait for exactly its own events', async () => {
    const me = tenant('sse');
    const corr = `sse-${randomUUID()}`;
    const sub = await sseSubscribe(t.url, me, 'flushCompleted', FLUSH_COMPLETED, {
      correlationId: corr,
    });
    expect(await sub.next()).toMatchObject({
      __typename: 'SubscriptionReady',
      instanceId: 'sse-a',
    });

    // Someone else's events in the same tenant: not counted for this correlation id.
    await t.gql(me, CREATE, { input: { events: [event({ correlationId: `x-${corr}` })] } });
    for (let i = 0; i < 3; i++) {
      const events = Array.from({ length: 15 }, () => event({ correlationId: corr }));
      await t.gql(me, CREATE, { input: { events, ack: 'BUFFERED' } });
    }
    await t.gql(me, CREATE, { input: { events: [event({ correlationId: corr })] } });
    await t.gql(me, FLUSH, {});

    const settled = await waitForSettled(sub, corr, 46);
    expect(settled).toMatchObject({ settled: 46, stored: 46, duplicates: 0, deadLettered: 0 });
    expect(settled.messages.every((m) => m.correlations.length === 1)).toBe(true);
    await sub.close();
  });

  it('tails matching events over SSE too', async () => {
    const me = tenant('ssetail');
    const corr = `tail-${randomUUID()}`;
    const tail = await sseSubscribe(t.url, me, 'auditEventsAdded', EVENTS_ADDED, {
      filter: { correlationId: corr, eventTypes: ['b.happened'] },
    });
    expect((await tail.next()).__typename).toBe('SubscriptionReady');
    const a = event({ correlationId: corr, eventType: 'a.happened' });
    const b = event({ id: randomUUID(), correlationId: corr, eventType: 'b.happened' });
    await t.gql(me, CREATE, { input: { events: [a, b] } });
    expect(await tail.next()).toMatchObject({ __typename: 'AuditEventAdded', node: { id: b.id } });
    await tail.close();
  });

  it('answers a request without x-tenant-id with 401 before any event is streamed', async () => {
    const refused = await sseSubscribe(t.url, null, 'flushCompleted', FLUSH_COMPLETED, {}).then(
      () => null,
      (err: { status: number; body: string; headers: Headers }) => err,
    );
    expect(refused?.status).toBe(401);
    expect(refused?.headers.get('content-type')).toMatch(/^application\/json/);
    const body = JSON.parse(refused!.body);
    expect(body.errors[0]).toMatchObject({
      message: expect.stringContaining('x-tenant-id'),
      extensions: { code: 'UNAUTHENTICATED' },
    });
    expect(body.errors[0].extensions).not.toHaveProperty('http');
  });

  it('answers a bad filter with 400 BAD_USER_INPUT before any event is streamed', async () => {
    const refused = await sseSubscribe(t.url, tenant('badf'), 'flushCompleted', FLUSH_COMPLETED, {
      correlationId: '',
    }).then(
      () => null,
      (err: { status: number; body: string }) => err,
    );
    expect(refused?.status).toBe(400);
    expect(JSON.parse(refused!.body).errors[0].extensions.code).toBe('BAD_USER_INPUT');
  });

  it('releases the server-side subscription when the client goes away', async () => {
    const me = tenant('gone');
    const before = t.app.services.realtime.size;
    const sub = await sseSubscribe(
      t.url,
      me,
      'deadLetterEvents',
      `subscription {
      deadLetterEvents { __typename ... on SubscriptionReady { instanceId } }
    }`,
    );
    expect((await sub.next()).__typename).toBe('SubscriptionReady');
    expect(t.app.services.realtime.size).toBe(before + 1);
    await sub.close();
    // The server learns of the disconnect asynchronously; there is no event to await here.
    await waitUntil(
      'the subscription to be released',
      async () => t.app.services.realtime.size,
      (n) => n === before,
    );
  });

  it('ends open streams at shutdown with SHUTTING_DOWN and a complete event', async () => {
    const me = tenant('ssestop');
    const sub = await sseSubscribe(t.url, me, 'flushCompleted', FLUSH_COMPLETED, {});
    expect((await sub.next()).__typename).toBe('SubscriptionReady');
    const stopped = t.stop();
    expect(await sub.next()).toMatchObject({
      __typename: 'SubscriptionInterruptedError',
      reason: 'SHUTTING_DOWN',
    });
    await expect(sub.next()).rejects.toThrow('the subscription ended');
    expect(sub.events.at(-1)?.event).toBe('complete');
    await stopped;
  });
});
