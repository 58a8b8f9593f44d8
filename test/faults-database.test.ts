import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { countEvents, waitUntil } from './support/db.js';
import {
  balances,
  deleteRedisKeys,
  type FullStats,
  readStats,
  type ServiceProcess,
  spawnService,
  untilNothingOutstanding,
  watchLedger,
  within,
} from './support/faults.js';
import {
  CREATE,
  databaseUrl,
  dropTenants,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { type FaultProxy, startFaultProxy } from './support/pg-fault-proxy.js';

/**
 * Promises 1, 2 and 5 under database faults.
 *
 * - Outage: while events stream in, the service's own connections (found by application_name)
 *   are terminated every 50–100 ms for 3.5 s. Afterwards every accepted event is stored exactly
 *   once, nothing rejected is stored, nothing is counted as a duplicate by mistake, and the
 *   accounting identity held in every auditStats sample taken meanwhile.
 * - Lost COMMIT answers: the cutter above hits a COMMIT in flight only by luck, so a loopback
 *   proxy makes it certain: the COMMIT happens, its answer never arrives. The batch ledger must
 *   recognise the retry (or the dead letter's replay) as already done: stored, not duplicates.
 * - A connection that dies as it opens (its "ready" and its termination arrive in one read)
 *   must cost a retry, not the process: the service runs as a child process for this one.
 */

/** Every stored row of these ids, grouped: ids stored more than once, and how many are present. */
async function rowsOf(c: pg.Client, tenant: string, ids: string[]) {
  const { rows } = await c.query<{ id: string; n: number }>(
    `select id::text, count(*)::int as n from "t_${tenant}".audit_events
      where id = any($1::uuid[]) group by id`,
    [ids],
  );
  return {
    present: rows.length,
    storedTwice: rows.filter((r) => r.n !== 1).map((r) => r.id),
  };
}

describe('Database outage', () => {
  const prefix = `test:faultdb:${randomBytes(4).toString('hex')}:`;
  const tenants: string[] = [];
  const apps: TestApp[] = [];
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await sqlClient();
  });

  afterAll(async () => {
    for (const t of apps) await t.stop();
    await admin?.end();
    await dropTenants(...tenants);
    await deleteRedisKeys(inject('redisUrl'), prefix);
  });

  it('stores every accepted event exactly once while its connections are cut every 50–100 ms', async () => {
    const tenant = newTenant('dbout');
    tenants.push(tenant);
    const applicationName = `ag-fault-${randomBytes(5).toString('hex')}`;
    const t = await startApp({
      DATABASE_APPLICATION_NAME: applicationName,
      DATABASE_POOL_SIZE: '4',
      WRITER_CONCURRENCY: '4',
      WRITE_MAX_ATTEMPTS: '50',
      RETRY_BASE_MS: '20',
      RETRY_MAX_MS: '200',
      BATCH_SIZE: '100',
      FLUSH_INTERVAL_MS: '50',
      COMMIT_TIMEOUT_MS: '2000',
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: `${prefix}0:`,
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '100,200,400,800,1600,3200,6400',
      FLUSH_MAX_TIMEOUT_MS: '60000',
    });
    apps.push(t);
    const ledger = watchLedger(t.app);

    // Provision the tenant (and its partitions) before the outage.
    const first = event({ id: randomUUID() });
    const provisioned = await t.gql(tenant, CREATE, { input: { events: [first] } });
    expect(provisioned.createAuditEvents.stored).toBe(1);

    const accepted: string[] = [first.id as string];
    const rejected: string[] = [];
    const answers = new Map<string, number>();
    const unexpected: string[] = [];
    const wrongStatuses: string[] = [];

    // Stats sampled every 100 ms for the whole run, identity checked in each sample.
    const samples: FullStats[] = [];
    let sampling = true;
    let cutting = false;
    let samplesDuringCuts = 0;
    const sampler = (async () => {
      while (sampling && samples.length < 1_000) {
        const during = cutting;
        samples.push(await readStats(t, tenant));
        if (during && cutting) samplesDuringCuts++;
        await delay(100);
      }
    })();

    // The cutter: terminate the service's connections (and only those) every 50–100 ms.
    const cut = { rounds: 0, terminated: 0, inCommit: 0 };
    const cutFor = async (ms: number) => {
      cutting = true;
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const { rows } = await admin.query<{ ok: boolean; commit: boolean }>(
          `select pg_terminate_backend(pid) as ok,
                  (state = 'active' and query ilike 'commit%') as commit
             from pg_stat_activity where application_name = $1`,
          [applicationName],
        );
        cut.rounds++;
        cut.terminated += rows.filter((r) => r.ok).length;
        cut.inCommit += rows.filter((r) => r.ok && r.commit).length;
        await delay(50 + Math.random() * 50);
      }
      cutting = false;
    };

    // Four writers for 5 s with client-chosen ids: two send BUFFERED calls of 40 events every
    // 100 ms, two send COMMITTED calls of 20 events (each waits for its answer, at most one per
    // 125 ms). About 5,000 events.
    const WRITE_MS = 5_000;
    const started = Date.now();
    const writer = async (w: number) => {
      const ack = w < 2 ? 'BUFFERED' : 'COMMITTED';
      const [size, every] = ack === 'BUFFERED' ? [40, 100] : [20, 125];
      for (let k = 0; Date.now() - started < WRITE_MS; k++) {
        const due = started + k * every - Date.now();
        if (due > 0) await delay(due);
        const events = Array.from({ length: size }, () =>
          event({ id: randomUUID(), correlationId: `w${w}` }),
        );
        const ids = events.map((e) => e.id as string);
        const { body } = await t.raw(tenant, {
          query: CREATE,
          variables: { input: { events, ack } },
        });
        const r = body?.data?.createAuditEvents;
        if (!r) {
          unexpected.push(JSON.stringify(body).slice(0, 300));
          continue;
        }
        const answer = `${ack} ${r.__typename}`;
        answers.set(answer, (answers.get(answer) ?? 0) + 1);
        if (r.__typename === 'CreateAuditEventsPayload' || r.__typename === 'CommitTimeoutError') {
          accepted.push(...ids);
          for (const e of r.events as { id: string; status: string }[]) {
            const ok =
              ack === 'BUFFERED'
                ? e.status === 'BUFFERED'
                : r.__typename === 'CommitTimeoutError' ||
                  e.status === 'STORED' ||
                  e.status === 'DEAD_LETTERED';
            if (!ok) wrongStatuses.push(`${answer} ${e.id} ${e.status}`);
          }
        } else {
          rejected.push(...ids);
        }
      }
    };

    const writing = Promise.all([0, 1, 2, 3].map(writer));
    await delay(500);
    await cutFor(3_500); // from 0.5 s to about 4 s; the last second of writes meets a healthy database
    await writing;

    // The outage is over: the barrier, then whatever went to the dead-letter queue comes back.
    const f = await t.gql(tenant, FLUSH, { timeoutMs: 30_000 });
    expect(f.flushAudit.__typename).toBe('FlushAuditPayload');
    await untilNothingOutstanding(t.app, tenant, 30_000);
    sampling = false;
    await sampler;
    const end = await readStats(t, tenant);
    samples.push(end);

    const distinct = new Set(accepted);
    const storedRows = await countEvents(admin, tenant);
    const rows = await rowsOf(admin, tenant, [...distinct]);
    const rejectedRows = rejected.length ? await rowsOf(admin, tenant, rejected) : { present: 0 };

    console.info(
      `[faults-database] events accepted ${distinct.size}, rejected ${rejected.length}; ` +
        `answers ${JSON.stringify(Object.fromEntries(answers))}; ` +
        `cutter rounds ${cut.rounds}, connections terminated ${cut.terminated} ` +
        `(${cut.inCommit} while running COMMIT); failedWrites ${end.failedWrites}; ` +
        `batches recognised by the ledger ${ledger.recognised}; replayed from the DLQ ${end.replayed}; ` +
        `stats samples ${samples.length} (${samplesDuringCuts} during the cuts); flush ${JSON.stringify(f.flushAudit)}`,
    );

    // The fault really happened, and the writes really were retried.
    expect(cut.terminated).toBeGreaterThan(5);
    expect(end.failedWrites).toBeGreaterThan(0);
    // No call was answered outside the contract (no top-level error, no wrong status).
    expect(unexpected).toEqual([]);
    expect(wrongStatuses).toEqual([]);
    expect(distinct.size).toBe(accepted.length);
    expect(distinct.size).toBeGreaterThan(500);

    // Every accepted event stored exactly once; nothing rejected was stored.
    expect(storedRows).toBe(distinct.size);
    expect(rows.present).toBe(distinct.size);
    expect(rows.storedTwice).toEqual([]);
    expect(rejectedRows.present).toBe(0);

    // The accounting: all accounted for, nothing counted as a duplicate by mistake.
    expect(end).toMatchObject({
      accepted: distinct.size,
      stored: distinct.size,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      discarded: 0,
      identityHolds: true,
    });
    const broken = samples.filter((s) => !s.identityHolds || !balances(s));
    expect(broken).toEqual([]);
    expect(samplesDuringCuts).toBeGreaterThanOrEqual(5);
  });
});

