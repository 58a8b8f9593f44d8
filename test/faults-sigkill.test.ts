import { randomBytes, randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  childServices,
  deleteRedisKeys,
  OwnRedis,
  type ServiceProcess,
  within,
} from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  PAGE,
  sqlClient,
  storedCounts,
} from './support/harness.js';

/**
 * A BUFFERED answer survives kill -9. A service process (a child, not this one) takes BUFFERED
 * calls of 50 events from four writers and is killed with SIGKILL at a random moment; batches are
 * large and the interval long, so what it acknowledged is, at the kill, in its memory and its
 * journal only. After a restart (or, with Redis, on a live instance once the lease has passed)
 * and flushAudit, every acknowledged event is stored exactly once, auditStats shows them as
 * recovered, and its books account for every round's events, not only the last process's. The
 * negative control runs the same with JOURNAL=off and loses events.
 */

const WRITERS = 4;
const PER_CALL = 50;
/** Kills (and restarts) per journal kind. */
const ROUNDS = 10;
const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded recovered identityHolds } } }`;

interface Round {
  acknowledged: string[];
  /** Calls cut by the kill: their events may or may not have been journaled. */
  unknown: string[];
}

/** Streams BUFFERED calls into `svc` until about `target` events are acknowledged, then kills it. */
async function streamAndKill(svc: ServiceProcess, tenant: string, target: number): Promise<Round> {
  const client = graphqlClient(`${svc.base}/graphql`);
  const round: Round = { acknowledged: [], unknown: [] };
  let killed = false;
  const writer = async (w: number) => {
    for (let k = 0; k < 1_000 && !killed; k++) {
      const events = Array.from({ length: PER_CALL }, () =>
        event({ id: randomUUID(), correlationId: `kill-w${w}` }),
      );
      const ids = events.map((e) => e.id as string);
      try {
        const res = await client.raw(tenant, {
          query: CREATE,
          variables: { input: { events, ack: 'BUFFERED' } },
        });
        const r = res.body?.data?.createAuditEvents;
        if (r?.__typename !== 'CreateAuditEventsPayload') {
          throw new Error(`unexpected answer ${JSON.stringify(res.body).slice(0, 300)}`);
        }
        round.acknowledged.push(...ids);
        if (!killed && round.acknowledged.length >= target) {
          killed = true;
          svc.child.kill('SIGKILL');
        }
      } catch (err) {
        if (!killed) throw err;
        round.unknown.push(...ids);
        return;
      }
    }
  };
  await within(
    Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w))),
    60_000,
    'the stream until the kill',
  );
  await within(svc.exited, 10_000, 'the killed process exit');
  return round;
}

/** The same as storedCounts, read through the API (for the embedded database, out of reach of SQL). */
async function storedCountsByApi(svc: ServiceProcess, tenant: string, ids: string[]) {
  const client = graphqlClient(`${svc.base}/graphql`);
  const wanted = new Set(ids);
  const counts = new Map<string, number>();
  let after: string | null = null;
  for (let pages = 0; pages < 200; pages++) {
    const c: Record<string, any> = (await client.gql(tenant, PAGE, { first: 500, after }))
      .auditEvents;
    for (const e of c.edges as { node: { id: string } }[]) {
      if (wanted.has(e.node.id)) counts.set(e.node.id, (counts.get(e.node.id) ?? 0) + 1);
    }
    if (!c.pageInfo.hasNextPage) return counts;
    after = c.pageInfo.endCursor;
  }
  throw new Error('more than 200 pages');
}

async function flushAndStats(svc: ServiceProcess, tenant: string) {
  const client = graphqlClient(`${svc.base}/graphql`);
  const flushed = await client.gql(tenant, FLUSH, { timeoutMs: 30_000 });
  expect(flushed.flushAudit.__typename).toBe('FlushAuditPayload');
  return (await client.gql(tenant, STATS)).auditStats;
}

const randomTarget = () => 300 + Math.floor(Math.random() * 1_200);

describe('SIGKILL during a BUFFERED stream', () => {
  const prefix = `test:faultkill:${randomBytes(4).toString('hex')}:`;
  const tenants: string[] = [];
  const services = childServices();
  const tempDir = services.tempDir;
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await sqlClient();
  });

  afterAll(async () => {
    await services.cleanup();
    await admin?.end();
    await dropTenants(...tenants);
    await deleteRedisKeys(inject('redisUrl'), prefix);
  });

  const spawn = (env: Record<string, string>) =>
    services.spawn({
      FLUSH_INTERVAL_MS: '30000',
      BATCH_SIZE: '5000',
      RATE_LIMIT_EVENTS_PER_SECOND: '0',
      ...env,
    });

  const journals = [
    {
      name: 'in Redis',
      env: () => ({
        REDIS_URL: inject('redisUrl'),
        REDIS_KEY_PREFIX: prefix,
        INSTANCE_ID: `kill-${randomBytes(4).toString('hex')}`,
      }),
    },
    {
      name: 'in a local file (no Redis)',
      env: () => ({ DLQ_DIR: tempDir('auditgraph-kill-') }),
    },
    {
      name: 'in a local file, embedded database (PGlite)',
      env: () => {
        const root = tempDir('auditgraph-kill-embedded-');
        // An empty DATABASE_URL counts as unset: the service opens the embedded database.
        return { DATABASE_URL: '', DATA_DIR: join(root, 'pglite'), DLQ_DIR: join(root, 'dlq') };
      },
      embedded: true,
    },
  ];

  for (const journal of journals) {
    it(
      `journal ${journal.name}: ${ROUNDS} kills at random moments, every acknowledged event stored once after restart`,
      async () => {
        const tenant = newTenant('kill');
        if (!journal.embedded) tenants.push(tenant);
        const env = journal.env();
        let svc = await spawn(env);
        const all: string[] = [];
        let cut = 0;
        for (let round = 0; round < ROUNDS; round++) {
          const { acknowledged, unknown } = await streamAndKill(svc, tenant, randomTarget());
          all.push(...acknowledged);
          cut += unknown.length;
          svc = await spawn(env);
          const stats = await flushAndStats(svc, tenant);
          const counts = journal.embedded
            ? await storedCountsByApi(svc, tenant, all)
            : await storedCounts(admin, tenant, all);
          const missing = all.filter((id) => counts.get(id) !== 1);
          console.info(
            `[faults-sigkill] journal ${journal.name}, round ${round + 1}: ${acknowledged.length} ` +
              `acknowledged (${unknown.length} cut by the kill), recovered ${stats.recovered}, ` +
              `missing or not once ${missing.length}; books: accepted ${stats.accepted} ` +
              `stored ${stats.stored} of ${all.length} acknowledged in all`,
          );
          expect(missing).toEqual([]);
          // The books, over every process so far: each acknowledged event once (a call cut by a
          // kill counts if its entry was journaled), all of it stored, none twice.
          expect(stats.accepted).toBeGreaterThanOrEqual(all.length);
          expect(stats.accepted).toBeLessThanOrEqual(all.length + cut);
          expect(stats.stored).toBe(stats.accepted);
          expect(stats.duplicates).toBe(0);
          // This process's counters: it took back at least every event acknowledged this round.
          expect(stats.recovered).toBeGreaterThanOrEqual(acknowledged.length);
          expect(stats.recovered).toBeLessThanOrEqual(acknowledged.length + unknown.length);
          expect(stats.pending).toBe(0);
          expect(stats.identityHolds).toBe(true);
        }
        // Bounded per kind: a round is a start, a stream, a kill, a restart and a flush (the
        // embedded database's start and its count through the API take the longest, 3–6 s).
      },
      journal.embedded ? 150_000 : 90_000,
    );
  }

  it('with Redis, a live instance takes over a killed one’s journal within the lease and stores it all', async () => {
    const tenant = newTenant('kill');
    tenants.push(tenant);
    const shared = {
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      JOURNAL_LEASE_MS: '3000',
      CLUSTER_HEARTBEAT_MS: '500',
    };
    const survivor = await spawn({ ...shared, INSTANCE_ID: `survivor-${randomUUID()}` });
    const victim = await spawn({ ...shared, INSTANCE_ID: `victim-${randomUUID()}` });
    const { acknowledged } = await streamAndKill(victim, tenant, randomTarget());
    const killedAt = Date.now();
    // Bounded: lease (3 s) + a quarter lease between looks + the write. (flushAudit is not used
    // here: it would wait on the dead instance until its heartbeat is three beats old.)
    let counts = new Map<string, number>();
    while (Date.now() - killedAt < 15_000) {
      counts = await storedCounts(admin, tenant, acknowledged);
      if (counts.size === acknowledged.length) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const tookMs = Date.now() - killedAt;
    console.info(
      `[faults-sigkill] takeover: ${acknowledged.length} acknowledged by the killed instance, ` +
        `${counts.size} stored by the survivor ${tookMs} ms after the kill (lease 3000 ms)`,
    );
    expect(acknowledged.filter((id) => counts.get(id) !== 1)).toEqual([]);
    expect(tookMs).toBeGreaterThanOrEqual(2_000);
    expect(tookMs).toBeLessThan(8_000);
    const recovered = survivor.logs.find((l) => l.msg?.startsWith('journal recovered'));
    expect(recovered?.from).toMatch(/^victim-/);
    // The survivor's auditStats count what the dead instance accepted: the books are shared.
    const client = graphqlClient(`${survivor.base}/graphql`);
    const stats = (await client.gql(tenant, STATS)).auditStats;
    expect(stats.accepted).toBeGreaterThanOrEqual(acknowledged.length);
    expect(stats).toMatchObject({ pending: 0, stored: stats.accepted, identityHolds: true });
  });

  it('negative control: with JOURNAL=off the same kill loses acknowledged events', async () => {
    const tenant = newTenant('kill');
    tenants.push(tenant);
    const env = {
      JOURNAL: 'off',
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      INSTANCE_ID: `nojournal-${randomBytes(4).toString('hex')}`,
    };
    const { acknowledged } = await streamAndKill(await spawn(env), tenant, randomTarget());
    const svc = await spawn(env);
    const stats = await flushAndStats(svc, tenant);
    const counts = await storedCounts(admin, tenant, acknowledged);
    const lost = acknowledged.filter((id) => !counts.has(id)).length;
    console.info(`[faults-sigkill] JOURNAL=off: ${lost} of ${acknowledged.length} lost`);
    expect(lost).toBeGreaterThan(0);
    expect(stats.recovered).toBe(0);
    // Outside the journal a call is booked once final: what the kill lost was never counted.
    expect(stats.accepted).toBeLessThanOrEqual(acknowledged.length - lost);
    expect(stats.identityHolds).toBe(true);
  });

  it('a Redis with an append-only file restarted between acceptance and flush keeps the journal: a kill -9 after it loses nothing', async () => {
    const redis = await OwnRedis.start({ aof: true });
    try {
      const tenant = newTenant('kill');
      tenants.push(tenant);
      const env = { REDIS_URL: redis.url, INSTANCE_ID: `aof-${randomBytes(4).toString('hex')}` };
      const svc = await spawn(env);
      const client = graphqlClient(`${svc.base}/graphql`);
      const acknowledged: string[] = [];
      for (let k = 0; k < 6; k++) {
        const events = Array.from({ length: PER_CALL }, () => event({ id: randomUUID() }));
        const r = await client.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
        expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
        acknowledged.push(...events.map((e) => e.id as string));
      }
      await redis.restart();
      await svc.kill();
      const again = await spawn(env);
      const stats = await flushAndStats(again, tenant);
      const counts = await storedCounts(admin, tenant, acknowledged);
      console.info(
        `[faults-sigkill] AOF Redis restarted, then kill -9: ${counts.size} of ` +
          `${acknowledged.length} stored, recovered ${stats.recovered}`,
      );
      expect(acknowledged.filter((id) => counts.get(id) !== 1)).toEqual([]);
      expect(stats.recovered).toBe(acknowledged.length);
    } finally {
      for (const s of services.running.splice(0)) await s.kill();
      await redis.kill();
      if (redis.aofDir) rmSync(redis.aofDir, { recursive: true, force: true });
    }
  });
});
