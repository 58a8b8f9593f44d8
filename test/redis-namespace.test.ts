import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { AuditEventRecord } from '../src/domain/event.js';
import type { TenantId } from '../src/domain/tenant.js';
import { type DeadLetter, serialiseDeadLetter } from '../src/ingest/dead-letter-queue.js';
import type { DeadLetterEventKind } from '../src/ingest/events.js';
import {
  hasLegacyDeadLetters,
  migrateLegacyDeadLetters,
} from '../src/ingest/redis-dead-letter-layout.js';
import { RedisDeadLetterStore } from '../src/ingest/redis-dead-letter-store.js';
import { createLogger } from '../src/logger.js';
import { RedisKeys } from '../src/redis/client.js';
import { countEventsNow } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Tenant ids are chosen by whoever provisions tenants, and may be any word — including the
 * words the service uses in its own Redis names. None of them may reach a key that is not the
 * tenant's own, and dead letters kept under the names of the earlier release must survive the
 * upgrade.
 */

const DEAD_LETTERS = `query DL { deadLetters { __typename
  ... on DeadLetterConnection { totalCount edges { node { id: deadLetterId state eventCount events { id: eventId eventType } } } }
   } }`;
const REPLAY_ALL = `mutation { replayDeadLetters(input: { all: true }) { __typename
  ... on ReplayDeadLettersPayload { replayed { id: deadLetterId } notFound } ... on AuditError { message } } }`;

/**
 * Every segment of a Redis name the service uses or used: the earlier layout's (`dlq:tenants`,
 * `dlq:depth`, `dlq:<t>:parked`, `dlq:<t>:index`, `ratelimit:rate|burst:<t>`,
 * `realtime:<t>:<topic>`, `cluster:instances`, `cluster:inbox:<id>`, group `retry`) and the
 * current one's (`t:<t>:dlq…`, `deadletters:…`).
 */
const SEGMENTS = [
  'tenants',
  'depth',
  'index',
  'parked',
  'dlq',
  'retry',
  'ratelimit',
  'rate',
  'burst',
  'realtime',
  'cluster',
  'instances',
  'inbox',
  't',
  'deadletters',
];

const redisUrl = () => inject('redisUrl');
const log = createLogger({ logLevel: 'silent' });
const filePrefix = `test:${randomBytes(4).toString('hex')}:`;
const dropped: string[] = [];
const apps: TestApp[] = [];
const clients: Redis[] = [];

function client(): Redis {
  const r = new Redis(redisUrl());
  clients.push(r);
  return r;
}

afterAll(async () => {
  for (const t of apps) await t.stop();
  await dropTenants(...dropped);
  const r = new Redis(redisUrl());
  const keys = await r.keys(`${filePrefix}*`);
  if (keys.length) await r.del(...keys);
  await r.quit();
  for (const c of clients) await c.quit();
});

async function sql(text: string): Promise<void> {
  const c = await sqlClient();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}

async function readyz(t: TestApp): Promise<{ status: number; body: any }> {
  const res = await fetch(t.url.replace(/\/graphql$/, '/readyz'));
  return { status: res.status, body: await res.json() };
}

/** Resolves once `kind` was reported for each of `tenants` by any of `on`. */
function deadLetterEvents(on: TestApp[], tenants: string[], kind: DeadLetterEventKind) {
  const waiting = new Set(tenants);
  return new Promise<void>((resolve) => {
    const offs = on.map((t) =>
      t.app.graph.events.onDeadLetter((e) => {
        if (e.kind !== kind || !waiting.delete(e.tenant)) return;
        if (waiting.size > 0) return;
        for (const off of offs) off();
        resolve();
      }),
    );
  });
}

/** Polls `ok` every 50 ms for at most 10 s. */
async function waitFor(ok: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function allKeys(r: Redis, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    out.push(...found);
  } while (cursor !== '0');
  return out.sort();
}

