import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import type { DeadLetterEvent } from '../src/ingest/events.js';
import { identityHolds } from '../src/ingest/stats.js';
import { countEvents, waitUntil } from './support/db.js';
import {
  balances,
  deleteRedisKeys,
  OwnRedis,
  readStats,
  STATS_FULL,
  startAppWith,
  untilNothingOutstanding,
  within,
} from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  sqlClient,
  type TestApp,
} from './support/harness.js';

/**
 * Promises 1, 3, 5 and 6 when the dead-letter queue is gone too: the database refuses the
 * tenant's writes (a trigger raises a non-data error, which is retried) and the Redis that holds
 * the dead-letter queue is killed. Accepted events must stay pending and counted, flushAudit must
 * answer FlushTimeoutError instead of hanging, /readyz must say why the service is not ready, and
 * everything must be stored once both come back. At shutdown with both down the events go to the
 * local spool, and the next start re-queues and stores them.
 *
 * The shared Redis is never touched: this file runs its own redis-server child on a loopback port.
 */

const N = 50;

describe('Redis outage during a database outage', () => {
  const prefix = `test:faultredis:${randomBytes(4).toString('hex')}:`;
  const tenants: string[] = [];
  const apps: TestApp[] = [];
  let redis: OwnRedis;
  let admin: pg.Client;

  beforeAll(async () => {
    redis = await OwnRedis.start();
    admin = await sqlClient();
  });

  afterAll(async () => {
    // Whatever a failed test left behind: Redis up and writes allowed, so the apps stop quickly.
    redis?.resume();
    if (redis && !redis.running) await redis.start();
    for (const tn of tenants) {
      await admin
        .query(`drop trigger if exists refuse_writes on "t_${tn}".audit_events`)
        .catch(() => {});
    }
    for (const t of apps) await within(t.stop(), 30_000, 'app.stop').catch(() => {});
    await admin?.end();
    await dropTenants(...tenants);
    if (redis?.running) await deleteRedisKeys(redis.url, prefix);
    await redis?.kill();
  });

  // These apps take BUFFERED calls while Redis is down, to prove what the buffers, the
  // dead-letter queue and the spool do then: that is BUFFERED without the journal (JOURNAL=off).
  // With the journal such calls are refused instead (the last test).
  const env = (n: number, extra: Record<string, string> = {}) => ({
    JOURNAL: 'off',
    REDIS_URL: redis.url,
    REDIS_KEY_PREFIX: `${prefix}${n}:`,
    DATABASE_APPLICATION_NAME: `ag-fault-${randomBytes(5).toString('hex')}`,
    WRITE_MAX_ATTEMPTS: '3',
    RETRY_BASE_MS: '50',
    RETRY_MAX_MS: '200',
    FLUSH_INTERVAL_MS: '50',
    DLQ_POLL_MS: '50',
    DLQ_RETRY_SCHEDULE_MS: '100,200,400,800',
    SHUTDOWN_TIMEOUT_MS: '3000',
    ...extra,
  });

  async function provisioned(t: TestApp): Promise<string> {
    const tenant = newTenant('rdout');
    tenants.push(tenant);
    const r = await t.gql(tenant, CREATE, { input: { events: [event()] } });
    expect(r.createAuditEvents.stored).toBe(1);
    return tenant;
  }

  // The database refuses the tenant's inserts with a non-data error (SQLSTATE 55000, retried,
  // never isolated as a bad row). A trigger rather than renaming the table away: every app that
  // starts migrates every tenant of the shared test database, and a renamed table would make
  // the start of other test files' apps fail while it lasts.
  const refuseWrites = (tenant: string) =>
    admin.query(`
      create or replace function "t_${tenant}".refuse_writes() returns trigger language plpgsql
        as $$ begin raise exception 'fault test: writes refused' using errcode = '55000'; end $$;
      create trigger refuse_writes before insert on "t_${tenant}".audit_events
        for each statement execute function "t_${tenant}".refuse_writes();`);
  const allowWrites = (tenant: string) =>
    admin.query(`drop trigger refuse_writes on "t_${tenant}".audit_events`);

  async function writeBuffered(t: TestApp, tenant: string, n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i += 25) {
      const events = Array.from({ length: Math.min(25, n - i) }, () => event({ id: randomUUID() }));
      const r = await t.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
      expect(r.createAuditEvents).toMatchObject({
        __typename: 'CreateAuditEventsPayload',
        buffered: events.length,
      });
      ids.push(...events.map((e) => e.id as string));
    }
    return ids;
  }

  const readyz = async (t: TestApp) => {
    const res = await fetch(t.url.replace(/\/graphql$/, '/readyz'));
    return { status: res.status, body: (await res.json()) as { reasons: string[] } };
  };

  it('keeps every accepted event pending and counted, times out flushAudit, reports not ready, and stores them all once both are back', async () => {
    const t = await startAppWith(env(0));
    apps.push(t);
    const tenant = await provisioned(t);
    expect((await readyz(t)).status).toBe(200);

    await refuseWrites(tenant);
    await redis.kill();
    const ids = await writeBuffered(t, tenant, N);

    // Neither the database nor the dead-letter queue takes them: the barrier says so in time,
    // as a typed answer. (Soft: what follows is checked in-process even when this fails.)
    const started = Date.now();
    const f = await t.raw(tenant, { query: FLUSH, variables: { timeoutMs: 1_500 } });
    const flushMs = Date.now() - started;
    expect.soft(f.body.errors, 'flushAudit answers a typed result, not an error').toBeUndefined();
    expect.soft(f.body.data?.flushAudit).toMatchObject({
      __typename: 'FlushTimeoutError',
      pending: N,
      lastError: expect.stringMatching(/55000/),
    });
    expect.soft(flushMs, 'flushAudit keeps to its timeoutMs').toBeLessThan(1_500 + 1_000);

    // The same barrier in-process (this instance's buffers only): deterministic whatever the
    // GraphQL answer was. It forces the write, which fails, and the dead-letter attempt too.
    await expect(t.app.services.ingest.flush(tenant as TenantId, 1_500)).rejects.toMatchObject({
      name: 'FlushTimeoutError',
      pending: N,
    });

    // Nothing lost: all N still pending and counted.
    const held = t.app.services.ingest.stats(tenant as TenantId);
    expect(held).toMatchObject({ accepted: N + 1, stored: 1, pending: N, deadLettered: 0 });
    expect(identityHolds(held)).toBe(true);
    expect(held.failedWrites).toBeGreaterThan(0);
    const shown = await t.raw(tenant, { query: STATS_FULL });
    expect.soft(shown.body.errors, 'auditStats answers while Redis is down').toBeUndefined();
    // The books are in Redis: unreadable now, so the answer is the instance's own counters, and
    // says so.
    expect.soft(shown.body.data?.auditStats).toMatchObject({
      accepted: N + 1,
      stored: 1,
      pending: N,
      deadLettered: 0,
      identityHolds: true,
      fromBooks: false,
    });

    const notReady = await readyz(t);
    expect(notReady.status).toBe(503);
    expect(notReady.body.reasons.join('; ')).toMatch(/dead-letter queue/);

    // Both come back: Redis on the same port (empty: it keeps nothing), then the database.
    await redis.start();
    await allowWrites(tenant);
    const back = await t.gql(tenant, FLUSH, { timeoutMs: 20_000 });
    expect(back.flushAudit.__typename).toBe('FlushAuditPayload');
    expect(back.flushAudit.stored + back.flushAudit.deadLettered).toBe(N);
    await untilNothingOutstanding(t.app, tenant, 20_000);

    expect(await countEvents(admin, tenant)).toBe(N + 1);
    const { rows } = await admin.query<{ n: number }>(
      `select count(distinct id)::int as n from "t_${tenant}".audit_events where id = any($1::uuid[])`,
      [ids],
    );
    expect(rows[0]!.n).toBe(N);
    // The books again, as far as Redis kept them: this Redis came back empty, so the event
    // booked before it went is gone with its data; the N, booked once final (tried until Redis
    // took them), are there.
    await waitUntil(
      'the N booked once Redis is back',
      async () => (await readStats(t, tenant)).accepted,
      (n) => n === N,
      10_000,
      100,
    );
    const end = await readStats(t, tenant);
    expect(end).toMatchObject({
      fromBooks: true,
      accepted: N,
      stored: N,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      discarded: 0,
      identityHolds: true,
    });
    expect(balances(end)).toBe(true);

    // Readiness follows: the retry worker sees Redis again on its next round (bounded wait).
    await waitUntil(
      '/readyz 200 after Redis is back',
      async () => (await readyz(t)).status,
      (s) => s === 200,
      10_000,
      100,
    );
  });

  it('app.stop() with the database and Redis both down spools the pending events; the next start re-queues and stores them', async () => {
    if (!redis.running) await redis.start();
    const dlqDir = mkdtempSync(join(tmpdir(), 'auditgraph-dlq-'));
    const shared = { DLQ_DIR: dlqDir };
    const a = await startAppWith(env(1, shared));
    apps.push(a);
    const tenant = await provisioned(a);

    await refuseWrites(tenant);
    await redis.kill();
    const ids = await writeBuffered(a, tenant, N);
    expect(a.app.services.ingest.stats(tenant as TenantId)).toMatchObject({
      accepted: N + 1,
      pending: N,
    });

    const started = Date.now();
    await within(a.stop(), 30_000, 'app.stop() with Redis and the database down');
    const stopMs = Date.now() - started;
    expect(a.app.services.ingest.stats(tenant as TenantId)).toMatchObject({
      accepted: N + 1,
      stored: 1,
      pending: 0,
      deadLettered: N,
    });
    // (How long the stop took is reported, not asserted: with Redis refusing connections it
    // depends on ioredis' reconnect timing. The SIGSTOP test below holds the stop to its deadline.)

    // The spool holds every pending event, as files under DLQ_DIR/spool/<tenant>/.
    const spoolDir = join(dlqDir, 'spool', tenant);
    const files = readdirSync(spoolDir, { withFileTypes: true }).filter((d) =>
      d.name.endsWith('.json'),
    );
    const spooled = files.flatMap(
      (d) =>
        (JSON.parse(readFileSync(join(spoolDir, d.name), 'utf8')) as { records: { id: string }[] })
          .records,
    );
    console.info(
      `[faults-redis] app.stop() took ${stopMs} ms; ${files.length} spool file(s) with ${spooled.length} events`,
    );
    expect(spooled.map((r) => r.id).sort()).toEqual([...ids].sort());

    // Both back; a new instance on the same DLQ_DIR and Redis re-queues the spool and stores it.
    await redis.start();
    await allowWrites(tenant);
    const recovered: DeadLetterEvent[] = [];
    let allRecovered!: () => void;
    const done = new Promise<void>((resolve) => {
      allRecovered = resolve;
    });
    const b = await startAppWith(env(1, shared), (app) => {
      app.graph.events.onDeadLetter((e) => {
        if (e.tenant !== tenant || e.kind !== 'RECOVERED') return;
        recovered.push(e);
        if (recovered.reduce((n, r) => n + r.events, 0) >= N) setImmediate(allRecovered);
      });
    });
    apps.push(b);
    await within(done, 20_000, `RECOVERED for ${N} spooled events`);

    expect(await countEvents(admin, tenant)).toBe(N + 1);
    const { rows } = await admin.query<{ n: number }>(
      `select count(distinct id)::int as n from "t_${tenant}".audit_events where id = any($1::uuid[])`,
      [ids],
    );
    expect(rows[0]!.n).toBe(N);
    expect(readdirSync(spoolDir).filter((f) => f.endsWith('.json'))).toEqual([]);
    const s = await readStats(b, tenant);
    expect(s).toMatchObject({
      accepted: N,
      stored: N,
      replayed: N,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      identityHolds: true,
    });
  });
  it('createAuditEvents answers while Redis does not answer (SIGSTOP): the shared write rate limit must not wait on it', async () => {
    if (!redis.running) await redis.start();
    const t = await startAppWith(env(3));
    apps.push(t);
    const tenant = await provisioned(t);
    redis.pause();
    try {
      const events = [event({ id: randomUUID() })];
      const r = await within(
        t.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } }),
        3_000,
        'createAuditEvents with Redis not answering',
      );
      expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    } finally {
      redis.resume();
    }
  });

  it('a Redis that stops answering (SIGSTOP, a partition without resets) neither hangs flushAudit nor app.stop(), and loses nothing', async () => {
    if (!redis.running) await redis.start();
    const dlqDir = mkdtempSync(join(tmpdir(), 'auditgraph-dlq-'));
    // The write rate limit is off here so that this test sees past it (the test above covers it).
    const t = await startAppWith(env(2, { DLQ_DIR: dlqDir, RATE_LIMIT_EVENTS_PER_SECOND: '0' }));
    apps.push(t);
    const tenant = await provisioned(t);
    await refuseWrites(tenant);
    redis.pause();
    try {
      // Accepting writes needs no Redis: the calls answer (every step here is bounded).
      const ids = await within(
        writeBuffered(t, tenant, N),
        3_000,
        'createAuditEvents (BUFFERED) with Redis not answering',
      );

      // The barrier keeps to its timeoutMs even when Redis swallows every command.
      const f = await within(
        t.raw(tenant, { query: FLUSH, variables: { timeoutMs: 1_000 } }),
        3_000,
        'flushAudit(timeoutMs: 1000) with Redis not answering',
      ).catch((err: Error) => ({ status: 0, body: { errors: [err.message] } }));
      expect.soft(f.body.errors, 'flushAudit answers, in time, a typed result').toBeUndefined();
      expect.soft(f.body.data?.flushAudit).toMatchObject({
        __typename: 'FlushTimeoutError',
        pending: N,
      });

      // Readiness notices that the dead-letter queue does not answer (bounded wait).
      const ready = await waitUntil(
        '/readyz 503 with Redis not answering',
        async () => (await readyz(t)).status,
        (s) => s === 503,
        3_000,
        100,
      ).catch(() => 200);
      expect.soft(ready, '/readyz while Redis does not answer').toBe(503);

      const held = t.app.services.ingest.stats(tenant as TenantId);
      expect(held).toMatchObject({ accepted: N + 1, stored: 1, pending: N });

      // Shutdown keeps to SHUTDOWN_TIMEOUT_MS (3 s) and spools what neither store took.
      const started = Date.now();
      const stopped = await within(t.stop(), 6_000, 'app.stop() with Redis not answering').then(
        () => true,
        () => false,
      );
      const stopMs = Date.now() - started;
      console.info(
        `[faults-redis] SIGSTOP: app.stop() ${stopped ? `took ${stopMs} ms` : 'did not finish in 6 s'}`,
      );
      expect(stopped, 'app.stop() finishes with Redis not answering').toBe(true);
      const spoolDir = join(dlqDir, 'spool', tenant);
      const spooled = existsSync(spoolDir)
        ? readdirSync(spoolDir)
            .filter((n) => n.endsWith('.json'))
            .flatMap(
              (n) =>
                (
                  JSON.parse(readFileSync(join(spoolDir, n), 'utf8')) as {
                    records: { id: string }[];
                  }
                ).records,
            )
            .map((r) => r.id)
        : [];
      expect(spooled.sort()).toEqual([...ids].sort());
    } finally {
      redis.resume();
    }
  });

  it('with the journal, Redis down refuses BUFFERED calls whole (JournalUnavailableError) and still stores COMMITTED ones', async () => {
    if (!redis.running) await redis.start();
    const t = await startAppWith(env(4, { JOURNAL: 'on' }));
    apps.push(t);
    const tenant = await provisioned(t);
    const before = (await readyz(t)).body as unknown as { acks: Record<string, boolean> };
    expect(before.acks).toEqual({ COMMITTED: true, BUFFERED: true });
    await redis.kill();
    const refused = [event({ id: randomUUID() }), event({ id: randomUUID() })];
    const r = await t.gql(tenant, CREATE, { input: { events: refused, ack: 'BUFFERED' } });
    expect(r.createAuditEvents).toMatchObject({
      __typename: 'JournalUnavailableError',
      retryable: true,
    });
    const committed = [event({ id: randomUUID() })];
    const c = await t.gql(tenant, CREATE, { input: { events: committed, ack: 'COMMITTED' } });
    expect(c.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    expect(c.createAuditEvents.events.map((e: { status: string }) => e.status)).toEqual(['STORED']);
    const during = (await readyz(t)).body as unknown as {
      acks: Record<string, boolean>;
      journal: { available: boolean };
    };
    expect(during.acks).toEqual({ COMMITTED: true, BUFFERED: false });
    expect(during.journal.available).toBe(false);
    // Nothing of the refused call was accepted, now or later.
    const stats = await readStats(t, tenant);
    expect(stats).toMatchObject({ accepted: 2, stored: 2, pending: 0, fromBooks: false });
    const { rows } = await admin.query(
      `select 1 from "t_${tenant}".audit_events where id = any($1::uuid[])`,
      [refused.map((e) => e.id)],
    );
    expect(rows).toEqual([]);
    // Redis back: BUFFERED is taken again.
    await redis.start();
    await waitUntil(
      'a BUFFERED call taken again',
      async () =>
        (
          await t.gql(tenant, CREATE, {
            input: { events: [event({ id: randomUUID() })], ack: 'BUFFERED' },
          })
        ).createAuditEvents.__typename as string,
      (typename) => typename === 'CreateAuditEventsPayload',
      10_000,
      200,
    );
  });
});
