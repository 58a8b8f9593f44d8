import type pg from 'pg';
import { CREATE, FLUSH, STATS, sqlClient, type TestApp } from './harness.js';

/**
 * Helpers for tests that check real rows and real locks. Every query here runs on a direct,
 * test-owned connection (never through the service), and is schema-qualified.
 */

/** `count(*)` of a tenant's events, straight from PostgreSQL. */
export async function countEvents(c: pg.Client, tenant: string): Promise<number> {
  const { rows } = await c.query<{ n: number }>(
    `select count(*)::int as n from "t_${tenant}".audit_events`,
  );
  return rows[0]!.n;
}

/** `count(*)` of a tenant's events on a connection of its own (for tests that hold none). */
export async function countEventsNow(tenant: string): Promise<number> {
  const c = await sqlClient();
  try {
    return await countEvents(c, tenant);
  } finally {
    await c.end();
  }
}

export interface PartitionInfo {
  name: string;
  /** `pg_get_expr(relpartbound)`, e.g. `FOR VALUES FROM (...) TO (...)` or `DEFAULT`. */
  bound: string;
  /** Lower and upper bound as instants (null for a DEFAULT partition). */
  from: Date | null;
  to: Date | null;
}

/**
 * The partitions attached to `t_<tenant>.audit_events` (from `pg_inherits`), sorted by name;
 * an empty list when the table does not exist yet. Bounds are read with the session time zone
 * set to UTC so they print as `YYYY-MM-DD HH:MI:SS+00`.
 */
export async function listPartitions(c: pg.Client, tenant: string): Promise<PartitionInfo[]> {
  await c.query(`set time zone 'UTC'`);
  const { rows } = await c.query<{ name: string; bound: string }>(
    `select c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bound
       from pg_inherits i
       join pg_class c on c.oid = i.inhrelid
      where i.inhparent = to_regclass($1)
      order by c.relname`,
    [`"t_${tenant}".audit_events`],
  );
  return rows.map((r) => {
    const m = /^FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)$/.exec(r.bound);
    return {
      name: r.name,
      bound: r.bound,
      from: m ? new Date(m[1]!.replace(' ', 'T').replace(/\+00$/, 'Z')) : null,
      to: m ? new Date(m[2]!.replace(' ', 'T').replace(/\+00$/, 'Z')) : null,
    };
  });
}

/** `audit_events_yYYYYmMM` for the UTC month of `d`. */
export function partitionNameFor(d: Date): string {
  return `audit_events_y${d.getUTCFullYear()}m${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

/** First instant of the UTC month `offset` months from the month of `d`. */
export function utcMonth(d: Date, offset = 0): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + offset, 1));
}

export interface TableLock {
  /**
   * `count(*)` of the tenant's events, read on the locking connection itself: any other
   * connection's SELECT would queue behind ACCESS EXCLUSIVE just like the service's INSERTs.
   */
  count(): Promise<number>;
  /** ROLLBACK of the locking transaction and close of its connection; safe to call twice. */
  release(): Promise<void>;
}

/**
 * Takes ACCESS EXCLUSIVE on `t_<tenant>.audit_events` (and so on its partitions) in a transaction
 * on a connection of its own, so every batch INSERT of that tenant blocks until `release()`.
 * Callers release in a `finally`. As a watchdog for a test that hangs before reaching its
 * `finally` (a timed-out test never gets there), the server itself ends the locking session once
 * it has sat idle in its transaction for `watchdogMs`, which releases the lock.
 */
export async function lockEvents(tenant: string, watchdogMs = 20_000): Promise<TableLock> {
  const c = await sqlClient();
  // The server terminating the session (the watchdog) must not crash the test process.
  c.on('error', () => {});
  await c.query(`set idle_in_transaction_session_timeout = ${Math.trunc(watchdogMs)}`);
  await c.query('begin');
  await c.query(`lock table "t_${tenant}".audit_events in access exclusive mode`);
  let released = false;
  return {
    count: () => countEvents(c, tenant),
    async release() {
      if (released) return;
      released = true;
      try {
        await c.query('rollback');
      } catch {
        // Already gone (the watchdog ended the session): the lock went with it.
      } finally {
        await c.end().catch(() => {});
      }
    },
  };
}

/**
 * Connections of the service (by `application_name`) waiting for a heavyweight lock right now:
 * used to show that a batch write really is blocked on a test's table lock.
 */
export async function writersWaitingOnLock(c: pg.Client, applicationName: string): Promise<number> {
  const { rows } = await c.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity
      where application_name = $1 and wait_event_type = 'Lock'`,
    [applicationName],
  );
  return rows[0]!.n;
}

/**
 * Re-evaluates `probe` until `done` accepts its value or `timeoutMs` passes, then fails with
 * `what`. Only for internal states that have no event to await (e.g. "the writer's INSERT is
 * now waiting on our lock"); each round yields for `intervalMs` so the loop is bounded.
 */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T>,
  done: (v: T) => boolean,
  timeoutMs = 5_000,
  intervalMs = 10,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (done(v)) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${String(v)}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface Stats {
  __typename: string;
  accepted: number;
  stored: number;
  duplicates: number;
  pending: number;
  deadLettered: number;
  discarded: number;
  conflicts: number;
  identityHolds: boolean;
  failedWrites: number;
  lastError: string | null;
}

export async function stats(t: TestApp, tenant: string): Promise<Stats> {
  const r = await t.gql(tenant, STATS);
  return r.auditStats as Stats;
}

/** The identity recomputed by the test from the individual terms (not trusting identityHolds). */
export function identityOf(s: Stats): boolean {
  return s.accepted === s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded;
}

/** createAuditEvents over HTTP; returns the `createAuditEvents` union member. */
export async function create(
  t: TestApp,
  tenant: string,
  events: Record<string, unknown>[],
  ack: 'COMMITTED' | 'BUFFERED' = 'COMMITTED',
): Promise<Record<string, any>> {
  const r = await t.gql(tenant, CREATE, { input: { events, ack } });
  return r.createAuditEvents;
}

/** flushAudit over HTTP; returns the `flushAudit` union member. */
export async function flush(
  t: TestApp,
  tenant: string,
  timeoutMs?: number,
): Promise<Record<string, any>> {
  const r = await t.gql(tenant, FLUSH, timeoutMs === undefined ? {} : { timeoutMs });
  return r.flushAudit;
}
