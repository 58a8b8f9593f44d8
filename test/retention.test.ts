import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PartitionManager } from '../src/db/partitions.js';
import {
  type CheckpointJson,
  checkpointFromJson,
  checkpointSignatureValid,
} from '../src/domain/checkpoint.js';
import { type AuditEventRecord, validateEvents } from '../src/domain/event.js';
import { type TenantId, tenantSchema } from '../src/domain/tenant.js';
import { BatchWriter } from '../src/ingest/batch-writer.js';
import type { LegalHold } from '../src/lifecycle/legal-holds.js';
import { MAINTENANCE_LOCK, MaintenanceJob } from '../src/lifecycle/maintenance.js';
import { create, listPartitions, partitionNameFor, utcMonth } from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Issue #6 part 3: retention by whole months. A maintenance job (leader-elected with an
 * advisory lock) detaches and drops each month past the tenant's retention, records the drop
 * with its row count and the signed checkpoint at the cut, and keeps — and says so — every month
 * holding an event under an active legal hold. Everything is checked in the catalog and in the
 * control schema's rows, not in what the service says about itself.
 */

const DAY = 86_400_000;
/** Months with events: 6 to 1 months before the current one. */
const OFFSETS = [-6, -5, -4, -3, -2, -1];

const SET_RETENTION = `mutation Set($days: Int) {
  setRetention(input: { days: $days }) {
    __typename
    ... on SetRetentionPayload {
      retention { days default tenantDays source }
      event { id: eventId status }
    }
    ... on AuditError { message }
    ... on ValidationError { issues { field message } }
  }
}`;

const PLACE = `mutation Place($input: PlaceLegalHoldInput!) {
  placeLegalHold(input: $input) {
    __typename
    ... on LegalHoldPayload { hold { id: holdId active } event { id: eventId status } }
    ... on AuditError { message }
  }
}`;

const RELEASE = `mutation Release($input: ReleaseLegalHoldInput!) {
  releaseLegalHold(input: $input) {
    __typename
    ... on LegalHoldPayload { hold { id: holdId active } }
    ... on AuditError { message }
  }
}`;

const RUN = `mutation { runMaintenance { __typename
  ... on MaintenanceReport {
    leader note
    tenants {
      tenantId retentionDays retentionSource cutoff partitionsCreated
      dropped { month partition rowCount chainSeq chainHash checkpoint }
      held { month partition holdIds }
      problems { month message }
    }
  }
  ... on AuditError { message }
} }`;

