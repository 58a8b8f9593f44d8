import type pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { CREATE, dropTenants, newTenant, sqlClient, startApp, type TestApp } from './harness.js';
import { createKey, keyClient, startKeysApp } from './keys.js';

/**
 * Two instances on the file's database for tests of what an event may be: `a` in AUTH_MODE=dev
 * with reads not audited (its counters are exactly what a test writes), `b` in AUTH_MODE=keys
 * with reads audited (the service writes its own records there). They share no lock or buffer.
 */
export interface TwoApps {
  a: TestApp;
  b: TestApp;
  sql: pg.Client;
  /** A fresh tenant, dropped by `stop()`. */
  tenant(prefix: string): string;
  /** A writer and reader of `tn` on `b`, with its own key. */
  writerOnB(tn: string): Promise<{
    gql: ReturnType<typeof keyClient>['gql'];
    create(events: unknown[]): Promise<any>;
  }>;
  stop(): Promise<void>;
}

export async function startTwoApps(): Promise<TwoApps> {
  const a = await startApp({ AUDIT_READS: 'false', SHUTDOWN_TIMEOUT_MS: '1000' });
  const b = await startKeysApp({ AUDIT_READS: 'true', SHUTDOWN_TIMEOUT_MS: '1000' });
  const sql = await sqlClient();
  const created: string[] = [];
  return {
    a,
    b,
    sql,
    tenant(prefix) {
      const tn = newTenant(prefix);
      created.push(tn);
      return tn;
    },
    async writerOnB(tn) {
      const key = await createKey(b, tn, ['events:write', 'events:read']);
      const c = keyClient(b, key.secret);
      return {
        gql: c.gql,
        create: async (events) =>
          (await c.gql(CREATE, { input: { events, ack: 'COMMITTED' } })).createAuditEvents,
      };
    },
    async stop() {
      await a.stop();
      await b.stop();
      await sql.end();
      await dropTenants(...created);
    },
  };
}

/** createAuditEvents with ack COMMITTED through `t` as tenant `tn`; its payload. */
export async function createCommitted(t: TestApp, tn: string, events: unknown[]) {
  return (await t.gql(tn, CREATE, { input: { events, ack: 'COMMITTED' } })).createAuditEvents;
}

/** The per-event statuses of a payload. */
export const statuses = (r: { events: { status: string }[] }) => r.events.map((e) => e.status);

/**
 * The two instances for one test file: started before its tests, stopped (and its tenants
 * dropped) after them. Read `a`, `b` and `sql` inside tests, once started.
 */
export function useTwoApps(): TwoApps {
  let apps: TwoApps | undefined;
  beforeAll(async () => {
    apps = await startTwoApps();
  });
  afterAll(async () => {
    await apps?.stop();
  });
  const started = () => {
    if (!apps) throw new Error('the two apps are not started yet');
    return apps;
  };
  return {
    get a() {
      return started().a;
    },
    get b() {
      return started().b;
    },
    get sql() {
      return started().sql;
    },
    tenant: (prefix) => started().tenant(prefix),
    writerOnB: (tn) => started().writerOnB(tn),
    stop: () => started().stop(),
  };
}
