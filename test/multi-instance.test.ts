import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { countEventsNow } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  graphqlClient,
  newTenant,
  sqlClient,
} from './support/harness.js';
import { type Instance, spawnInstance } from './support/processes.js';
import { FLUSH_COMPLETED, sseSubscribe, waitForSettled } from './support/realtime.js';

const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded replayed identityHolds instances } } }`;
const FLUSH_FULL = `mutation F($timeoutMs: Int) { flushAudit(input: { timeoutMs: $timeoutMs }) { __typename
  ... on FlushAuditPayload { stored duplicates deadLettered waitedFor instances }
  ... on FlushTimeoutError { pending lastError unresponsive } ... on AuditError { message } } }`;

describe('several instances (separate processes) on one PostgreSQL and Redis', () => {
  const prefix = `test:${randomBytes(4).toString('hex')}:`;
  let a: Instance;
  let b: Instance;
  const tenants: string[] = [];

  beforeAll(async () => {
    const env = {
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      FLUSH_INTERVAL_MS: '60000',
      CLUSTER_HEARTBEAT_MS: '200',
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '30',
    };
    [a, b] = await Promise.all([
      spawnInstance({ ...env, INSTANCE_ID: 'inst-a' }),
      spawnInstance({ ...env, INSTANCE_ID: 'inst-b' }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await dropTenants(...tenants);
    const r = new Redis(inject('redisUrl'));
    const keys = await r.keys(`${prefix}*`);
    if (keys.length) await r.del(...keys);
    await r.quit();
  });

  it('flushAudit through B writes what A holds in its buffer, and auditStats sums both', async () => {
    const tenant = newTenant('multi');
    tenants.push(tenant);
    const viaA = graphqlClient(a.url);
    const viaB = graphqlClient(b.url);
    const events = Array.from({ length: 120 }, () => event({ correlationId: 'multi' }));
    const r = await viaA.gql(tenant, CREATE, { input: { ack: 'BUFFERED', events } });
    expect(r.createAuditEvents.buffered).toBe(120);
    expect(await countEventsNow(tenant)).toBe(0); // A holds them for a minute

    const before = (await viaB.gql(tenant, STATS)).auditStats;
    expect(before).toMatchObject({
      accepted: 120,
      pending: 120,
      identityHolds: true,
      instances: ['inst-a', 'inst-b'],
    });

    const f = await viaB.gql(tenant, FLUSH_FULL, { timeoutMs: 20_000 });
    expect(f.flushAudit).toMatchObject({
      __typename: 'FlushAuditPayload',
      stored: 120,
      instances: ['inst-a', 'inst-b'],
    });
    expect(await countEventsNow(tenant)).toBe(120);
    const after = (await viaB.gql(tenant, STATS)).auditStats;
    expect(after).toMatchObject({ accepted: 120, stored: 120, pending: 0, identityHolds: true });
  });

  it('delivers flushCompleted to a subscriber on B for events written through A', async () => {
    const tenant = newTenant('multi');
    tenants.push(tenant);
    const onB = await sseSubscribe(b.url, tenant, 'flushCompleted', FLUSH_COMPLETED, {
      correlationId: 'fan',
    });
    try {
      expect(await onB.next()).toMatchObject({
        __typename: 'SubscriptionReady',
        instanceId: 'inst-b',
      });
      const viaA = graphqlClient(a.url);
      await viaA.gql(tenant, CREATE, {
        input: {
          ack: 'BUFFERED',
          events: Array.from({ length: 30 }, () => event({ correlationId: 'fan' })),
        },
      });
      await viaA.gql(tenant, FLUSH_FULL, { timeoutMs: 10_000 });
      const settled = await waitForSettled(onB, 'fan', 30);
      expect(settled.stored).toBe(30);
    } finally {
      await onB.close();
    }
  });

  it('answers FlushTimeoutError naming an instance that does not answer, instead of hanging', async () => {
    const tenant = newTenant('multi');
    tenants.push(tenant);
    const viaA = graphqlClient(a.url);
    await viaA.gql(tenant, CREATE, { input: { ack: 'BUFFERED', events: [event()] } });
    b.child.kill('SIGSTOP'); // B is alive by its last heartbeat but answers nothing
    try {
      const started = Date.now();
      const f = await viaA.gql(tenant, FLUSH_FULL, { timeoutMs: 300 });
      expect(f.flushAudit.__typename).toBe('FlushTimeoutError');
      expect(f.flushAudit.unresponsive).toEqual(['inst-b']);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      b.child.kill('SIGCONT');
    }
    // A's own part was written all the same.
    expect(await countEventsNow(tenant)).toBe(1);
  });

  it('auditStats reads the same from every instance, and keeps what an instance that stopped had accepted', async () => {
    const tenant = newTenant('multi');
    tenants.push(tenant);
    const env = { REDIS_URL: inject('redisUrl'), REDIS_KEY_PREFIX: prefix };
    const d = await spawnInstance({ ...env, INSTANCE_ID: 'inst-d', CLUSTER_HEARTBEAT_MS: '200' });
    const viaA = graphqlClient(a.url);
    const viaB = graphqlClient(b.url);
    const viaD = graphqlClient(d.url);
    try {
      const committed = Array.from({ length: 30 }, () => event({ correlationId: 'books' }));
      const buffered = Array.from({ length: 50 }, () => event({ correlationId: 'books' }));
      await viaA.gql(tenant, CREATE, { input: { ack: 'COMMITTED', events: committed } });
      await viaD.gql(tenant, CREATE, { input: { ack: 'BUFFERED', events: buffered } });
      const f = await viaB.gql(tenant, FLUSH_FULL, { timeoutMs: 20_000 });
      expect(f.flushAudit.__typename).toBe('FlushAuditPayload');
      const terms = (s: Record<string, unknown>) => {
        const { instances: _, replayed: __, ...rest } = s;
        return rest;
      };
      const fromEach = await Promise.all(
        [viaA, viaB, viaD].map(async (via) => (await via.gql(tenant, STATS)).auditStats),
      );
      for (const s of fromEach) {
        expect(terms(s)).toEqual({
          __typename: 'AuditStats',
          accepted: 80,
          stored: 80,
          duplicates: 0,
          pending: 0,
          deadLettered: 0,
          discarded: 0,
          identityHolds: true,
        });
      }
    } finally {
      await d.stop();
    }
    // D is gone; what it accepted is still counted (summed over live instances, it was not).
    const after = (await viaA.gql(tenant, STATS)).auditStats;
    expect(after.instances).toEqual(['inst-a', 'inst-b']);
    expect(after).toMatchObject({ accepted: 80, stored: 80, pending: 0, identityHolds: true });
  });

  it('shares the retry work: each dead letter is replayed by one instance, once', async () => {
    const tenant = newTenant('multi');
    tenants.push(tenant);
    const viaA = graphqlClient(a.url);
    const viaB = graphqlClient(b.url);
    await viaA.gql(tenant, CREATE, { input: { events: [event()] } });
    const c = await sqlClient();
    try {
      await c.query(
        `alter table "t_${tenant}".audit_events add constraint poison check (event_type <> 'poison')`,
      );
      // 20 poison events through each instance: 40 dead letters of one event each.
      for (const via of [viaA, viaB]) {
        for (let i = 0; i < 20; i++) {
          const r = await via.gql(tenant, CREATE, {
            input: { events: [event({ eventType: 'poison' })] },
          });
          expect(r.createAuditEvents.events[0].status).toBe('DEAD_LETTERED');
        }
      }
      await c.query(`alter table "t_${tenant}".audit_events drop constraint poison`);
    } finally {
      await c.end();
    }
    // Parked after one replay each (schedule of one delay); replay them all, then wait for both
    // workers to have written them: the stored count is the barrier, polled with a bound.
    const deadline = Date.now() + 30_000;
    let replayedTotal = 0;
    while (Date.now() < deadline) {
      const s = (await viaA.gql(tenant, STATS)).auditStats;
      replayedTotal = s.replayed;
      if (s.deadLettered === 0 && s.stored === 41) break;
      await viaA.gql(tenant, 'mutation { replayDeadLetters(input: { all: true }) { __typename } }');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await countEventsNow(tenant)).toBe(41);
    const s = (await viaB.gql(tenant, STATS)).auditStats;
    // Done twice, a replay would be found in the ledger and counted again.
    expect(s).toMatchObject({
      accepted: 41,
      stored: 41,
      deadLettered: 0,
      replayed: 40,
      identityHolds: true,
    });
    expect(replayedTotal).toBe(40);
  });
});
