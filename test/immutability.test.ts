import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
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
 * Stored events never change, whoever asks: the PostgreSQL here is reached as a superuser, so
 * grants prove nothing — the tenant migrations install triggers, and raw SQL is what tries them.
 */
describe('immutability of stored events', () => {
  let t: TestApp;
  const tenants = [newTenant('immut'), newTenant('immut'), newTenant('immut')];

  beforeAll(async () => {
    t = await startApp();
    for (const id of tenants) {
      const r = await t.gql(id, CREATE, {
        input: { events: [event({ correlationId: 'keep' }), event()] },
      });
      expect(r.createAuditEvents.stored).toBe(2);
      await t.app.services.checkpoints.checkpointTenant(id as TenantId);
    }
  });
  afterAll(async () => {
    await t.stop();
    await dropTenants(...tenants);
  });

  async function attempt(sql: string): Promise<string> {
    const c = await sqlClient();
    try {
      await c.query(sql);
      return 'accepted';
    } catch (err) {
      return (err as { code?: string }).code ?? 'error';
    } finally {
      await c.end();
    }
  }

  it('refuses UPDATE and DELETE by raw SQL in every tenant schema, on the table and on a partition', async () => {
    for (const id of tenants) {
      const s = `"t_${id}"`;
      const c = await sqlClient();
      const part = (
        await c.query(
          `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
           where i.inhparent = $1::regclass order by 1 limit 1`,
          [`${s}.audit_events`],
        )
      ).rows[0].relname as string;
      const before = (
        await c.query(`select id, event_type, data from ${s}.audit_events order by id`)
      ).rows;
      await c.end();
      expect(await attempt(`update ${s}.audit_events set event_type = 'forged'`)).toBe('42501');
      expect(await attempt(`delete from ${s}.audit_events where correlation_id = 'keep'`)).toBe(
        '42501',
      );
      expect(await attempt(`update ${s}."${part}" set data = '{"x":1}'`)).toBe('42501');
      expect(await attempt(`delete from ${s}."${part}"`)).toBe('42501');
      expect(await attempt(`update ${s}.batch_ledger set stored_count = 0`)).toBe('42501');
      expect(await attempt(`delete from ${s}.batch_ledger`)).toBe('42501');
      // TRUNCATE is no row operation: statement triggers refuse it, on every partition too.
      expect(await attempt(`truncate ${s}.audit_events`)).toBe('42501');
      expect(await attempt(`truncate ${s}."${part}"`)).toBe('42501');
      expect(await attempt(`truncate ${s}.batch_ledger`)).toBe('42501');
      expect(await attempt(`truncate ${s}.chain_checkpoints`)).toBe('42501');
      expect(await attempt(`delete from ${s}.chain_checkpoints`)).toBe('42501');
      // An id keeps its event: moving it to another instant, or emptying the table, is refused.
      expect(
        await attempt(`update ${s}.event_ids set occurred_at = occurred_at - interval '35 days'`),
      ).toBe('42501');
      expect(await attempt(`truncate ${s}.event_ids`)).toBe('42501');
      const c2 = await sqlClient();
      const after = (
        await c2.query(`select id, event_type, data from ${s}.audit_events order by id`)
      ).rows;
      await c2.end();
      expect(after).toEqual(before);
    }
  });

  it('refuses TRUNCATE of a partition created after the migration (one the writer made for an old month)', async () => {
    const id = tenants[1]!;
    const s = `"t_${id}"`;
    const old = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth() - 5, 3));
    const r = await t.gql(id, CREATE, {
      input: { events: [event({ occurredAt: old.toISOString(), correlationId: 'old' })] },
    });
    expect(r.createAuditEvents.stored).toBe(1);
    const c = await sqlClient();
    const part = (
      await c.query(
        `select c.relname from ${s}.audit_events e join pg_class c on c.oid = e.tableoid
          where e.correlation_id = 'old'`,
      )
    ).rows[0].relname as string;
    await c.end();
    expect(await attempt(`truncate ${s}."${part}"`)).toBe('42501');
    // The control: the same TRUNCATE with the trigger off goes through (rolled back).
    const c3 = await sqlClient();
    try {
      await c3.query('begin');
      await c3.query(`alter table ${s}."${part}" disable trigger audit_events_no_truncate`);
      await c3.query(`truncate ${s}."${part}"`);
      await c3.query('rollback');
    } finally {
      await c3.end();
    }
  });

  it('is the trigger that refuses: with it disabled (as a superuser could) the same UPDATE goes through', async () => {
    const s = `"t_${tenants[0]}"`;
    const c = await sqlClient();
    try {
      const part = (
        await c.query(
          `select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
           join ${s}.audit_events e on e.tableoid = c.oid
           where i.inhparent = $1::regclass limit 1`,
          [`${s}.audit_events`],
        )
      ).rows[0].relname as string;
      await c.query('begin');
      await c.query(`alter table ${s}."${part}" disable trigger audit_events_immutable`);
      const r = await c.query(`update ${s}."${part}" set event_type = 'forged'`);
      expect(r.rowCount).toBeGreaterThan(0);
      await c.query('rollback'); // leave the tenant as it was
    } finally {
      await c.end();
    }
  });
});