describe('a COMMIT whose answer is lost (the outcome is unknown to the service)', () => {
  const prefix = `test:faultdbc:${randomBytes(4).toString('hex')}:`;
  const tenants: string[] = [];
  let proxy: FaultProxy;
  let admin: pg.Client;
  let t: TestApp;

  beforeAll(async () => {
    admin = await sqlClient();
    proxy = await startFaultProxy();
    t = await startApp({
      DATABASE_URL: proxy.url(databaseUrl()),
      DATABASE_APPLICATION_NAME: `ag-fault-${randomBytes(5).toString('hex')}`,
      RETRY_BASE_MS: '20',
      RETRY_MAX_MS: '100',
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '50,100,200,400',
    });
  });

  afterAll(async () => {
    await t?.stop();
    await proxy?.close();
    await admin?.end();
    await dropTenants(...tenants);
    await deleteRedisKeys(inject('redisUrl'), prefix);
  });

  async function provisioned(): Promise<string> {
    const tenant = newTenant('lost');
    tenants.push(tenant);
    const r = await t.gql(tenant, CREATE, { input: { events: [event()] } });
    expect(r.createAuditEvents.stored).toBe(1);
    return tenant;
  }

  it('a batch retried after its COMMIT answer was lost is recognised by the ledger: STORED, not DUPLICATE', async () => {
    const tenant = await provisioned();
    const ledger = watchLedger(t.app);
    const lostBefore = proxy.lost;
    proxy.loseNextCommitAnswers(1);
    const events = Array.from({ length: 10 }, () => event({ id: randomUUID() }));
    const r = await t.gql(tenant, CREATE, { input: { events } });
    expect(proxy.lost - lostBefore).toBe(1);
    expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    expect(r.createAuditEvents.events.map((e: { status: string }) => e.status)).toEqual(
      Array(10).fill('STORED'),
    );
    expect(ledger.recognised).toBeGreaterThanOrEqual(1);
    expect(await countEvents(admin, tenant)).toBe(11);
    expect(await readStats(t, tenant)).toMatchObject({
      accepted: 11,
      stored: 11,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      failedWrites: 1,
      identityHolds: true,
    });
  });

  it('a batch dead-lettered by flushAudit after its COMMIT answer was lost is recognised by the ledger when replayed, not counted as duplicates', async () => {
    const tenant = await provisioned();
    const lostBefore = proxy.lost;
    proxy.loseNextCommitAnswers(1);
    const events = Array.from({ length: 10 }, () => event({ id: randomUUID() }));
    const r = await t.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
    expect(r.createAuditEvents.buffered).toBe(10);
    // Under a waiting flushAudit a failed write is dead-lettered at once; its rows did commit.
    const f = await t.gql(tenant, FLUSH, { timeoutMs: 20_000 });
    expect(proxy.lost - lostBefore).toBe(1);
    expect(f.flushAudit).toMatchObject({ __typename: 'FlushAuditPayload', waitedFor: 10 });
    await untilNothingOutstanding(t.app, tenant, 20_000);

    expect(await countEvents(admin, tenant)).toBe(11);
    const s = await readStats(t, tenant);
    expect(s.identityHolds).toBe(true);
    // The events were stored by the first attempt; the replay must find that batch in the
    // ledger, so they end as stored, never as duplicates of themselves.
    expect(s).toMatchObject({ accepted: 11, stored: 11, duplicates: 0, deadLettered: 0 });
  });
});

