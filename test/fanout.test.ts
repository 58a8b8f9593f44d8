import { randomUUID } from 'node:crypto';
import type { Client } from 'graphql-ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';
import {
  FLUSH_COMPLETED,
  redisEnv,
  sseSubscribe,
  waitForSettled,
  wsClient,
  wsSubscribe,
} from './support/realtime.js';

/**
 * Two instances in one test process, sharing PostgreSQL and Redis (same REDIS_URL and key
 * prefix): what one settles reaches subscribers on the other. Separate OS processes are a later
 * test; the wire between the instances (Redis pub/sub) is the same.
 */
describe('fan-out across instances through Redis', () => {
  let a: TestApp;
  let b: TestApp;
  let client: Client;
  const me = newTenant('fan');

  beforeAll(async () => {
    const env = redisEnv();
    [a, b] = await Promise.all([
      startApp({ ...env, INSTANCE_ID: 'fan-a', BATCH_SIZE: '30' }),
      startApp({ ...env, INSTANCE_ID: 'fan-b', BATCH_SIZE: '30' }),
    ]);
    expect(a.app.services.realtime.mode).toBe('redis');
    client = wsClient(b.url, { tenantId: me });
  });
  afterAll(async () => {
    await client?.dispose();
    await Promise.all([a?.stop(), b?.stop()]);
    await dropTenants(me);
  });

  it('delivers to a subscriber on B what was written through A', async () => {
    const corr = `fan-${randomUUID()}`;
    const onB = wsSubscribe(client, 'flushCompleted', FLUSH_COMPLETED, { correlationId: corr });
    expect(await onB.next()).toMatchObject({
      __typename: 'SubscriptionReady',
      instanceId: 'fan-b',
    });
    // And an SSE subscriber on A itself: the writing instance's own subscribers get it through
    // Redis too.
    const onA = await sseSubscribe(a.url, me, 'flushCompleted', FLUSH_COMPLETED, {
      correlationId: corr,
    });
    expect((await onA.next()).__typename).toBe('SubscriptionReady');

    for (let i = 0; i < 2; i++) {
      const events = Array.from({ length: 40 }, () => event({ correlationId: corr }));
      await a.gql(me, CREATE, { input: { events, ack: 'BUFFERED' } });
    }
    await a.gql(me, FLUSH, {});

    const seenOnB = await waitForSettled(onB, corr, 80);
    expect(seenOnB).toMatchObject({ settled: 80, stored: 80 });
    expect(seenOnB.messages.every((m) => m.instanceId === 'fan-a')).toBe(true);
    const seenOnA = await waitForSettled(onA, corr, 80);
    expect(seenOnA.messages.map((m) => m.batchId)).toEqual(seenOnB.messages.map((m) => m.batchId));
    await Promise.all([onA.close(), onB.close()]);
  });
});