describe('tenants named after the service’s own Redis names', () => {
  it('each keep their own dead letters; the queue stays ready and retries every tenant', async () => {
    const prefix = `${filePrefix}live:`;
    const t = await startApp({
      REDIS_URL: redisUrl(),
      REDIS_KEY_PREFIX: prefix,
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '50',
      RETRY_BASE_MS: '10',
      RETRY_MAX_MS: '50',
    });
    apps.push(t);
    const victim = newTenant('ns');
    // `tenants` first: in the earlier layout its stream became the service's tenant set.
    const tenants = ['tenants', victim, ...SEGMENTS.filter((s) => s !== 'tenants')];
    dropped.push(...tenants);
    await dropTenants(...tenants);

    const poisonIds = new Map<string, string>();
    const parked = deadLetterEvents([t], tenants, 'PARKED');
    for (const id of tenants) {
      await t.gql(id, CREATE, { input: { events: [event()] } }); // provisions the schema
      await sql(
        `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
      );
      const poison = event({ id: randomUUID(), eventType: 'poison' });
      poisonIds.set(id, poison.id as string);
      const r = await t.gql(id, CREATE, { input: { events: [poison] } });
      expect(r.createAuditEvents.events[0].status, id).toBe('DEAD_LETTERED');
      expect((await readyz(t)).status, `ready after ${id}'s dead letter`).toBe(200);
    }
    // Every tenant's dead letter is retried (twice, on the schedule) and parked.
    await parked;
    // /readyz shows the depth the worker measured at its last round.
    await waitFor(
      async () => (await readyz(t)).body.deadLetters.parkedEntries === tenants.length,
      'every parked dead letter counted',
    );
    expect((await readyz(t)).status).toBe(200);

    for (const id of tenants) {
      const dl = (await t.gql(id, DEAD_LETTERS)).deadLetters;
      expect(dl.totalCount, id).toBe(1);
      expect(dl.edges[0].node).toMatchObject({ state: 'PARKED', eventCount: 1 });
      expect(dl.edges[0].node.events[0].id, id).toBe(poisonIds.get(id));
    }

    // Only the layout's names exist: a tenant's under `t:<tenant>:`, the service's in areas
    // that hold no tenant's.
    const r = client();
    const shapes = [
      /^t:([a-z][a-z0-9_]*):(dlq(:parked|:index)?|books|interest:[a-zA-Z]+)$/,
      /^deadletters:(tenants|depth|ages)$/,
      /^ratelimit:(rate|burst):[a-z][a-z0-9_]*$/,
      /^cluster:instances$/,
    ];
    const keys = (await allKeys(r, prefix)).map((k) => k.slice(prefix.length));
    for (const k of keys)
      expect(
        shapes.some((s) => s.test(k)),
        k,
      ).toBe(true);
    expect(await r.type(`${prefix}deadletters:tenants`)).toBe('set');
    expect(await r.type(`${prefix}deadletters:depth`)).toBe('hash');
    expect(await r.type(`${prefix}deadletters:ages`)).toBe('zset');
    expect((await r.smembers(`${prefix}deadletters:tenants`)).sort()).toEqual([...tenants].sort());
    for (const id of tenants) expect(await r.type(`${prefix}t:${id}:dlq`), id).toBe('stream');

    // Fixed: every tenant's dead letter is replayed and stored.
    for (const id of tenants)
      await sql(`alter table "t_${id}".audit_events drop constraint poison`);
    const recovered = deadLetterEvents([t], tenants, 'RECOVERED');
    for (const id of tenants) {
      const rp = (await t.gql(id, REPLAY_ALL)).replayDeadLetters;
      expect(rp.replayed, id).toHaveLength(1);
    }
    await recovered;
    for (const id of tenants) {
      expect(await countEventsNow(id), id).toBe(2);
      expect((await t.gql(id, DEAD_LETTERS)).deadLetters.totalCount, id).toBe(0);
    }
    await waitFor(async () => (await readyz(t)).body.deadLetters.entries === 0, 'queue empty');
    const after = await readyz(t);
    expect(after.status).toBe(200);
    expect(after.body.deadLetters).toMatchObject({ entries: 0, events: 0, parkedEntries: 0 });
  });

  it('refuses a dead letter when any command of its MULTI fails, instead of reporting it stored', async () => {
    const keys = new RedisKeys(`${filePrefix}multi:`);
    const r = client();
    const store = new RedisDeadLetterStore(r, keys, 'test', log);
    // Something else holds the depth counters' name: their HINCRBYs fail with WRONGTYPE while
    // the XADD of the same MULTI succeeds.
    await r.set(keys.service('deadletters', 'depth'), 'not a hash');
    await expect(store.add(deadLetter('multi_a', 'ACTIVE'))).rejects.toThrow(/WRONGTYPE/);
    await r.del(keys.service('deadletters', 'depth'));
    const dl = deadLetter('multi_a', 'ACTIVE');
    await store.add(dl);
    expect((await store.get('multi_a' as TenantId, dl.id))?.id).toBe(dl.id);
  });

  it('replays or discards a parked dead letter once when asked twice at the same time', async () => {
    const keys = new RedisKeys(`${filePrefix}take:`);
    const r = client();
    const store = new RedisDeadLetterStore(r, keys, 'test', log);
    const tenant = 'take_a' as TenantId;
    const toReplay = deadLetter(tenant, 'PARKED');
    const toDiscard = deadLetter(tenant, 'PARKED');
    await legacyAdd(r, keys.prefix, toReplay);
    await legacyAdd(r, keys.prefix, toDiscard);
    await migrateLegacyDeadLetters(r, keys, log);
    expect(await store.depth()).toMatchObject({ entries: 2, parkedEntries: 2 });

    const replays = await Promise.all([1, 2, 3].map(() => store.replay(tenant, toReplay.id)));
    const discards = await Promise.all([1, 2, 3].map(() => store.discard(tenant, toDiscard.id)));
    expect(replays.filter(Boolean)).toHaveLength(1);
    expect(discards.filter(Boolean)).toHaveLength(1);
    expect((await store.list(tenant)).map((d) => [d.id, d.state])).toEqual([
      [toReplay.id, 'ACTIVE'],
    ]);
    expect((await store.get(tenant, toReplay.id))?.state).toBe('ACTIVE');
    expect(await store.depth()).toMatchObject({
      entries: 1,
      events: 1,
      parkedEntries: 0,
      parkedEvents: 0,
    });
  });
});

/** A dead letter with one record (never written: these tests only move and list them). */
function deadLetter(
  tenant: string,
  state: DeadLetter['state'],
  nextAttemptAt: Date | null = new Date(Date.now() + 3_600_000),
): DeadLetter {
  const now = new Date();
  const record: AuditEventRecord = {
    id: randomUUID(),
    occurredAt: now,
    receivedAt: now,
    eventType: 'upgrade.test',
    category: 'test',
    action: 'move',
    outcome: 'SUCCESS',
    correlationId: 'corr',
    actorType: 'user',
    actorId: 'u1',
    actorIp: null,
    resourceType: 'thing',
    resourceId: 'r1',
    resourceName: null,
    parentEventId: null,
    severity: null,
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: '{"k":1}',
  };
  return {
    id: randomUUID(),
    tenant: tenant as TenantId,
    state,
    records: [record],
    errorCode: '23514',
    error: 'check constraint',
    attempts: 5,
    replays: state === 'PARKED' ? 3 : 0,
    firstFailedAt: now,
    lastFailedAt: now,
    nextAttemptAt: state === 'ACTIVE' ? nextAttemptAt : null,
  };
}

/**
 * What the earlier release did to keep a dead letter, command for command: ACTIVE ones in the
 * tenant's stream `dlq:<tenant>` (consumer group `retry`) and its index, PARKED ones in
 * `dlq:<tenant>:parked`, counters in `dlq:depth`, the tenant in `dlq:tenants`. Its failures
 * are those of the earlier release too (a WRONGTYPE inside the MULTI went unnoticed).
 */
async function legacyAdd(r: Redis, prefix: string, dl: DeadLetter): Promise<void> {
  const stream = `${prefix}dlq:${dl.tenant}`;
  const depth = `${prefix}dlq:depth`;
  const text = serialiseDeadLetter(dl);
  const n = dl.records.length;
  if (dl.state === 'PARKED') {
    await r
      .multi()
      .hset(`${prefix}dlq:${dl.tenant}:parked`, dl.id, text)
      .hincrby(depth, 'parkedEntries', 1)
      .hincrby(depth, 'parkedEvents', n)
      .exec();
    return;
  }
  try {
    await r.xgroup('CREATE', stream, 'retry', '0', 'MKSTREAM');
  } catch (err) {
    if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
  }
  const res = await r
    .multi()
    .sadd(`${prefix}dlq:tenants`, dl.tenant)
    .xadd(stream, '*', 'dl', text)
    .hincrby(depth, 'entries', 1)
    .hincrby(depth, 'events', n)
    .exec();
  const streamId = res?.[1]?.[1] as string | undefined;
  if (!streamId) throw new Error('not stored');
  await r.hset(`${prefix}dlq:${dl.tenant}:index`, dl.id, streamId);
}

describe('upgrade from the earlier Redis layout', () => {
  it('moves every dead letter once when several instances migrate at the same time', async () => {
    const prefix = `${filePrefix}up1:`;
    const keys = new RedisKeys(prefix);
    const r = client();
    const tenants = ['up_a', 'up_b', 'up_c', 'index', 'parked'];
    const expected = new Map<string, string[]>();
    for (const [i, tenant] of tenants.entries()) {
      const dls = [
        ...Array.from({ length: i + 1 }, () => deadLetter(tenant, 'ACTIVE')),
        deadLetter(tenant, 'PARKED'),
      ];
      for (const dl of dls) await legacyAdd(r, prefix, dl);
      expected.set(tenant, dls.map((d) => d.id).sort());
    }
    const oldDepth = await r.hgetall(`${prefix}dlq:depth`);
    expect(await hasLegacyDeadLetters(r, keys)).toBe(true);

    const runs = await Promise.all(
      Array.from({ length: 4 }, () => migrateLegacyDeadLetters(client(), keys, log)),
    );
    const sum = (f: 'active' | 'parked') => runs.reduce((n, m) => n + m[f], 0);
    expect(sum('active')).toBe(1 + 2 + 3 + 4 + 5);
    expect(sum('parked')).toBe(tenants.length);
    expect(await allKeys(r, `${prefix}dlq:`)).toEqual([]);
    expect(await hasLegacyDeadLetters(r, keys)).toBe(false);
    expect(await r.hgetall(keys.service('deadletters', 'depth'))).toEqual(oldDepth);

    const store = new RedisDeadLetterStore(r, keys, 'test', log);
    for (const tenant of tenants) {
      const listed = await store.list(tenant as TenantId);
      expect(listed.map((d) => d.id).sort(), tenant).toEqual(expected.get(tenant));
      for (const dl of listed) {
        expect((await store.get(tenant as TenantId, dl.id))?.id, tenant).toBe(dl.id);
      }
    }
    expect((await store.depth()).entries).toBe(15 + tenants.length);

    // An instance of the earlier release still running writes the old names again: the next
    // pass appends to the streams already moved, and the index follows the new stream ids.
    const late = deadLetter('up_a', 'ACTIVE');
    await legacyAdd(r, prefix, late);
    expect(await hasLegacyDeadLetters(r, keys)).toBe(true);
    const again = await migrateLegacyDeadLetters(r, keys, log);
    expect(again).toMatchObject({ tenants: 1, active: 1, parked: 0 });
    expect((await store.get('up_a' as TenantId, late.id))?.id).toBe(late.id);
    expect(await store.list('up_a' as TenantId)).toHaveLength(expected.get('up_a')!.length + 1);
    expect((await store.depth()).entries).toBe(16 + tenants.length);
  });

  it('recovers the dead letters of tenants named `tenants` and `depth` from where the earlier release put them', async () => {
    // `tenants` dead-lettered first: its stream took the name of the tenant set, so the
    // earlier release lost track of every other tenant's stream.
    const p1 = `${filePrefix}up2:`;
    const r = client();
    const a = [deadLetter('tenants', 'ACTIVE'), deadLetter('up_d', 'ACTIVE')];
    for (const dl of a) await legacyAdd(r, p1, dl);
    expect(await r.type(`${p1}dlq:tenants`)).toBe('stream');
    // `depth` dead-lettered first: its stream took the name of the depth counters.
    const p2 = `${filePrefix}up3:`;
    const b = [deadLetter('depth', 'ACTIVE'), deadLetter('up_e', 'ACTIVE')];
    for (const dl of b) await legacyAdd(r, p2, dl);
    expect(await r.type(`${p2}dlq:depth`)).toBe('stream');

    for (const [prefix, dls] of [
      [p1, a],
      [p2, b],
    ] as const) {
      const keys = new RedisKeys(prefix);
      const moved = await migrateLegacyDeadLetters(r, keys, log);
      expect(moved).toMatchObject({ tenants: 2, active: 2, parked: 0 });
      const store = new RedisDeadLetterStore(r, keys, 'test', log);
      for (const dl of dls) {
        expect((await store.list(dl.tenant)).map((d) => d.id)).toEqual([dl.id]);
      }
      expect(await allKeys(r, `${prefix}dlq:`)).toEqual([]);
      expect((await r.smembers(keys.service('deadletters', 'tenants'))).sort()).toEqual(
        dls.map((d) => d.tenant).sort(),
      );
    }
  });

  it('serves dead letters kept under the earlier names after two instances start together', async () => {
    const prefix = `${filePrefix}up4:`;
    const tenants = [newTenant('up'), newTenant('up')];
    dropped.push(...tenants);
    // Provision the tenants (no Redis: nothing is written under the prefix).
    const provisioner = await startApp({});
    for (const id of tenants) await provisioner.gql(id, CREATE, { input: { events: [event()] } });
    await provisioner.stop();

    const r = client();
    const parked = new Map<string, DeadLetter>();
    const active = new Map<string, DeadLetter>();
    for (const id of tenants) {
      // Due a little after the instances start, so both are listed before it is retried.
      active.set(id, deadLetter(id, 'ACTIVE', new Date(Date.now() + 3_000)));
      parked.set(id, deadLetter(id, 'PARKED'));
      await legacyAdd(r, prefix, active.get(id)!);
      await legacyAdd(r, prefix, parked.get(id)!);
    }

    const env = {
      REDIS_URL: redisUrl(),
      REDIS_KEY_PREFIX: prefix,
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '50',
    };
    const both = await Promise.all([startApp(env), startApp(env)]);
    apps.push(...both);
    const [t1, t2] = both as [TestApp, TestApp];
    for (const id of tenants) {
      const listed = (await t1.gql(id, DEAD_LETTERS)).deadLetters;
      expect(listed.edges.map((e: { node: { id: string } }) => e.node.id).sort()).toEqual(
        [active.get(id)!.id, parked.get(id)!.id].sort(),
      );
    }
    const moved = both.map(
      (t) => (t.app.services.deadLetters as RedisDeadLetterStore).lastMigration,
    );
    expect(moved.reduce((n, m) => n + (m?.active ?? 0), 0)).toBe(tenants.length);
    expect(moved.reduce((n, m) => n + (m?.parked ?? 0), 0)).toBe(tenants.length);
    expect(await allKeys(r, `${prefix}dlq:`)).toEqual([]);

    // The parked ones are replayed on request, the active ones by the worker on their schedule.
    for (const id of tenants) {
      expect((await t2.gql(id, REPLAY_ALL)).replayDeadLetters.replayed).toHaveLength(1);
    }
    for (const id of tenants) {
      await waitFor(async () => (await countEventsNow(id)) === 3, `${id}: both stored`);
      // The worker removes a dead letter just after its events commit: between the two it is
      // still listed, so its leaving is waited for (bounded), not sampled once.
      await waitFor(
        async () => (await t1.gql(id, DEAD_LETTERS)).deadLetters.totalCount === 0,
        `${id}: no dead letter left`,
      );
    }
    await waitFor(async () => (await readyz(t1)).body.deadLetters.entries === 0, 'queue empty');
    expect((await readyz(t1)).body.deadLetters).toMatchObject({ events: 0, parkedEntries: 0 });
  });
});
