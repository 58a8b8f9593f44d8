import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countEvents, create } from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { createKey, keyClient, startKeysApp } from './support/keys.js';

/**
 * Issue #6 part 4: legal holds. placeLegalHold (a correlation id or a time range, with a
 * reason), releaseLegalHold (with a reason), listed by legalHolds — scope audit:admin — and each
 * placement and release is itself an audit event of the tenant, counted like any other.
 */

const HOLD_FIELDS = `id: holdId correlationId occurredFrom occurredTo reason placedAt placedBy
  releasedAt releasedBy releaseReason active`;

const PLACE = `mutation Place($input: PlaceLegalHoldInput!) {
  placeLegalHold(input: $input) {
    __typename
    ... on LegalHoldPayload { hold { ${HOLD_FIELDS} } event { id: eventId status error } }
    ... on AuditError { message retryable }
    ... on ValidationError { issues { field message } }
  }
}`;

const RELEASE = `mutation Release($input: ReleaseLegalHoldInput!) {
  releaseLegalHold(input: $input) {
    __typename
    ... on LegalHoldPayload { hold { ${HOLD_FIELDS} } event { id: eventId status } }
    ... on AuditError { message retryable }
    ... on ValidationError { issues { field message } }
  }
}`;

const LIST = `query List($active: Boolean) {
  legalHolds(active: $active) {
    __typename
    ... on LegalHoldList { count holds { ${HOLD_FIELDS} } }
  }
}`;

const HOLD_EVENTS = `query {
  auditEvents(first: 50, order: OCCURRED_AT_ASC, filter: {
    eventTypes: ["auditgraph.legal_hold.placed", "auditgraph.legal_hold.released"]
  }) {
    __typename
    ... on AuditEventConnection { edges { node {
      id: eventId eventType category action correlationId
      actor { type id: actorId } resource { type id: resourceId } data
    } } }
    
  }
}`;