describe('a connection that dies as it opens', () => {
  const tenant = newTenant('dies');
  let proxy: FaultProxy;
  let admin: pg.Client;
  let svc: ServiceProcess | undefined;

  beforeAll(async () => {
    admin = await sqlClient();
    proxy = await startFaultProxy();
  });

  afterAll(async () => {
    await svc?.kill();
    await proxy?.close();
    await admin?.end();
    await dropTenants(tenant);
  });

  it('does not take the service process down: the write is retried on a new connection and stored', async () => {
    const applicationName = `ag-fault-${randomBytes(5).toString('hex')}`;
    svc = await spawnService({
      DATABASE_URL: proxy.url(databaseUrl()),
      DATABASE_APPLICATION_NAME: applicationName,
      DATABASE_POOL_SIZE: '2',
      RETRY_BASE_MS: '20',
      RETRY_MAX_MS: '100',
    });
    await svc.ready();
    const client = graphqlClient(`${svc.base}/graphql`);
    expect(
      (await client.gql(tenant, CREATE, { input: { events: [event()] } })).createAuditEvents,
    ).toMatchObject({ stored: 1 });

    // Empty the pool (its idle connections are ended by the server), so the next write needs a
    // new connection: that one reports "ready" and "terminated" in the same read.
    const { rows } = await admin.query<{ ok: boolean }>(
      'select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = $1',
      [applicationName],
    );
    expect(rows.filter((r) => r.ok).length).toBeGreaterThan(0);
    await waitUntil(
      'the service has no connection left',
      async () =>
        (
          await admin.query<{ n: number }>(
            'select count(*)::int as n from pg_stat_activity where application_name = $1',
            [applicationName],
          )
        ).rows[0]!.n,
      (n) => n === 0,
    );
    proxy.killNextConnectionsAfterStartup(1);

    const events = Array.from({ length: 5 }, () => event({ id: randomUUID() }));
    const answer = await Promise.race([
      client.raw(tenant, { query: CREATE, variables: { input: { events } } }).then(
        (r) => r.body?.data?.createAuditEvents,
        (err: Error) => ({ __typename: `no answer: ${err.message}` }),
      ),
      svc.exited.then((code) => ({ __typename: `process exited (${code})` })),
    ]);
    expect(proxy.killedAfterStartup).toBe(1);
    expect(answer.__typename, svc.stderr()).toBe('CreateAuditEventsPayload');
    expect(answer.stored).toBe(5);
    expect(svc.child.exitCode).toBeNull();
    expect(await countEvents(admin, tenant)).toBe(6);

    svc.child.kill('SIGTERM');
    expect(await within(svc.exited, 20_000, 'exit after SIGTERM')).toBe(0);
  });
});
