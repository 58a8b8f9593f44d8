import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Migrator } from '../src/db/migrations.js';
import type { TenantId } from '../src/domain/tenant.js';
import { event, STATS } from './support/harness.js';
import { createCommitted, statuses, useTwoApps } from './support/two-apps.js';

/**
 * What an event id means: one event per tenant, whatever occurredAt comes with it later. A
 * second event under the same id is a duplicate, never stored, so it cannot take over look-ups
 * by id — also when two instances write it at once in different months.
 */

const DAY = 86_400_000;

const apps = useTwoApps();
const { tenant, writerOnB } = apps;
const create = createCommitted;

async function rowsWithId(tn: string, id: string) {
  const { rows } = await apps.sql.query<{ occurred_at: Date; event_type: string; data: unknown }>(
    `select occurred_at, event_type, data from "t_${tn}".audit_events where id = $1`,
    [id],
  );
  return rows;
}

const BY_ID = `query ById($id: String!, $occurredAt: DateTime) {
  auditEvent(eventId: $id, occurredAt: $occurredAt) {
    __typename
    ... on AuditEvent { id: eventId occurredAt eventType action data }
  }
}`;

describe('an event id is one event per tenant', () => {
  it('re-sending an id with an occurredAt 35 days earlier and other content is a DUPLICATE conflict: look-up by id still returns the original', async () => {
    const tn = tenant('redir');
    const id = randomUUID();
    const now = Date.now();
    const original = event({
      id,
      occurredAt: new Date(now - 60_000).toISOString(),
      action: 'approve',
      data: { amount: 10 },
    });
    expect(statuses(await create(apps.a, tn, [original]))).toEqual(['STORED']);

    const forged = event({
      id,
      occurredAt: new Date(now - 35 * DAY).toISOString(),
      action: 'reject',
      data: { amount: 1_000_000 },
    });
    const r = await create(apps.a, tn, [forged]);
    expect(r.__typename).toBe('CreateAuditEventsPayload');
    expect(statuses(r)).toEqual(['DUPLICATE']);
    expect(r).toMatchObject({ accepted: 1, stored: 0, duplicates: 1 });

    const rows = await rowsWithId(tn, id);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.occurred_at.toISOString()).toBe(original.occurredAt);

    const found = (await apps.a.gql(tn, BY_ID, { id })).auditEvent;
    expect(found).toMatchObject({
      __typename: 'AuditEvent',
      id,
      occurredAt: original.occurredAt,
      action: 'approve',
      data: { amount: 10 },
    });
    // Nothing is stored under the forged instant either.
    expect(
      (await apps.a.gql(tn, BY_ID, { id, occurredAt: forged.occurredAt })).auditEvent,
    ).toBeNull();

    const s = (await apps.a.gql(tn, STATS)).auditStats;
    expect(s).toMatchObject({
      accepted: 2,
      stored: 1,
      duplicates: 1,
      pending: 0,
      deadLettered: 0,
      discarded: 0,
      conflicts: 1,
      identityHolds: true,
    });
  });

  it('the same id at the same instant and with the same content is a plain duplicate, not a conflict', async () => {
    const tn = tenant('same');
    const e = event({ id: randomUUID() });
    expect(statuses(await create(apps.a, tn, [e]))).toEqual(['STORED']);
    expect(statuses(await create(apps.a, tn, [{ ...e }]))).toEqual(['DUPLICATE']);
    expect((await apps.a.gql(tn, STATS)).auditStats).toMatchObject({
      accepted: 2,
      stored: 1,
      duplicates: 1,
      conflicts: 0,
    });
  });

  it('within one call, two events with one id and different occurredAt: the first is STORED, the second a DUPLICATE conflict', async () => {
    const tn = tenant('incall');
    const id = randomUUID();
    const now = Date.now();
    const first = event({ id, occurredAt: new Date(now - 1_000).toISOString(), action: 'one' });
    const second = event({ id, occurredAt: new Date(now - 35 * DAY).toISOString(), action: 'two' });
    const r = await create(apps.a, tn, [first, second]);
    expect(statuses(r)).toEqual(['STORED', 'DUPLICATE']);
    const rows = await rowsWithId(tn, id);
    expect(rows.map((x) => x.occurred_at.toISOString())).toEqual([first.occurredAt]);
    expect((await apps.a.gql(tn, STATS)).auditStats).toMatchObject({
      accepted: 2,
      stored: 1,
      duplicates: 1,
      conflicts: 1,
      identityHolds: true,
    });
  });

  it('two instances writing the same ids concurrently, each in another month: exactly one event per id is stored', async () => {
    const tn = tenant('race');
    // Provisioned first (by the key), so neither instance's first write races provisioning.
    const onB = await writerOnB(tn);
    expect(statuses(await create(apps.a, tn, [event()]))).toEqual(['STORED']);
    expect(statuses(await onB.create([event()]))).toEqual(['STORED']);
    const now = Date.now();
    const ids = Array.from({ length: 20 }, () => randomUUID());
    const recent = (id: string) =>
      event({ id, occurredAt: new Date(now - 5_000).toISOString(), action: 'recent' });
    const old = (id: string) =>
      event({ id, occurredAt: new Date(now - 35 * DAY).toISOString(), action: 'old' });
    // Each id in two calls at once: one on each instance, one in each month (two chain heads,
    // so nothing but the id itself orders the two transactions).
    const results = await Promise.all(
      ids.flatMap((id) => [create(apps.a, tn, [recent(id)]), onB.create([old(id)])]),
    );
    for (const r of results) expect(r.__typename).toBe('CreateAuditEventsPayload');
    ids.forEach((_, k) => {
      const pair = [results[2 * k]!, results[2 * k + 1]!].flatMap(statuses).sort();
      expect(pair).toEqual(['DUPLICATE', 'STORED']);
    });
    const { rows } = await apps.sql.query<{ id: string; n: number }>(
      `select id, count(*)::int as n from "t_${tn}".audit_events where id = any($1::uuid[]) group by id`,
      [ids],
    );
    expect(rows).toHaveLength(ids.length);
    expect(rows.every((r) => r.n === 1)).toBe(true);
  });
});

