import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDatabase, type Database } from '../src/db/client.js';
import { addMonths, monthStart, PartitionManager } from '../src/db/partitions.js';
import { TenantDirectory } from '../src/db/tenant-directory.js';
import { type AuditEventInput, validateEvents } from '../src/domain/event.js';
import type { TenantId } from '../src/domain/tenant.js';
import { BatchWriter } from '../src/ingest/batch-writer.js';
import { createLogger } from '../src/logger.js';
import { AuditEventReader } from '../src/query/audit-event-reader.js';
import { create, stats } from './support/db.js';
import {
  databaseUrl,
  dropTenants,
  event,
  newTenant,
  PAGE,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * A tenant's partitions are a resource of the whole database server: each is a table with its
 * indexes in the catalog, and a statement that cannot prune locks every one of them (and each
 * of their indexes) in the lock table that all sessions of the server share — past its size,
 * every session gets "out of shared memory". So: retention has a ceiling (MAX_RETENTION_DAYS),
 * which bounds how many months writes can spread over; a write that would bring more new months
 * than MAX_NEW_PARTITIONS_PER_CALL, or take the tenant past MAX_PARTITIONS_PER_TENANT, is
 * refused whole before anything is accepted; and reads walk months in windows of
 * READ_WINDOW_PARTITIONS, so one statement's locks do not grow with the tenant's partitions.
 * Everything is checked in the catalog and in pg_locks, not in what the service says.
 */

const DAY = 86_400_000;

const SET_RETENTION = `mutation Set($days: Int) {
  setRetention(input: { days: $days }) {
    __typename
    ... on SetRetentionPayload { retention { days max tenantDays source } }
    ... on ValidationError { message issues { field message } }
  }
}`;

const SET_REFUSED = `mutation Set($days: Int) {
  setRetention(input: { days: $days }) {
    __typename
    ... on ValidationError { issues { field message } }
  }
}`;

/** setRetention selecting only what the schema has always had (setting up a test). */
const SET_DAYS = `mutation Set($days: Int) { setRetention(input: { days: $days }) { __typename } }`;

const RETENTION = `query { retention { __typename ... on Retention { days max tenantDays source } } }`;

/** The tenant schema's relations (pg_class) and attached partitions (pg_inherits). */
async function catalogOf(c: pg.Client, tenant: string) {
  const { rows } = await c.query<{ relations: number; partitions: number }>(
    `select (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1) as relations,
            (select count(*)::int from pg_inherits where inhparent = to_regclass($2)) as partitions`,
    [`t_${tenant}`, `"t_${tenant}".audit_events`],
  );
  return rows[0]!;
}

/** A moment in the middle of the UTC month `offset` months from now's. */
function midMonth(offset: number, now = new Date()): string {
  return new Date(
    addMonths(monthStart(now), offset).getTime() + 10 * DAY + 3_600_000,
  ).toISOString();
}

describe('partition and retention ceilings', () => {
  let t: TestApp;
  let c: pg.Client;
  const tenants: string[] = [];
  const tenantFor = (p: string) => {
    const id = newTenant(p);
    tenants.push(id);
    return id;
  };

  beforeAll(async () => {
    t = await startApp();
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(...tenants);
  });

  it('refuses setRetention above MAX_RETENTION_DAYS, and writes older than it', async () => {
    const tenant = tenantFor('plret');
    await t.app.services.tenants.ensure(tenant as TenantId, true);
    for (const days of [36_500, 3_661]) {
      const r = (await t.gql(tenant, SET_REFUSED, { days })).setRetention;
      expect(r.__typename, JSON.stringify(r)).toBe('ValidationError');
      expect(r.issues[0].field).toBe('input.days');
      expect(r.issues[0].message).toContain('3660');
    }
    expect((await t.gql(tenant, RETENTION)).retention).toEqual({
      __typename: 'Retention',
      days: 400,
      max: 3660,
      tenantDays: null,
      source: 'DEFAULT',
    });
    const ok = (await t.gql(tenant, SET_RETENTION, { days: 3660 })).setRetention;
    expect(ok.retention).toEqual({ days: 3660, max: 3660, tenantDays: 3660, source: 'TENANT' });

    // A setting made before the ceiling existed is kept (retention drops by it), but writes
    // stay within the ceiling: an event 4,000 days old is refused, nothing accepted.
    await c.query('update auditgraph.tenants set retention_days = 36500 where tenant_id = $1', [
      tenant,
    ]);
    await t.app.services.retention.get(tenant as TenantId); // re-read at once, not in 30 s
    const before = await catalogOf(c, tenant);
    const accepted = (await stats(t, tenant)).accepted;
    const old = new Date(Date.now() - 4_000 * DAY).toISOString();
    const r = await create(t, tenant, [event({ id: randomUUID(), occurredAt: old })]);
    expect(r.__typename).toBe('ValidationError');
    expect(r.issues[0]).toMatchObject({ index: 0, field: 'occurredAt' });
    expect(r.issues[0].message).toContain('3660 days');
    expect(await catalogOf(c, tenant)).toEqual(before);
    expect((await stats(t, tenant)).accepted).toBe(accepted);
  });

  it('refuses, whole, a call with events in more new months than MAX_NEW_PARTITIONS_PER_CALL', async () => {
    const tenant = tenantFor('plcall');
    await t.app.services.tenants.ensure(tenant as TenantId, true);
    expect((await t.gql(tenant, SET_DAYS, { days: 3660 })).setRetention.__typename).toBe(
      'SetRetentionPayload',
    );
    const before = await catalogOf(c, tenant);
    const accepted = (await stats(t, tenant)).accepted;

    // One event in the current month (it has a partition) and 25 in past months that have none.
    const events = [
      event({ id: randomUUID() }),
      ...Array.from({ length: 25 }, (_, i) =>
        event({ id: randomUUID(), occurredAt: midMonth(-1 - i * 3) }),
      ),
    ];
    const started = performance.now();
    const r = await create(t, tenant, events);
    const ms = performance.now() - started;
    expect(r.__typename, JSON.stringify(r).slice(0, 500)).toBe('ValidationError');
    expect(r.retryable).toBe(false);
    // Each new month is named by its first event.
    expect(
      r.issues.map((i: { index: number }) => i.index).sort((a: number, b: number) => a - b),
    ).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(r.issues[0].field).toBe('occurredAt');
    expect(r.issues[0].message).toContain('MAX_NEW_PARTITIONS_PER_CALL');
    // Nothing accepted, not one partition (nor any other relation) created.
    expect(await catalogOf(c, tenant)).toEqual(before);
    expect((await stats(t, tenant)).accepted).toBe(accepted);
    console.log(`a call of 26 events in 25 new months refused in ${ms.toFixed(1)} ms`);

    // 24 new months is the limit: that call is stored.
    const fits = await create(t, tenant, events.slice(0, 25));
    expect(fits.__typename).toBe('CreateAuditEventsPayload');
    expect(fits.stored).toBe(25);
    expect((await catalogOf(c, tenant)).partitions).toBe(before.partitions + 24);
  });

  describe('a tenant holding nearly MAX_PARTITIONS_PER_TENANT partitions', () => {
    const tenant = newTenant('plmany');
    const schema = `t_${tenant}`;
    let helper: PartitionManager;
    let db1: Database;
    const log = createLogger({ logLevel: 'silent' });

    beforeAll(async () => {
      tenants.push(tenant);
      await t.app.services.tenants.ensure(tenant as TenantId, true);
      expect((await t.gql(tenant, SET_DAYS, { days: 3660 })).setRetention.__typename).toBe(
        'SetRetentionPayload',
      );
      // 154 old months (2000-01 onwards: kept past retention, as legal holds keep months),
      // created directly, beside the 4 months of the present: 158 of the 160 allowed.
      helper = new PartitionManager(t.app.db, log);
      const old = Array.from({ length: 154 }, (_, i) => new Date(Date.UTC(2000, i, 15)));
      await helper.ensureFor(schema, old);
      expect((await catalogOf(c, tenant)).partitions).toBe(158);
      // 60 events of the present, the newest first page's worth and more.
      const r = await create(
        t,
        tenant,
        Array.from({ length: 60 }, (_, i) =>
          event({ id: randomUUID(), occurredAt: new Date(Date.now() - i * 1000).toISOString() }),
        ),
      );
      expect(r.stored).toBe(60);
      // One connection, so that a transaction opened with one statement holds for the next.
      db1 = createDatabase(
        { kind: 'pg', url: databaseUrl(), poolSize: 1, applicationName: 'partition-limits-test' },
        log,
      );
    });
    afterAll(async () => {
      await db1?.close();
    });

    it('refuses, whole, a write that would take it past the ceiling', async () => {
      const before = await catalogOf(c, tenant);
      const accepted = (await stats(t, tenant)).accepted;
      const three = [-2, -5, -9].map((m) => event({ id: randomUUID(), occurredAt: midMonth(m) }));
      const r = await create(t, tenant, three);
      expect(r.__typename, JSON.stringify(r).slice(0, 500)).toBe('ValidationError');
      expect(r.issues).toHaveLength(3);
      expect(r.issues[0].message).toContain('MAX_PARTITIONS_PER_TENANT');
      expect(await catalogOf(c, tenant)).toEqual(before);
      expect((await stats(t, tenant)).accepted).toBe(accepted);

      // Two fit exactly.
      const two = await create(t, tenant, three.slice(0, 2));
      expect(two.stored).toBe(2);
      expect((await catalogOf(c, tenant)).partitions).toBe(160);

      // A write that got past admission elsewhere (another instance, a dead letter replayed)
      // meets the ceiling again where partitions are created, under the tenant's lock: its
      // rows are refused (for the dead-letter queue), no partition is created.
      const limited = new PartitionManager(t.app.db, log, { limits: { maxPerTenant: 160 } });
      const writer = new BatchWriter(t.app.db, limited, log, 'partition-limits-test');
      const [rec] = validateEvents(
        [{ ...three[2], occurredAt: new Date(midMonth(-9)) } as AuditEventInput],
        {
          now: new Date(),
          retentionDays: 3660,
          maxFutureSkewMs: 300_000,
          maxEvents: 10,
        },
      );
      const w = await writer.write(schema, randomUUID(), [rec!]);
      expect(w.statuses).toEqual(['REJECTED']);
      expect(w.rejections.get(0)?.message).toContain('MAX_PARTITIONS_PER_TENANT');
      expect((await catalogOf(c, tenant)).partitions).toBe(160);
    });

    it('reads the unfiltered first page with locks on at most one window of partitions', async () => {
      const partitions = (await catalogOf(c, tenant)).partitions;
      expect(partitions).toBeGreaterThanOrEqual(158);
      const reader = new AuditEventReader(db1, { windowPartitions: 6 });
      await db1.query('begin');
      let locked: { partitions: number; relations: number };
      let page: Awaited<ReturnType<AuditEventReader['page']>>;
      try {
        page = await reader.page({
          schema,
          filter: {},
          order: 'OCCURRED_AT_DESC',
          direction: 'forward',
          limit: 50,
        });
        // Locks of this transaction (held to its end): every statement of the page.
        [locked] = (await db1.query(
          `select count(distinct l.relation) filter (where i.inhrelid is not null)::int as partitions,
                  count(distinct l.relation)::int as relations
             from pg_locks l
             join pg_class c on c.oid = l.relation
             join pg_namespace n on n.oid = c.relnamespace
             left join pg_inherits i on i.inhrelid = l.relation and i.inhparent = to_regclass($2)
            where l.pid = pg_backend_pid() and n.nspname = $1`,
          [schema, `"${schema}".audit_events`],
        )) as [{ partitions: number; relations: number }];
      } finally {
        await db1.query('rollback');
      }
      expect(page.rows).toHaveLength(50);
      expect(page.hasNextPage).toBe(true);
      console.log(
        `first page over ${partitions} partitions: ${locked.partitions} partitions and ` +
          `${locked.relations} relations of the tenant locked`,
      );
      expect(locked.partitions).toBeLessThanOrEqual(6);
      expect(locked.relations).toBeLessThan(partitions);
    });

    it('counts the tenant’s events a window of months per statement', async () => {
      // Each statement in a transaction of its own, its locks counted before it commits.
      let most = 0;
      let statements = 0;
      const measured = {
        query: async <R>(text: string, params: readonly unknown[] = []) => {
          await db1.query('begin');
          try {
            const rows = await db1.query<R>(text, params);
            const [l] = await db1.query<{ n: number }>(
              `select count(*)::int as n from pg_locks l
                 join pg_inherits i on i.inhrelid = l.relation
                where l.pid = pg_backend_pid() and i.inhparent = to_regclass($1)`,
              [`"${schema}".audit_events`],
            );
            most = Math.max(most, l!.n);
            statements++;
            return rows;
          } finally {
            await db1.query('commit');
          }
        },
      } as unknown as Database;
      const usage = await new TenantDirectory(measured, 6).usage(tenant as TenantId);
      const { rows } = await c.query<{ n: number }>(
        `select count(*)::int as n from "${schema}".audit_events`,
      );
      const { partitions } = await catalogOf(c, tenant);
      expect(usage).toMatchObject({ events: rows[0]!.n, eventsExact: true, partitions });
      expect(most).toBeGreaterThan(0);
      expect(most).toBeLessThanOrEqual(6);
      expect(statements).toBeGreaterThan(160 / 6);
    });

    it('serves the unfiltered first page through GraphQL in milliseconds', async () => {
      const times: number[] = [];
      for (let i = 0; i < 7; i++) {
        const started = performance.now();
        const r = await t.gql(tenant, PAGE, { first: 50 });
        times.push(performance.now() - started);
        expect(r.auditEvents.edges).toHaveLength(50);
      }
      times.sort((a, b) => a - b);
      console.log(
        `unfiltered first page over 160 partitions, 7 runs: median ${times[3]!.toFixed(1)} ms, ` +
          `max ${times[6]!.toFixed(1)} ms`,
      );
      expect(times[3]).toBeLessThan(200);
    });
  });
});
