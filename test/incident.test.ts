import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  STATS,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { idsInOrder, page, walk } from './support/paging.js';

/**
 * The incident (seed/incident-analysis.md): a service answered "accepted" for 150 events and
 * they never became queryable; tests polled and saw 0, and nobody could say where the events
 * were. Here 12 clients, each its own tenant, do what those tests did — with the interval
 * flush pushed out to 60 s so that nothing reaches the database by itself. Before the barrier
 * the events are invisible to queries (the incident, reproduced: this is the negative control)
 * but accounted for as `pending`; after `flushAudit` every one of them is stored, in its own
 * tenant's schema and nowhere else, and found by paging.
 */

const CLIENTS = 12;
const EVENTS_PER_CLIENT = 150;
const CALL_SIZES = [38, 38, 37, 37]; // 150 events in 4 calls
const PAGE_SIZE = 50;

interface ClientResult {
  tenant: string;
  correlationId: string;
  acceptedIds: string[];
}

describe('the incident, reproduced and defeated', () => {
  let t: TestApp;
  const tenants = Array.from({ length: CLIENTS }, () => newTenant('inc'));

  beforeAll(async () => {
    t = await startApp({ FLUSH_INTERVAL_MS: '60000' });
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(...tenants);
  });

  /** One client: buffered writes, proof they are invisible but pending, barrier, paging. */
  async function client(tenant: string): Promise<ClientResult> {
    const correlationId = `incident-${tenant}-${randomUUID()}`;
    const acceptedIds: string[] = [];
    for (const n of CALL_SIZES) {
      const events = Array.from({ length: n }, () => event({ correlationId }));
      const r = await t.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
      const p = r.createAuditEvents;
      expect(p.__typename, JSON.stringify(p)).toBe('CreateAuditEventsPayload');
      expect(p).toMatchObject({ accepted: n, buffered: n, stored: 0, duplicates: 0 });
      expect(p.events.every((e: { status: string }) => e.status === 'BUFFERED')).toBe(true);
      acceptedIds.push(...p.events.map((e: { id: string }) => e.id));
    }
    expect(acceptedIds).toHaveLength(EVENTS_PER_CLIENT);
    expect(new Set(acceptedIds).size).toBe(EVENTS_PER_CLIENT);

    // The incident: accepted, yet a query finds nothing. The difference now: the service says
    // exactly where they are (pending, in its buffer), and the identity holds.
    const before = await page(t, tenant, { first: PAGE_SIZE, filter: { correlationId } });
    expect(before.edges).toHaveLength(0);
    const pendingStats = (await t.gql(tenant, STATS)).auditStats;
    expect(pendingStats).toMatchObject({
      __typename: 'AuditStats',
      accepted: EVENTS_PER_CLIENT,
      stored: 0,
      pending: EVENTS_PER_CLIENT,
      identityHolds: true,
    });

    // The barrier: every event accepted before it is settled when it returns.
    const f = (await t.gql(tenant, FLUSH, { timeoutMs: 30_000 })).flushAudit;
    expect(f.__typename, JSON.stringify(f)).toBe('FlushAuditPayload');
    expect(f).toMatchObject({
      stored: EVENTS_PER_CLIENT,
      duplicates: 0,
      deadLettered: 0,
      waitedFor: EVENTS_PER_CLIENT,
    });

    // Read your writes: follow cursors until hasNextPage is false.
    const pages = await walk(t, tenant, {
      size: PAGE_SIZE,
      direction: 'forward',
      order: 'OCCURRED_AT_DESC',
      filter: { correlationId },
    });
    expect(pages).toHaveLength(Math.ceil(EVENTS_PER_CLIENT / PAGE_SIZE));
    const seen = idsInOrder(pages, 'forward');
    expect(seen).toHaveLength(EVENTS_PER_CLIENT);
    expect(new Set(seen).size).toBe(EVENTS_PER_CLIENT);
    expect([...seen].sort()).toEqual([...acceptedIds].sort());
    for (const p of pages) {
      for (const e of p.edges) expect(e.node.correlationId).toBe(correlationId);
    }

    const stats = (await t.gql(tenant, STATS)).auditStats;
    expect(stats).toMatchObject({
      __typename: 'AuditStats',
      accepted: EVENTS_PER_CLIENT,
      stored: EVENTS_PER_CLIENT,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      discarded: 0,
      failedWrites: 0,
      identityHolds: true,
    });
    return { tenant, correlationId, acceptedIds };
  }

  it('stores 150 buffered events per tenant for 12 concurrent tenants, each in its own schema, once each', async () => {
    const results = await Promise.all(tenants.map(client));

    const c = await sqlClient();
    try {
      // Nothing leaked into public (the incident's suspected destination) or the control schema.
      const [where] = (
        await c.query(
          `select to_regclass('public.audit_events') as pub,
                  to_regclass('auditgraph.audit_events') as ctl`,
        )
      ).rows;
      expect(where).toEqual({ pub: null, ctl: null });

      const allCorrelationIds = results.map((r) => r.correlationId);
      for (const r of results) {
        const schema = `t_${r.tenant}`;
        const { rows } = await c.query(
          `select
             count(*) filter (where correlation_id = $1)::int as own,
             count(*) filter (where correlation_id = any($2::text[]))::int as others,
             count(*)::int as total,
             count(distinct id)::int as distinct_ids,
             array_agg(id::text order by id) as ids
           from "${schema}".audit_events`,
          [r.correlationId, allCorrelationIds.filter((x) => x !== r.correlationId)],
        );
        const row = rows[0];
        expect({ schema, own: row.own, others: row.others, total: row.total }).toEqual({
          schema,
          own: EVENTS_PER_CLIENT,
          others: 0,
          total: EVENTS_PER_CLIENT,
        });
        expect(row.distinct_ids).toBe(EVENTS_PER_CLIENT);
        expect(row.ids).toEqual([...r.acceptedIds].sort());
      }

      // And nowhere else in the database: every audit_events table holding one of these
      // correlation ids is the owning tenant's. (Other test files create and drop their own
      // schemas concurrently, so a table that vanishes mid-scan is skipped.)
      const { rows: tables } = await c.query<{ schema: string }>(
        `select n.nspname as schema from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.relname = 'audit_events' and c.relkind in ('p', 'r')`,
      );
      const found = new Map<string, Map<string, number>>();
      for (const { schema } of tables) {
        try {
          const { rows } = await c.query<{ correlation_id: string; n: number }>(
            `select correlation_id, count(*)::int as n from "${schema}".audit_events
             where correlation_id = any($1::text[]) group by correlation_id`,
            [allCorrelationIds],
          );
          for (const row of rows) {
            const m = found.get(row.correlation_id) ?? new Map<string, number>();
            m.set(schema, row.n);
            found.set(row.correlation_id, m);
          }
        } catch (err) {
          if ((err as { code?: string }).code !== '42P01') throw err;
        }
      }
      for (const r of results) {
        expect(Object.fromEntries(found.get(r.correlationId) ?? [])).toEqual({
          [`t_${r.tenant}`]: EVENTS_PER_CLIENT,
        });
      }
    } finally {
      await c.end();
    }
  });
});