/** The migration that made ids unique (later ones are left applied). */
const EVENT_IDS_MIGRATION = '20261206210711_event_ids';

describe('a tenant written before ids were unique', () => {
  it('the migration gives each stored id to the event received first, so a re-send stored earlier under another month cannot keep redirecting look-ups', async () => {
    const tn = tenant('legacy');
    const id = randomUUID();
    const now = Date.now();
    const original = event({
      id,
      occurredAt: new Date(now - 60_000).toISOString(),
      action: 'keep',
    });
    // Another event 35 days back, so that month's partition exists for the legacy row below.
    const other = event({ occurredAt: new Date(now - 35 * DAY).toISOString() });
    expect(statuses(await create(apps.a, tn, [original, other]))).toEqual(['STORED', 'STORED']);
    const migrator = new Migrator(apps.a.app.db);
    // The tenant as it was before the id table: the migration undone, and the forged re-send
    // of the same id 35 days earlier, received later, stored beside the original.
    await apps.sql.query(`drop table "t_${tn}".event_ids`);
    await apps.sql.query(
      'delete from auditgraph.tenant_migrations where tenant_id = $1 and name = $2',
      [tn, EVENT_IDS_MIGRATION],
    );
    await apps.sql.query(
      `insert into "t_${tn}".audit_events
         (id, occurred_at, received_at, event_type, category, action, outcome, correlation_id,
          actor_type, actor_id, resource_type, resource_id, batch_id)
       select id, $2::timestamptz, received_at + interval '1 minute', event_type, category,
              'forged', outcome, correlation_id, actor_type, actor_id, resource_type,
              resource_id, batch_id
         from "t_${tn}".audit_events where id = $1`,
      [id, new Date(now - 35 * DAY - 1_000).toISOString()],
    );
    expect(await rowsWithId(tn, id)).toHaveLength(2);

    expect(await migrator.migrateTenant(tn as TenantId)).toBe(1);
    const { rows } = await apps.sql.query<{ occurred_at: Date }>(
      `select occurred_at from "t_${tn}".event_ids where id = $1`,
      [id],
    );
    expect(rows.map((r) => r.occurred_at.toISOString())).toEqual([original.occurredAt]);
    const found = (await apps.a.gql(tn, BY_ID, { id })).auditEvent;
    expect(found).toMatchObject({ occurredAt: original.occurredAt, action: 'keep' });
    // And the id is taken: a third event under it, in yet another instant, is not stored.
    const third = event({ id, occurredAt: new Date(now - 10 * DAY).toISOString() });
    expect(statuses(await create(apps.a, tn, [third]))).toEqual(['DUPLICATE']);
    expect(await rowsWithId(tn, id)).toHaveLength(2);
  });
});