const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored pending deadLettered discarded duplicates identityHolds
}  } }`;

describe('legal holds over GraphQL (AUTH_MODE=dev)', () => {
  let t: TestApp;
  let c: pg.Client;
  const tenant = newTenant('hold');
  const from = '2026-01-01T00:00:00.000Z';
  const to = '2026-02-01T00:00:00.000Z';

  beforeAll(async () => {
    t = await startApp({ MAINTENANCE_INTERVAL_MS: '0' });
    c = await sqlClient();
    expect((await create(t, tenant, [event({ correlationId: 'case-a' })])).stored).toBe(1);
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(tenant);
  });

  const place = async (input: Record<string, unknown>) =>
    (await t.gql(tenant, PLACE, { input })).placeLegalHold;
  const release = async (input: Record<string, unknown>) =>
    (await t.gql(tenant, RELEASE, { input })).releaseLegalHold;
  const list = async (active?: boolean) =>
    (await t.gql(tenant, LIST, active === undefined ? {} : { active })).legalHolds;
  const holdRows = async () =>
    (await c.query(`select count(*)::int as n from "t_${tenant}".legal_holds`)).rows[0].n as number;

  it('places, lists and releases holds; each change is an audit event of the tenant', async () => {
    const byCorrelation = await place({ correlationId: 'case-a', reason: '  subpoena 17  ' });
    expect(byCorrelation.__typename).toBe('LegalHoldPayload');
    expect(byCorrelation.hold).toMatchObject({
      correlationId: 'case-a',
      occurredFrom: null,
      occurredTo: null,
      reason: 'subpoena 17',
      placedBy: 'anonymous',
      releasedAt: null,
      active: true,
    });
    expect(byCorrelation.event.status).toBe('STORED');

    const byRange = await place({ occurredFrom: from, occurredTo: to, reason: 'audit of Q1' });
    expect(byRange.hold).toMatchObject({
      correlationId: null,
      occurredFrom: from,
      occurredTo: to,
      active: true,
    });

    // Stored in the tenant's table, as placed.
    const { rows } = await c.query(
      `select id, correlation_id, reason, released_at from "t_${tenant}".legal_holds order by placed_at`,
    );
    expect(rows.map((r) => [r.id, r.correlation_id, r.reason, r.released_at])).toEqual([
      [byCorrelation.hold.id, 'case-a', 'subpoena 17', null],
      [byRange.hold.id, null, 'audit of Q1', null],
    ]);

    let all = await list();
    expect(all.count).toBe(2);
    expect(all.holds.map((h: { id: string }) => h.id)).toEqual([
      byCorrelation.hold.id,
      byRange.hold.id,
    ]);

    const released = await release({ id: byRange.hold.id, reason: 'Q1 audit closed' });
    expect(released.__typename).toBe('LegalHoldPayload');
    expect(released.hold).toMatchObject({
      id: byRange.hold.id,
      active: false,
      releasedBy: 'anonymous',
      releaseReason: 'Q1 audit closed',
    });
    expect(released.hold.releasedAt).not.toBeNull();
    expect(released.event.status).toBe('STORED');

    expect((await list(true)).holds.map((h: { id: string }) => h.id)).toEqual([
      byCorrelation.hold.id,
    ]);
    expect((await list(false)).holds.map((h: { id: string }) => h.id)).toEqual([byRange.hold.id]);
    all = await list();
    expect(all.count).toBe(2); // released holds are kept, never deleted

    // Releasing twice is an error that names the first release; nothing changes.
    const twice = await release({ id: byRange.hold.id, reason: 'again' });
    expect(twice.__typename).toBe('ValidationError');
    expect(twice.issues[0].field).toBe('input.id');
    expect(twice.issues[0].message).toMatch(/already released at/);
    const { rows: after } = await c.query(
      `select release_reason from "t_${tenant}".legal_holds where id = $1`,
      [byRange.hold.id],
    );
    expect(after[0].release_reason).toBe('Q1 audit closed');

    // The audit events: one per placement and release, in the tenant's own log.
    const events = (await t.gql(tenant, HOLD_EVENTS)).auditEvents.edges.map(
      (e: { node: unknown }) => e.node,
    );
    expect(events).toHaveLength(3);
    expect(events.map((e: { eventType: string }) => e.eventType)).toEqual([
      'auditgraph.legal_hold.placed',
      'auditgraph.legal_hold.placed',
      'auditgraph.legal_hold.released',
    ]);
    expect(events.map((e: { id: string }) => e.id)).toEqual([
      byCorrelation.event.id,
      byRange.event.id,
      released.event.id,
    ]);
    expect(events[0]).toMatchObject({
      category: 'lifecycle',
      action: 'place',
      actor: { type: 'anonymous', id: 'anonymous' },
      resource: { type: 'legal_hold', id: byCorrelation.hold.id },
      data: {
        holdId: byCorrelation.hold.id,
        reason: 'subpoena 17',
        scope: { correlationId: 'case-a' },
      },
    });
    expect(events[1].data.scope).toEqual({ occurredFrom: from, occurredTo: to });
    expect(events[2]).toMatchObject({
      action: 'release',
      resource: { type: 'legal_hold', id: byRange.hold.id },
      data: { reason: 'Q1 audit closed', placedReason: 'audit of Q1' },
    });

    // Counted like any event: 1 written by the test + 3 written by the service.
    const s = (await t.gql(tenant, STATS)).auditStats;
    expect(s).toMatchObject({ accepted: 4, stored: 4, pending: 0, identityHolds: true });
    expect(await countEvents(c, tenant)).toBe(4);
  });

  it.each([
    ['no scope', { reason: 'r' }, 'input', /give a correlationId/],
    [
      'both scopes',
      { correlationId: 'x', occurredFrom: from, occurredTo: to, reason: 'r' },
      'input',
      /not both/,
    ],
    ['half a range', { occurredFrom: from, reason: 'r' }, 'input.occurredTo', /required/],
    [
      'an empty range',
      { occurredFrom: to, occurredTo: from, reason: 'r' },
      'input.occurredTo',
      /later/,
    ],
    [
      'an equal range',
      { occurredFrom: from, occurredTo: from, reason: 'r' },
      'input.occurredTo',
      /later/,
    ],
    ['an empty reason', { correlationId: 'x', reason: '   ' }, 'input.reason', /1 to 1000/],
    [
      'a long reason',
      { correlationId: 'x', reason: 'r'.repeat(1001) },
      'input.reason',
      /1 to 1000/,
    ],
    [
      'an empty correlation id',
      { correlationId: '', reason: 'r' },
      'input.correlationId',
      /1 to 255/,
    ],
    [
      'a long correlation id',
      { correlationId: 'c'.repeat(256), reason: 'r' },
      'input.correlationId',
      /1 to 255/,
    ],
    ['a NUL in the reason', { correlationId: 'x', reason: 'a\u0000b' }, 'input.reason', /NUL/],
  ])(
    'placing a hold with %s is a ValidationError and places nothing',
    async (_name, input, field, message) => {
      const before = await holdRows();
      const events = await countEvents(c, tenant);
      const r = await place(input);
      expect(r.__typename).toBe('ValidationError');
      expect(r.retryable).toBe(false);
      expect(r.issues).toContainEqual({ field, message: expect.stringMatching(message) });
      expect(await holdRows()).toBe(before);
      expect(await countEvents(c, tenant)).toBe(events);
    },
  );

  it('accepts a reason of exactly 1000 characters', async () => {
    const r = await place({ correlationId: 'long', reason: 'r'.repeat(1000) });
    expect(r.__typename).toBe('LegalHoldPayload');
    expect(r.hold.reason).toHaveLength(1000);
  });

  it.each([
    ['an unknown id', () => randomUUID(), 'r', 'input.id', /no legal hold with this id/],
    ['a malformed id', () => 'not-a-uuid', 'r', 'input.id', /no legal hold with this id/],
    ['an empty reason', () => randomUUID(), '', 'input.reason', /1 to 1000/],
  ])('releasing %s is a ValidationError', async (_name, id, reason, field, message) => {
    const r = await release({ id: id(), reason });
    expect(r.__typename).toBe('ValidationError');
    expect(r.issues).toContainEqual({ field, message: expect.stringMatching(message) });
  });

  it('holds of one tenant are invisible to another', async () => {
    const other = newTenant('hold');
    try {
      await create(t, other, [event()]);
      const r = (await t.gql(other, LIST)).legalHolds;
      expect(r.count).toBe(0);
      const mine = (await list()).holds[0];
      const foreign = (await t.gql(other, RELEASE, { input: { id: mine.id, reason: 'x' } }))
        .releaseLegalHold;
      expect(foreign.__typename).toBe('ValidationError');
      expect((await list()).holds[0].active).toBe(mine.active);
    } finally {
      await dropTenants(other);
    }
  });

  it('an unknown tenant is refused as UNKNOWN_TENANT (a hold never provisions a tenant)', async () => {
    const ghost = newTenant('ghost');
    const r = await t.refused(ghost, PLACE, { input: { correlationId: 'x', reason: 'r' } });
    expect(r.extensions.code).toBe('UNKNOWN_TENANT');
    const { rows } = await c.query('select 1 from auditgraph.tenants where tenant_id = $1', [
      ghost,
    ]);
    expect(rows).toHaveLength(0);
  });
});

describe('legal holds need the audit:admin scope (AUTH_MODE=keys)', () => {
  let t: TestApp;
  const tenant = newTenant('holdk');

  beforeAll(async () => {
    t = await startKeysApp({ AUDIT_READS: 'false', MAINTENANCE_INTERVAL_MS: '0' });
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
  });

  const OPS: [string, string, Record<string, unknown>][] = [
    ['placeLegalHold', PLACE, { input: { correlationId: 'x', reason: 'r' } }],
    ['releaseLegalHold', RELEASE, { input: { id: randomUUID(), reason: 'r' } }],
    ['legalHolds', LIST, {}],
    [
      'setRetention',
      'mutation { setRetention(input: { days: 10 }) { __typename ... on AuditError { message } } }',
      {},
    ],
    ['retention', 'query { retention { __typename } }', {}],
    [
      'runMaintenance',
      'mutation { runMaintenance { __typename ... on AuditError { message } } }',
      {},
    ],
  ];

  it('refuses every lifecycle field to a key without audit:admin, and changes nothing', async () => {
    const key = await createKey(t, tenant, ['events:write', 'events:read', 'deadletters:admin']);
    const client = keyClient(t, key.secret);
    for (const [field, query, variables] of OPS) {
      const r = await client.refused(query, variables);
      expect(r, field).toMatchObject({ path: [field], extensions: { code: 'FORBIDDEN' } });
      expect(r.message, field).toMatch(/audit:admin/);
    }
    const c = await sqlClient();
    try {
      const holds = await c.query(`select count(*)::int as n from "t_${tenant}".legal_holds`);
      expect(holds.rows[0].n).toBe(0);
      const ret = await c.query(
        'select retention_days from auditgraph.tenants where tenant_id = $1',
        [tenant],
      );
      expect(ret.rows[0].retention_days).toBeNull();
    } finally {
      await c.end();
    }
  });

  it('a key with audit:admin places and releases holds, named by its label', async () => {
    const admin = await createKey(t, tenant, ['audit:admin', 'events:read'], {
      label: 'legal-team',
    });
    const client = keyClient(t, admin.secret);
    const placed = (
      await client.gql(PLACE, { input: { correlationId: 'x', reason: 'court order' } })
    ).placeLegalHold;
    expect(placed.__typename).toBe('LegalHoldPayload');
    expect(placed.hold.placedBy).toBe('api_key:legal-team');
    expect(placed.event.status).toBe('STORED');
    const released = (
      await client.gql(RELEASE, { input: { id: placed.hold.id, reason: 'order lifted' } })
    ).releaseLegalHold;
    expect(released.hold.releasedBy).toBe('api_key:legal-team');

    const events = (await client.gql(HOLD_EVENTS)).auditEvents.edges.map(
      (e: { node: unknown }) => e.node,
    );
    expect(events).toHaveLength(2);
    for (const e of events) {
      expect(e.actor).toEqual({ type: 'api_key', id: 'legal-team' });
      expect(e.data.keyId).toBe(admin.id);
    }
  });
});
