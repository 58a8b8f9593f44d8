import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  databaseUrl,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * One tenant can never read or write another's events, even when every
 * request shares a small pool. The isolation check below is generic over the reader; it is run
 * against the service and against a deliberately leaking reader (the incident's "SET
 * search_path on a shared pool" fix, built here in the test, never in src/) to show it can fail.
 */

const POOL_SIZE = 2;
const OPERATIONS = 200;
const APPLICATION_NAME = `auditgraph-leak-${randomBytes(4).toString('hex')}`;

/** What a reader returns for one page of a tenant's events. */
interface ReadRow {
  correlationId: string;
  data: { tenant?: unknown } | null;
}
type ReadFn = (tenant: string) => Promise<ReadRow[]>;

interface IsolationReport {
  reads: number;
  /** Reads that returned no row at all (every tenant has rows before the first read). */
  emptyReads: number;
  rowsRead: number;
  /** Rows a read returned that belong to another tenant. */
  readLeaks: number;
  /** Rows found in a tenant's schema (by SQL, afterwards) that belong to another tenant. */
  schemaLeaks: number;
  /** Per tenant: events written through the service vs rows in its schema. */
  written: Record<string, number>;
  stored: Record<string, number>;
}

function leaksFound(r: IsolationReport): number {
  return r.readLeaks + r.schemaLeaks;
}

const correlationOf = (tenant: string) => `corr-${tenant}`;

/** Deterministic PRNG (mulberry32), so the interleaving is the same every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], random: () => number): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

let t: TestApp;
let sql: pg.Client;
const allTenants: string[] = [];

/** Events for `tenant`: its own correlation id and a `data.tenant` marker. */
function eventsFor(tenant: string, n: number, seq: number): Record<string, unknown>[] {
  return Array.from({ length: n }, (_, i) =>
    event({ correlationId: correlationOf(tenant), data: { tenant, seq, i } }),
  );
}

async function write(tenant: string, events: Record<string, unknown>[], ack: string) {
  const r = await t.gql(tenant, CREATE, { input: { events, ack } });
  const res = r.createAuditEvents;
  if (res.__typename !== 'CreateAuditEventsPayload') {
    throw new Error(`write for ${tenant} answered ${JSON.stringify(res)}`);
  }
}

/**
 * Seeds each tenant, then runs OPERATIONS requests — for each tenant, half writes through the
 * service (COMMITTED and BUFFERED, 1–3 events) and half reads through `readFn` — all at once, in
 * one shuffled order (the same every run). Every row each read returns must carry the reader's
 * tenant marker and correlation id; afterwards SQL must find in each schema exactly the events
 * written for it.
 */
async function checkIsolation(tenants: string[], readFn: ReadFn): Promise<IsolationReport> {
  const written: Record<string, number> = {};
  for (const tenant of tenants) {
    await write(tenant, eventsFor(tenant, 1, -1), 'COMMITTED');
    written[tenant] = 1;
  }
  const report: IsolationReport = {
    reads: 0,
    emptyReads: 0,
    rowsRead: 0,
    readLeaks: 0,
    schemaLeaks: 0,
    written,
    stored: {},
  };
  const random = prng(20_260_104);
  const ops: (() => Promise<void>)[] = [];
  const perTenant = OPERATIONS / tenants.length;
  for (const tenant of tenants) {
    for (let k = 0; k < perTenant; k++) {
      if (k % 2 === 0) {
        // Writes of 1–3 events, alternately COMMITTED and BUFFERED.
        const n = 1 + (k % 3);
        const ack = k % 4 === 0 ? 'BUFFERED' : 'COMMITTED';
        written[tenant]! += n;
        ops.push(() => write(tenant, eventsFor(tenant, n, k), ack));
      } else {
        ops.push(async () => {
          const rows = await readFn(tenant);
          report.reads++;
          report.rowsRead += rows.length;
          if (rows.length === 0) report.emptyReads++;
          for (const row of rows) {
            if (row.data?.tenant !== tenant || row.correlationId !== correlationOf(tenant)) {
              report.readLeaks++;
            }
          }
        });
      }
    }
  }
  await Promise.all(shuffle(ops, random).map((op) => op()));

  for (const tenant of tenants) {
    const f = await t.gql(tenant, FLUSH, { timeoutMs: 10_000 });
    expect(f.flushAudit.__typename).toBe('FlushAuditPayload');
    const { rows } = await sql.query<{ total: number; foreign: number }>(
      `select count(*)::int as total,
              (count(*) filter (where data->>'tenant' is distinct from $1
                                   or correlation_id <> $2))::int as foreign
         from "t_${tenant}".audit_events`,
      [tenant, correlationOf(tenant)],
    );
    report.schemaLeaks += rows[0]!.foreign;
    report.stored[tenant] = rows[0]!.total;
  }
  return report;
}

/** Reads through the service: one `auditEvents` page (no filter: everything the tenant sees). */
const READ = `query { auditEvents(first: 500) { __typename
  ... on AuditEventConnection { edges { node { correlationId data } } }
   } }`;

const serviceRead: ReadFn = async (tenant) => {
  const r = await t.gql(tenant, READ);
  if (r.auditEvents.__typename !== 'AuditEventConnection') {
    throw new Error(`read for ${tenant} answered ${JSON.stringify(r.auditEvents)}`);
  }
  return r.auditEvents.edges.map((e: { node: ReadRow }) => e.node);
};

/**
 * The negative control: a pool of 2 where each read does a connection-level
 * `SET search_path` and then, as a separate pool.query, an unqualified SELECT. All reads of a
 * round are issued in the same tick, so all their SETs are queued before any SELECT: every SELECT
 * then runs on a connection whose search_path was set by the last SETs of the round, i.e. by
 * (at most two) other tenants. With reads for four tenants in the round, some reads hit another
 * tenant's schema every time — the leak does not depend on timing luck.
 */
let leakyPool: pg.Pool;
const leakyRead: ReadFn = async (tenant) => {
  await leakyPool.query(`SET search_path TO "t_${tenant}"`);
  const { rows } = await leakyPool.query<ReadRow>(
    `select correlation_id as "correlationId", data from audit_events
      order by occurred_at desc, id desc limit 500`,
  );
  return rows;
};

/** Runs `fn` with one connection held for its duration. */
type WithConnection = <T>(
  fn: (query: (text: string) => Promise<Record<string, unknown>[]>) => Promise<T>,
) => Promise<T>;

interface SessionInfo {
  pid: number;
  applicationName: string;
  searchPath: string;
}

/**
 * The session settings of `n` distinct pooled connections: `n` holders each take a connection
 * and wait until all `n` have read theirs, so no connection is seen twice.
 */
async function sessionsOf(withConnection: WithConnection, n: number): Promise<SessionInfo[]> {
  let arrived = 0;
  let releaseAll!: () => void;
  const allArrived = new Promise<void>((resolve) => {
    releaseAll = resolve;
  });
  return Promise.all(
    Array.from({ length: n }, () =>
      withConnection(async (query) => {
        const [row] = await query(
          `select pg_backend_pid() as pid,
                  current_setting('application_name') as "applicationName",
                  current_setting('search_path') as "searchPath"`,
        );
        if (++arrived === n) releaseAll();
        await allArrived;
        return row as unknown as SessionInfo;
      }),
    ),
  );
}

const serviceConnection: WithConnection = (fn) =>
  t.app.db.transaction((tx) => fn((text) => tx.query(text)));

const leakyConnection: WithConnection = async (fn) => {
  const client = await leakyPool.connect();
  try {
    return await fn(async (text) => (await client.query(text)).rows);
  } finally {
    client.release();
  }
};

beforeAll(async () => {
  t = await startApp({
    DATABASE_POOL_SIZE: String(POOL_SIZE),
    DATABASE_APPLICATION_NAME: APPLICATION_NAME,
  });
  sql = await sqlClient();
  leakyPool = new pg.Pool({
    connectionString: databaseUrl(),
    max: POOL_SIZE,
    application_name: `${APPLICATION_NAME}-leaky`,
  });
});

afterAll(async () => {
  await t?.stop();
  await leakyPool?.end();
  await sql?.end();
  await dropTenants(...allTenants);
});

function fourTenants(prefix: string): string[] {
  const ts = Array.from({ length: 4 }, () => newTenant(prefix));
  allTenants.push(...ts);
  return ts;
}

/** The search_path a fresh session gets on this server. */
async function serverDefaultSearchPath(): Promise<string> {
  const { rows } = await sql.query<{ search_path: string }>('show search_path');
  return rows[0]!.search_path;
}

describe('tenant isolation on a pool of 2 connections', () => {
  it('200 interleaved writes and reads for 4 tenants each see only their own events, and no pooled connection has its search_path changed', async () => {
    const tenants = fourTenants('iso');
    const r = await checkIsolation(tenants, serviceRead);
    expect(r.reads).toBe(OPERATIONS / 2);
    expect(r.emptyReads).toBe(0);
    expect(r.rowsRead).toBeGreaterThan(0);
    expect(leaksFound(r)).toBe(0);
    expect(r.stored).toEqual(r.written);

    const sessions = await sessionsOf(serviceConnection, POOL_SIZE);
    expect(new Set(sessions.map((s) => s.pid)).size).toBe(POOL_SIZE);
    const defaultPath = await serverDefaultSearchPath();
    for (const s of sessions) {
      expect(s.applicationName).toBe(APPLICATION_NAME);
      expect(s.searchPath).toBe(defaultPath);
    }
    // Those are the service's only connections (found by application_name): the pool's size.
    const active = await sql.query<{ pid: number }>(
      'select pid from pg_stat_activity where application_name = $1',
      [APPLICATION_NAME],
    );
    expect(active.rows.map((row) => row.pid).sort()).toEqual(sessions.map((s) => s.pid).sort());
  });

  it('the same checks catch a reader that sets search_path on a shared pool', async () => {
    const tenants = fourTenants('leak');
    const r = await checkIsolation(tenants, leakyRead);
    expect(r.reads).toBe(OPERATIONS / 2);
    expect(r.schemaLeaks).toBe(0); // writes still go through the service
    expect(leaksFound(r)).toBeGreaterThan(0);

    const sessions = await sessionsOf(leakyConnection, POOL_SIZE);
    const defaultPath = await serverDefaultSearchPath();
    expect(sessions.some((s) => s.searchPath !== defaultPath)).toBe(true);
  });
});
