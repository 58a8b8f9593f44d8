import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import {
  countEvents,
  create,
  listPartitions,
  type PartitionInfo,
  partitionNameFor,
  stats,
  utcMonth,
} from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Promise: one partition of `audit_events` per UTC month, created ahead (PARTITIONS_AHEAD) and on
 * demand by writes, never a DEFAULT partition, and a missing partition never fails a write.
 * Everything is checked in the catalog (`pg_inherits`, `pg_partitioned_table`) and in the rows.
 */

/** The partition list expected for `months` (first instants of UTC months). */
function expectedPartitions(months: Date[]) {
  return months
    .map((m) => ({ name: partitionNameFor(m), from: m, to: utcMonth(m, 1) }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

function shape(parts: PartitionInfo[]) {
  return parts.map((p) => ({ name: p.name, from: p.from, to: p.to }));
}

/** oid of the DEFAULT partition of the tenant's table (0 when there is none). */
async function defaultPartition(c: pg.Client, tenant: string): Promise<number> {
  const { rows } = await c.query<{ partdefid: number }>(
    `select partdefid::int as partdefid from pg_partitioned_table
      where partrelid = to_regclass($1)`,
    [`"t_${tenant}".audit_events`],
  );
  expect(rows).toHaveLength(1); // the table is partitioned at all
  return rows[0]!.partdefid;
}

/** Every stored row, with the name of the partition that physically holds it. */
async function rowsByPartition(c: pg.Client, tenant: string) {
  const { rows } = await c.query<{ id: string; occurred_at: Date; part: string }>(
    `select e.id, e.occurred_at, c.relname as part
       from "t_${tenant}".audit_events e join pg_class c on c.oid = e.tableoid`,
  );
  return rows;
}

describe('partitions with PARTITIONS_AHEAD=0', () => {
  let t: TestApp;
  let c: pg.Client;
  const tenant = newTenant('part0');

  beforeAll(async () => {
    t = await startApp({ PARTITIONS_AHEAD: '0' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(tenant);
  });

  it('provisioning creates only the current month, and writes create each past month they touch', async () => {
    const now = new Date();
    const current = utcMonth(now);

    expect(await listPartitions(c, tenant)).toEqual([]); // the tenant does not exist yet

    // Provision exactly as createAuditEvents does before it accepts (auto-provision on write),
    // but without writing, so what exists afterwards is provisioning's doing alone.
    await t.app.services.tenants.ensure(tenant as TenantId, true);
    const afterProvision = await listPartitions(c, tenant);
    expect(shape(afterProvision)).toEqual(expectedPartitions([current]));
    expect(afterProvision[0]!.bound).toMatch(/^FOR VALUES FROM \(.*\) TO \(.*\)$/);

    // The current month and each of the 11 months before it: the first millisecond of the
    // month, a moment in its middle and its last millisecond (only moments already past).
    const months = Array.from({ length: 12 }, (_, i) => utcMonth(now, -i));
    const events: Record<string, unknown>[] = [];
    for (const m of months) {
      const next = utcMonth(m, 1);
      const moments = [m, new Date(m.getTime() + 14 * 86_400_000 + 12 * 3_600_000)];
      if (next.getTime() <= now.getTime()) moments.push(new Date(next.getTime() - 1));
      for (const at of moments) {
        if (at.getTime() > now.getTime()) continue;
        events.push(event({ id: randomUUID(), occurredAt: at.toISOString() }));
      }
    }
    events.push(event({ id: randomUUID(), occurredAt: now.toISOString() }));

    const r = await create(t, tenant, events, 'COMMITTED');
    expect(r.__typename).toBe('CreateAuditEventsPayload');
    expect(r.stored).toBe(events.length);
    expect(r.events.map((e: { status: string }) => e.status)).toEqual(events.map(() => 'STORED'));
    expect(await countEvents(c, tenant)).toBe(events.length);

    // Exactly those 12 months, each bounded by its UTC month: 11 of them created by the write.
    const after = await listPartitions(c, tenant);
    expect(shape(after)).toEqual(expectedPartitions(months));
    expect(after.map((p) => p.bound)).not.toContain('DEFAULT');
    expect(await defaultPartition(c, tenant)).toBe(0);

    // Each row sits in the partition named after its own UTC month (boundary moments included).
    const rows = await rowsByPartition(c, tenant);
    expect(rows).toHaveLength(events.length);
    for (const row of rows) expect(row.part).toBe(partitionNameFor(new Date(row.occurred_at)));

    const s = await stats(t, tenant);
    expect(s).toMatchObject({ accepted: events.length, stored: events.length, pending: 0 });
    expect(s.identityHolds).toBe(true);
  });
});

describe('partitions with the default PARTITIONS_AHEAD (3)', () => {
  let t: TestApp;
  let c: pg.Client;
  const ahead = newTenant('part3');
  const dropped = newTenant('partdrop');

  beforeAll(async () => {
    // A broken recovery would leave a COMMITTED call waiting; answer within 5 s rather than 10.
    t = await startApp({ COMMIT_TIMEOUT_MS: '5000' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(ahead, dropped);
  });

  it('a new tenant has partitions for the current month and the next 3, and no DEFAULT', async () => {
    const now = new Date();
    expect(await listPartitions(c, ahead)).toEqual([]);
    const r = await create(t, ahead, [event({ occurredAt: now.toISOString() })]);
    expect(r.stored).toBe(1);
    const parts = await listPartitions(c, ahead);
    expect(shape(parts)).toEqual(expectedPartitions([0, 1, 2, 3].map((i) => utcMonth(now, i))));
    expect(await defaultPartition(c, ahead)).toBe(0);
  });

  it('a write into months whose partitions were dropped behind the service’s back recreates them and is stored', async () => {
    const now = new Date();
    const past = utcMonth(now, -2); // outside the ahead window: created on demand by a write
    const current = utcMonth(now);
    const pastAt = new Date(past.getTime() + 3 * 86_400_000);

    // The service creates the past month's partition on the first write and caches both months.
    const first = await create(t, dropped, [
      event({ id: randomUUID(), occurredAt: pastAt.toISOString() }),
      event({ id: randomUUID(), occurredAt: now.toISOString() }),
    ]);
    expect(first.stored).toBe(2);
    expect((await listPartitions(c, dropped)).map((p) => p.name)).toContain(partitionNameFor(past));

    // Someone (retention on another instance, an operator) detaches and drops both partitions.
    for (const m of [past, current]) {
      await c.query(
        `alter table "t_${dropped}".audit_events detach partition "t_${dropped}"."${partitionNameFor(m)}"`,
      );
      await c.query(`drop table "t_${dropped}"."${partitionNameFor(m)}"`);
    }
    const remaining = (await listPartitions(c, dropped)).map((p) => p.name);
    expect(remaining).not.toContain(partitionNameFor(past));
    expect(remaining).not.toContain(partitionNameFor(current));
    expect(await countEvents(c, dropped)).toBe(0);

    // The service still believes in both partitions; its write hits "no partition found".
    const second = await create(t, dropped, [
      event({ id: randomUUID(), occurredAt: new Date(pastAt.getTime() + 1000).toISOString() }),
      event({ id: randomUUID(), occurredAt: new Date().toISOString() }),
    ]);
    expect(second.__typename).toBe('CreateAuditEventsPayload');
    expect(second.events.map((e: { status: string }) => e.status)).toEqual(['STORED', 'STORED']);

    const parts = await listPartitions(c, dropped);
    expect(shape(parts)).toEqual(
      expectedPartitions([past, ...[0, 1, 2, 3].map((i) => utcMonth(now, i))]),
    );
    const rows = await rowsByPartition(c, dropped);
    expect(rows.map((r) => r.part).sort()).toEqual(
      [partitionNameFor(past), partitionNameFor(current)].sort(),
    );

    // "A missing partition never fails a write": recovered inside the write, not by a retry.
    const s = await stats(t, dropped);
    expect(s).toMatchObject({ accepted: 4, stored: 4, pending: 0, failedWrites: 0 });
    expect(s.identityHolds).toBe(true);
  });
});