const EXPIRED = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded expired identityHolds
} } }`;

const RETENTION = `query { retention { __typename ... on Retention {
  days default tenantDays source drops { month partition rowCount chainSeq chainHash }
}  } }`;

/** The retention (days) under which exactly the months before `utcMonth(now, keepFrom)` are past. */
function daysDropping(now: Date, keepFrom: number): number {
  // The cutoff lands 5 days into the first kept month: every earlier month ended before it.
  return Math.floor((now.getTime() - (utcMonth(now, keepFrom).getTime() + 5 * DAY)) / DAY);
}

interface Seeded {
  /** Rows stored per partition name. */
  counts: Map<string, number>;
  /** Chain head (seq, hex hash) per partition name, read from the rows. */
  heads: Map<string, { seq: number; hash: string }>;
}

let t: TestApp;
let c: pg.Client;
const tenants: string[] = [];

beforeAll(async () => {
  // No periodic run and no periodic checkpoint: each test decides when they happen.
  t = await startApp({
    MAINTENANCE_INTERVAL_MS: '0',
    CHECKPOINT_INTERVAL_MS: '0',
    INSTANCE_ID: 'retention-a',
  });
  c = await sqlClient();
});
afterAll(async () => {
  await t?.stop();
  await c?.end();
  await dropTenants(...tenants);
});

function tenantFor(prefix: string): string {
  const id = newTenant(prefix);
  tenants.push(id);
  return id;
}

/**
 * Writes 4 + k events into each month of OFFSETS (k its index), correlation id `case<offset>`,
 * plus one `recent` event in the last month; returns what is stored, read from PostgreSQL.
 */
async function seed(app: TestApp, tenant: string, now: Date): Promise<Seeded> {
  const events: Record<string, unknown>[] = [];
  OFFSETS.forEach((offset, k) => {
    const m = utcMonth(now, offset);
    for (let i = 0; i < 4 + k; i++) {
      events.push(
        event({
          id: randomUUID(),
          occurredAt: new Date(m.getTime() + 10 * DAY + i * 60_000).toISOString(),
          correlationId: `case${offset}`,
        }),
      );
    }
  });
  events.push(
    event({
      id: randomUUID(),
      occurredAt: new Date(utcMonth(now, -1).getTime() + 12 * DAY).toISOString(),
      correlationId: 'recent',
    }),
  );
  const r = await create(app, tenant, events, 'COMMITTED');
  expect(r.__typename).toBe('CreateAuditEventsPayload');
  expect(r.stored).toBe(events.length);
  return read(tenant);
}

async function read(tenant: string): Promise<Seeded> {
  const { rows } = await c.query<{ part: string; n: number; seq: string; hash: Buffer }>(
    `select p.relname as part, count(*)::int as n, max(e.chain_seq) as seq,
            (array_agg(e.hash order by e.chain_seq desc))[1] as hash
       from "t_${tenant}".audit_events e join pg_class p on p.oid = e.tableoid
      group by p.relname`,
  );
  return {
    counts: new Map(rows.map((r) => [r.part, r.n])),
    heads: new Map(rows.map((r) => [r.part, { seq: Number(r.seq), hash: r.hash.toString('hex') }])),
  };
}

async function exists(tenant: string, partition: string): Promise<boolean> {
  const { rows } = await c.query<{ oid: string | null }>('select to_regclass($1)::text as oid', [
    `"t_${tenant}"."${partition}"`,
  ]);
  return rows[0]!.oid !== null;
}

async function attached(tenant: string): Promise<string[]> {
  return (await listPartitions(c, tenant)).map((p) => p.name);
}

interface DropRow {
  month: Date;
  partition_name: string;
  row_count: string;
  chain_seq: string;
  chain_hash: string | null;
  checkpoint: CheckpointJson | null;
  retention_days: number;
  instance_id: string;
}

async function drops(tenant: string): Promise<DropRow[]> {
  const { rows } = await c.query<DropRow>(
    `select month, partition_name, row_count, chain_seq, chain_hash, checkpoint, retention_days,
            instance_id
       from auditgraph.retention_drops where tenant_id = $1 order by month, dropped_at`,
    [tenant],
  );
  return rows;
}

async function setRetention(app: TestApp, tenant: string, days: number | null) {
  const r = (await app.gql(tenant, SET_RETENTION, { days })).setRetention;
  expect(r.__typename).toBe('SetRetentionPayload');
  return r;
}

async function placeHold(app: TestApp, tenant: string, input: Record<string, unknown>) {
  const r = (await app.gql(tenant, PLACE, { input: { reason: 'litigation 2026-17', ...input } }))
    .placeLegalHold;
  expect(r.__typename).toBe('LegalHoldPayload');
  expect(r.event.status).toBe('STORED');
  return r.hold as Pick<LegalHold, 'id'>;
}

/** Every dropped month's record matches what was stored and the checkpoint at the cut. */
function expectRecorded(rows: DropRow[], seeded: Seeded, months: Date[], retentionDays: number) {
  expect(rows.map((r) => new Date(r.month).toISOString())).toEqual(
    months.map((m) => m.toISOString()),
  );
  for (const r of rows) {
    const head = seeded.heads.get(r.partition_name)!;
    expect(r.partition_name).toBe(partitionNameFor(new Date(r.month)));
    expect(Number(r.row_count)).toBe(seeded.counts.get(r.partition_name));
    expect(Number(r.chain_seq)).toBe(head.seq);
    expect(r.chain_hash).toBe(head.hash);
    expect(r.retention_days).toBe(retentionDays);
    expect(r.instance_id).toBe(t.app.services.instanceId);
    // The checkpoint at the cut: the final head, signed with the deployment's key.
    expect(r.checkpoint).not.toBeNull();
    expect(r.checkpoint!.seq).toBe(head.seq);
    expect(r.checkpoint!.hash).toBe(head.hash);
    expect(r.checkpoint!.month).toBe(new Date(r.month).toISOString());
    const { publicKey } = t.app.services.checkpoints.key;
    expect(checkpointSignatureValid(checkpointFromJson(r.checkpoint!), publicKey)).toBe(true);
  }
}

describe('retention by whole months, with legal holds', () => {
  it('drops exactly the unheld months past retention (hold by correlation id), records each, then drops the held month once released', async () => {
    const tenant = tenantFor('ret');
    const now = new Date();
    const seeded = await seed(t, tenant, now);
    await t.app.services.checkpoints.checkpointTenant(tenant as TenantId);

    // Retention that makes months -6, -5 and -4 past it; month -5 is held by correlation id.
    const days = daysDropping(now, -3);
    const set = await setRetention(t, tenant, days);
    expect(set.retention).toEqual({ days, default: 400, tenantDays: days, source: 'TENANT' });
    expect(set.event.status).toBe('STORED');
    const hold = await placeHold(t, tenant, { correlationId: 'case-5' });
    // An active hold whose events are all in a kept month holds nothing past retention.
    await placeHold(t, tenant, { correlationId: 'recent' });

    const [m6, m5, m4] = [utcMonth(now, -6), utcMonth(now, -5), utcMonth(now, -4)];
    const run = (await t.gql(tenant, RUN)).runMaintenance;
    expect(run.__typename).toBe('MaintenanceReport');
    expect(run.leader).toBe(true);
    expect(run.tenants).toHaveLength(1);
    const report = run.tenants[0];
    expect(report.tenantId).toBe(tenant);
    expect(report.retentionDays).toBe(days);
    expect(report.retentionSource).toBe('TENANT');
    expect(report.problems).toEqual([]);
    expect(report.dropped.map((d: { partition: string }) => d.partition)).toEqual([
      partitionNameFor(m6),
      partitionNameFor(m4),
    ]);
    for (const d of report.dropped) {
      expect(d.rowCount).toBe(seeded.counts.get(d.partition));
      expect(d.chainSeq).toBe(seeded.heads.get(d.partition)!.seq);
      expect(d.checkpoint.hash).toBe(seeded.heads.get(d.partition)!.hash);
    }
    // The report says why month -5 was kept: the hold on case-5, and only that one.
    expect(report.held).toEqual([
      { month: m5.toISOString(), partition: partitionNameFor(m5), holdIds: [hold.id] },
    ]);

    // In the catalog: the unheld months are gone (not detached and left behind: gone).
    const parts = await attached(tenant);
    expect(parts).not.toContain(partitionNameFor(m6));
    expect(parts).not.toContain(partitionNameFor(m4));
    expect(parts).toContain(partitionNameFor(m5));
    for (const o of [-3, -2, -1, 0]) expect(parts).toContain(partitionNameFor(utcMonth(now, o)));
    expect(await exists(tenant, partitionNameFor(m6))).toBe(false);
    expect(await exists(tenant, partitionNameFor(m4))).toBe(false);
    // What is left is exactly what was stored in the kept months.
    const after = await read(tenant);
    expect(after.counts.get(partitionNameFor(m5))).toBe(seeded.counts.get(partitionNameFor(m5)));
    expect(after.counts.has(partitionNameFor(m6))).toBe(false);

    // The control schema: one row per dropped month, with its rows and the checkpoint at the cut.
    expectRecorded(await drops(tenant), seeded, [m6, m4], days);
    const { rows: heads } = await c.query<{ month: Date }>(
      `select month from "t_${tenant}".chain_heads order by month`,
    );
    expect(heads.map((h) => new Date(h.month).getTime())).not.toContain(m6.getTime());
    expect(heads.map((h) => new Date(h.month).getTime())).not.toContain(m4.getTime());

    // Counted as expired (outside the identity, which still holds).
    const droppedRows =
      seeded.counts.get(partitionNameFor(m6))! + seeded.counts.get(partitionNameFor(m4))!;
    let s = (await t.gql(tenant, EXPIRED)).auditStats;
    expect(s.expired).toBe(droppedRows);
    expect(s.identityHolds).toBe(true);

    // The months that remain verify against their signed checkpoints; dropped ones are DROPPED.
    const v = await t.app.services.chainAuditor.verify(
      tenant as TenantId,
      utcMonth(now, -8),
      utcMonth(now, 1),
    );
    expect(v.firstBreak).toBeNull();
    expect(v.ok).toBe(true);
    const status = new Map(v.months.map((m) => [m.month.getTime(), m]));
    expect(status.get(m6.getTime())?.status).toBe('DROPPED');
    expect(status.get(m4.getTime())?.status).toBe('DROPPED');
    for (const o of [-5, -3, -2, -1]) {
      const m = status.get(utcMonth(now, o).getTime());
      expect(m?.status).toBe('OK');
      expect(m?.checkpoints).toBeGreaterThan(0);
      expect(m?.eventsVerified).toBe(seeded.counts.get(partitionNameFor(utcMonth(now, o))));
    }

    // Query.retention lists the drops.
    const ret = (await t.gql(tenant, RETENTION)).retention;
    expect(ret.days).toBe(days);
    expect(ret.drops.map((d: { partition: string }) => d.partition)).toEqual([
      partitionNameFor(m4),
      partitionNameFor(m6),
    ]);

    // Released, the month goes on the next run — recorded once, like the others.
    const released = (
      await t.gql(tenant, RELEASE, { input: { id: hold.id, reason: 'case closed' } })
    ).releaseLegalHold;
    expect(released.hold.active).toBe(false);
    const again = (await t.gql(tenant, RUN)).runMaintenance;
    expect(again.leader).toBe(true);
    expect(again.tenants[0].held).toEqual([]);
    expect(again.tenants[0].dropped.map((d: { partition: string }) => d.partition)).toEqual([
      partitionNameFor(m5),
    ]);
    expect(await exists(tenant, partitionNameFor(m5))).toBe(false);
    expectRecorded(await drops(tenant), seeded, [m6, m5, m4], days);
    s = (await t.gql(tenant, EXPIRED)).auditStats;
    expect(s.expired).toBe(droppedRows + seeded.counts.get(partitionNameFor(m5))!);

    // A third run has nothing left to do.
    const third = (await t.gql(tenant, RUN)).runMaintenance;
    expect(third.tenants[0].dropped).toEqual([]);
    expect(await drops(tenant)).toHaveLength(3);
  });

  it('keeps every month a range hold overlaps', async () => {
    const tenant = tenantFor('retr');
    const now = new Date();
    const seeded = await seed(t, tenant, now);
    await t.app.services.checkpoints.checkpointTenant(tenant as TenantId);
    const days = daysDropping(now, -3);
    await setRetention(t, tenant, days);
    // From the 20th of month -5 to the 3rd of month -4: overlaps both, event or not.
    const [m6, m5, m4] = [utcMonth(now, -6), utcMonth(now, -5), utcMonth(now, -4)];
    const hold = await placeHold(t, tenant, {
      occurredFrom: new Date(m5.getTime() + 19 * DAY).toISOString(),
      occurredTo: new Date(m4.getTime() + 2 * DAY).toISOString(),
    });
    // A range that ends exactly where month -6 begins does not overlap it.
    await placeHold(t, tenant, {
      occurredFrom: utcMonth(now, -7).toISOString(),
      occurredTo: m6.toISOString(),
    });

    const report = await t.app.services.maintenance.runOnce({ tenant: tenant as TenantId });
    expect(report.leader).toBe(true);
    const r = report.tenants[0]!;
    expect(r.dropped.map((d) => d.partition)).toEqual([partitionNameFor(m6)]);
    expect(r.held.map((h) => [h.partition, h.holdIds])).toEqual([
      [partitionNameFor(m5), [hold.id]],
      [partitionNameFor(m4), [hold.id]],
    ]);
    expect(await exists(tenant, partitionNameFor(m6))).toBe(false);
    expect(await exists(tenant, partitionNameFor(m5))).toBe(true);
    expect(await exists(tenant, partitionNameFor(m4))).toBe(true);
    expectRecorded(await drops(tenant), seeded, [m6], days);
  });

  it('keeps a month whose chain does not verify (evidence of tampering), and drops the others', async () => {
    const tenant = tenantFor('retbroken');
    const now = new Date();
    await seed(t, tenant, now);
    await t.app.services.checkpoints.checkpointTenant(tenant as TenantId);
    await setRetention(t, tenant, daysDropping(now, -3));
    const [m6, m5, m4] = [utcMonth(now, -6), utcMonth(now, -5), utcMonth(now, -4)];
    // A superuser rewrites one event of month -5 behind the triggers' back.
    await c.query('set session_replication_role = replica');
    try {
      await c.query(
        `update "t_${tenant}"."${partitionNameFor(m5)}" set data = '{"forged":true}' where chain_seq = 2`,
      );
    } finally {
      await c.query('set session_replication_role = origin');
    }
    const report = (await t.gql(tenant, RUN)).runMaintenance.tenants[0];
    expect(report.dropped.map((d: { partition: string }) => d.partition)).toEqual([
      partitionNameFor(m6),
      partitionNameFor(m4),
    ]);
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0].message).toMatch(/does not verify \(HASH_MISMATCH at position 2/);
    expect(await exists(tenant, partitionNameFor(m5))).toBe(true);
    expect((await drops(tenant)).map((d) => d.partition_name).sort()).toEqual(
      [partitionNameFor(m6), partitionNameFor(m4)].sort(),
    );
    // The evidence is still there to be found.
    const v = await t.app.services.chainAuditor.verify(tenant as TenantId, m6, now);
    expect(v.firstBreak).toMatchObject({ kind: 'HASH_MISMATCH', seq: 2 });
  });

  it('negative control: without the hold check the held month is dropped (the test can fail)', async () => {
    const tenant = tenantFor('retn');
    const now = new Date();
    await seed(t, tenant, now);
    await t.app.services.checkpoints.checkpointTenant(tenant as TenantId);
    await setRetention(t, tenant, daysDropping(now, -3));
    await placeHold(t, tenant, { correlationId: 'case-5' });
    const m5 = utcMonth(now, -5);

    // The same job, same dependencies, with the hold check removed.
    class IgnoringHolds extends MaintenanceJob {
      protected override async heldBy(): Promise<LegalHold[]> {
        return [];
      }
    }
    const broken = new IgnoringHolds(t.app.services.maintenance.deps);
    const report = await broken.runOnce({ tenant: tenant as TenantId });
    expect(report.tenants[0]!.held).toEqual([]);
    expect(report.tenants[0]!.dropped.map((d) => d.partition)).toContain(partitionNameFor(m5));
    // What the real test asserts ("the held month stays") is false here.
    expect(await exists(tenant, partitionNameFor(m5))).toBe(false);
  });

  it('an event of a dropped month reaching the writer later (buffer, dead-letter replay) is refused, and the month stays dropped', async () => {
    const tenant = tenantFor('retlate');
    const now = new Date();
    await seed(t, tenant, now);
    await setRetention(t, tenant, daysDropping(now, -3));
    const report = (await t.gql(tenant, RUN)).runMaintenance;
    const m6 = utcMonth(now, -6);
    expect(await exists(tenant, partitionNameFor(m6))).toBe(false);
    expect(report.__typename).not.toMatch(/Error$/);
    // As a batch accepted before the drop would arrive: straight to a fresh writer (which has
    // never seen the tenant's partitions, as on another instance).
    const schema = tenantSchema(tenant as TenantId);
    const writer = new BatchWriter(
      t.app.db,
      new PartitionManager(t.app.db, t.app.log),
      t.app.log,
      'late-writer',
    );
    const late = (id: string, at: Date): AuditEventRecord => ({
      ...validateEvents([{ ...(event() as object), occurredAt: at } as never], {
        now: at,
        retentionDays: 400,
        maxFutureSkewMs: 0,
        maxEvents: 10,
      })[0]!,
      id,
    });
    const kept = utcMonth(now, -1).getTime() + 3 * DAY;
    const result = await writer.write(schema, randomUUID(), [
      late(randomUUID(), new Date(m6.getTime() + DAY)),
      late(randomUUID(), new Date(kept)),
    ]);
    expect(result.statuses).toEqual(['REJECTED', 'STORED']);
    expect(result.rejections.get(0)?.message).toMatch(/dropped by retention/);
    expect(await exists(tenant, partitionNameFor(m6))).toBe(false);
    const v = await t.app.services.chainAuditor.verify(
      tenant as TenantId,
      utcMonth(now, -7),
      new Date(now.getTime() + DAY),
    );
    expect(v.ok).toBe(true);
    expect(v.months.find((m) => m.month.getTime() === m6.getTime())?.status).toBe('DROPPED');
  });

  it('a dropped month takes its ids with it: they are free again, the kept months’ ids still are duplicates', async () => {
    const tenant = tenantFor('retids');
    const now = new Date();
    await seed(t, tenant, now);
    const { rows: before } = await c.query<{ id: string; occurred_at: Date }>(
      `select e.id, e.occurred_at from "t_${tenant}".audit_events e
        join "t_${tenant}".event_ids i on i.id = e.id and i.occurred_at = e.occurred_at`,
    );
    const m6 = utcMonth(now, -6);
    const inM6 = before.filter((r) => utcMonth(r.occurred_at, 0).getTime() === m6.getTime());
    const kept = before.filter((r) => r.occurred_at.getTime() >= utcMonth(now, -3).getTime());
    expect(inM6.length).toBeGreaterThan(0);
    expect(kept.length).toBeGreaterThan(0);
    await setRetention(t, tenant, daysDropping(now, -3));
    const report = (await t.gql(tenant, RUN)).runMaintenance;
    expect(report.tenants[0].dropped.map((d: { partition: string }) => d.partition)).toContain(
      partitionNameFor(m6),
    );
    const { rows: left } = await c.query<{ id: string }>(`select id from "t_${tenant}".event_ids`);
    const leftIds = new Set(left.map((r) => r.id));
    expect(inM6.filter((r) => leftIds.has(r.id))).toEqual([]);
    expect(kept.every((r) => leftIds.has(r.id))).toBe(true);
    // An id of the dropped month names no stored event any more; a kept one still does.
    const again = await create(
      t,
      tenant,
      [event({ id: inM6[0]!.id }), event({ id: kept[0]!.id, occurredAt: now.toISOString() })],
      'COMMITTED',
    );
    expect(again.events.map((e: { status: string }) => e.status)).toEqual(['STORED', 'DUPLICATE']);
  });

  it('refuses a write older than the tenant’s own retention (a late event cannot recreate a dropped month)', async () => {
    const tenant = tenantFor('retv');
    const other = tenantFor('retv');
    const now = Date.now();
    await create(t, tenant, [event()]);
    await create(t, other, [event()]);
    const set = await setRetention(t, tenant, 30);
    expect(set.event.status).toBe('STORED');

    const old = event({ occurredAt: new Date(now - 31 * DAY).toISOString() });
    const refused = await create(t, tenant, [old]);
    expect(refused.__typename).toBe('ValidationError');
    expect(refused.issues).toEqual([
      { index: 0, field: 'occurredAt', message: 'older than the retention window of 30 days' },
    ]);
    // Inside the tenant's window it is stored; another tenant keeps the default.
    expect(
      (await create(t, tenant, [event({ occurredAt: new Date(now - 29 * DAY) })])).stored,
    ).toBe(1);
    expect((await create(t, other, [old])).stored).toBe(1);

    // Back to the default: accepted again. Both changes are the tenant's audit events.
    const back = await setRetention(t, tenant, null);
    expect(back.retention).toEqual({
      days: 400,
      default: 400,
      tenantDays: null,
      source: 'DEFAULT',
    });
    expect(
      (await create(t, tenant, [event({ id: randomUUID(), occurredAt: old.occurredAt })])).stored,
    ).toBe(1);
    const { rows } = await c.query<{ data: { before: unknown; after: unknown } }>(
      `select data from "t_${tenant}".audit_events
        where event_type = 'auditgraph.retention.changed' order by chain_seq, occurred_at`,
    );
    expect(rows.map((r) => r.data.after)).toEqual([
      { days: 30, tenantDays: 30, source: 'TENANT' },
      { days: 400, tenantDays: null, source: 'DEFAULT' },
    ]);

    // Out of range is a typed error, and changes nothing.
    for (const days of [0, 36_501]) {
      const r = (await t.gql(tenant, SET_RETENTION, { days })).setRetention;
      expect(r.__typename).toBe('ValidationError');
      expect(r.issues[0].field).toBe('input.days');
    }
    expect((await t.gql(tenant, RETENTION)).retention.source).toBe('DEFAULT');
  });

  it('creates partitions ahead of the run’s now', async () => {
    const tenant = tenantFor('reta');
    await t.app.services.tenants.ensure(tenant as TenantId, true);
    const now = new Date();
    const ahead = t.app.services.config.partitionsAhead;
    const before = await attached(tenant);
    const later = utcMonth(now, 2);
    const report = await t.app.services.maintenance.runOnce({
      tenant: tenant as TenantId,
      now: later,
    });
    const wanted = Array.from({ length: ahead + 1 }, (_, i) =>
      partitionNameFor(utcMonth(later, i)),
    );
    const created = wanted.filter((n) => !before.includes(n));
    expect(created.length).toBeGreaterThan(0);
    expect(report.tenants[0]!.partitionsCreated).toEqual(created);
    expect(report.tenants[0]!.dropped).toEqual([]);
    expect(await attached(tenant)).toContain(partitionNameFor(utcMonth(later, ahead)));
  });
});

describe('leader election', () => {
  let t2: TestApp;
  beforeAll(async () => {
    t2 = await startApp({
      MAINTENANCE_INTERVAL_MS: '0',
      CHECKPOINT_INTERVAL_MS: '0',
      INSTANCE_ID: 'retention-b',
    });
  });
  afterAll(async () => {
    await t2?.stop();
  });

  it('an instance that cannot take the maintenance lock does nothing and says so', async () => {
    const tenant = tenantFor('retl');
    const now = new Date();
    await seed(t, tenant, now);
    await setRetention(t, tenant, daysDropping(now, -3));
    const holder = await sqlClient();
    try {
      await holder.query('select pg_advisory_lock(hashtext($1))', [MAINTENANCE_LOCK]);
      const r = await t.app.services.maintenance.runOnce({ tenant: tenant as TenantId });
      expect(r.leader).toBe(false);
      expect(r.tenants).toEqual([]);
      expect(r.note).toMatch(/another instance/);
      expect(await drops(tenant)).toEqual([]);
      expect(await exists(tenant, partitionNameFor(utcMonth(now, -6)))).toBe(true);
    } finally {
      await holder.end();
    }
    const r = await t.app.services.maintenance.runOnce({ tenant: tenant as TenantId });
    expect(r.leader).toBe(true);
    expect(r.tenants[0]!.dropped).toHaveLength(3);
  });

  it('two instances at the same moment: exactly one leads, each month is dropped once', async () => {
    const tenant = tenantFor('retl');
    const now = new Date();
    const seeded = await seed(t, tenant, now);
    await setRetention(t, tenant, daysDropping(now, -3));
    // Both pools hold an open connection already, so neither start is slowed by connecting.
    await Promise.all([t.app.db.query('select 1'), t2.app.db.query('select 1')]);

    const reports = await Promise.all([
      t.app.services.maintenance.runOnce({ tenant: tenant as TenantId }),
      t2.app.services.maintenance.runOnce({ tenant: tenant as TenantId }),
    ]);
    expect(reports.map((r) => r.instanceId)).toEqual(['retention-a', 'retention-b']);
    expect(reports.filter((r) => r.leader)).toHaveLength(1);
    const leaderIndex = reports.findIndex((r) => r.leader);
    const leader = reports[leaderIndex]!;
    const follower = reports[1 - leaderIndex]!;
    expect(follower.tenants).toEqual([]);
    expect(follower.note).toMatch(/another instance/);
    const months = [-6, -5, -4].map((o) => utcMonth(now, o));
    expect(leader.tenants[0]!.dropped.map((d) => d.month.toISOString())).toEqual(
      months.map((m) => m.toISOString()),
    );
    const rows = await drops(tenant);
    expect(rows).toHaveLength(3);
    expect(rows.map((r) => r.instance_id)).toEqual(months.map(() => leader.instanceId));
    for (const r of rows) expect(Number(r.row_count)).toBe(seeded.counts.get(r.partition_name));

    // And run again by the other: nothing is dropped twice.
    const other = leaderIndex === 0 ? t2 : t;
    const next = await other.app.services.maintenance.runOnce({ tenant: tenant as TenantId });
    expect(next.leader).toBe(true);
    expect(next.tenants[0]!.dropped).toEqual([]);
    expect(await drops(tenant)).toHaveLength(3);
  });
});
