import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LIMITS } from '../src/domain/event.js';
import type { TenantId } from '../src/domain/tenant.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  PAGE,
  STATS,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Input validation: the field limits of an event, a rejection refuses the whole call, and the
 * tenant comes from the request. Every rejection is checked against the
 * database: the call stored nothing and accepted nothing.
 *
 * Two kinds of rejection exist:
 * - `ValidationError` (a typed result, `issues[]` naming event index and field) for every rule
 *   the service checks itself;
 * - a GraphQL error (no `data`, HTTP 400) where the GraphQL type system refuses the input
 *   before the resolver runs: `durationMs` outside 32-bit Int, a non-integer `durationMs`,
 *   `occurredAt` with more than millisecond precision (DateTime scalar), `data` that is not a
 *   JSON object (JSONObject scalar). Those tests say so in their names.
 */

const COMMIT_TIMEOUT_MS = 3_000;
const DAY = 86_400_000;

let t: TestApp;
let sql: pg.Client;
/** Provisioned, but every call sent as this tenant must be rejected: it must stay empty. */
const rejectTenant = newTenant('vrej');
/** Receives the boundary values that must be accepted. */
const acceptTenant = newTenant('vacc');
const created: string[] = [rejectTenant, acceptTenant];

beforeAll(async () => {
  t = await startApp({
    COMMIT_TIMEOUT_MS: String(COMMIT_TIMEOUT_MS),
    SHUTDOWN_TIMEOUT_MS: '1000',
  });
  sql = await sqlClient();
  // Provisioned up front so "nothing stored" is a real count(*) over an existing table.
  await t.app.services.tenants.provision(rejectTenant as TenantId);
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(...created);
});

async function countRows(tenant: string): Promise<number> {
  const { rows } = await sql.query<{ n: number }>(
    `select count(*)::int as n from "t_${tenant}".audit_events`,
  );
  return rows[0]!.n;
}

interface Stats {
  accepted: number;
  stored: number;
  duplicates: number;
  pending: number;
  deadLettered: number;
  discarded: number;
}

/**
 * The tenant's counters. A tenant whose only write was rejected whole was never provisioned, so
 * auditStats answers UNKNOWN_TENANT — which means, just as well, that it accepted nothing.
 */
async function statsOf(tenant: string): Promise<Stats> {
  const r = await t.raw(tenant, { query: STATS });
  if (r.body.errors?.[0]?.extensions?.code === 'UNKNOWN_TENANT') {
    return { accepted: 0, stored: 0, duplicates: 0, pending: 0, deadLettered: 0, discarded: 0 };
  }
  expect(r.body.errors).toBeUndefined();
  expect(r.body.data.auditStats.__typename).toBe('AuditStats');
  return r.body.data.auditStats;
}

/** The reject tenant holds no row and has accepted nothing, ever. */
async function expectNothingStored(): Promise<void> {
  expect(await countRows(rejectTenant)).toBe(0);
  const s = await statsOf(rejectTenant);
  expect(s.accepted).toBe(0);
  expect(s.pending).toBe(0);
}

/** Three good events with `bad` in the middle (index 2): one bad event must sink the call. */
function amidGood(bad: Record<string, unknown>): Record<string, unknown>[] {
  return [event(), event(), bad, event()];
}

interface ExpectedIssue {
  index: number | null;
  field: string | RegExp;
}

/** Sends `events` as the reject tenant; expects a ValidationError naming each expected issue. */
async function expectValidationError(
  events: Record<string, unknown>[],
  expected: ExpectedIssue[],
): Promise<{ message: string; issues: { index: number | null; field: string }[] }> {
  const r = await t.raw(rejectTenant, { query: CREATE, variables: { input: { events } } });
  expect(r.body.errors, JSON.stringify(r.body.errors)).toBeUndefined();
  const res = r.body.data.createAuditEvents;
  expect(res.__typename, JSON.stringify(res)).toBe('ValidationError');
  expect(res.retryable).toBe(false);
  for (const e of expected) {
    expect(res.issues).toContainEqual(
      expect.objectContaining({
        index: e.index,
        field: typeof e.field === 'string' ? e.field : expect.stringMatching(e.field),
      }),
    );
  }
  await expectNothingStored();
  return res;
}

/** Sends `events` as the reject tenant; expects a GraphQL (type-level) error and no data. */
async function expectGraphQLError(events: Record<string, unknown>[]): Promise<{ message: string }> {
  const r = await t.raw(rejectTenant, { query: CREATE, variables: { input: { events } } });
  expect(r.status).toBe(400);
  expect(Array.isArray(r.body.errors) && r.body.errors.length > 0).toBe(true);
  expect(r.body.data ?? null).toBeNull();
  await expectNothingStored();
  return r.body.errors[0];
}

/** Sends one event as the accept tenant (COMMITTED); expects it STORED; returns its stored row. */
async function expectStored(e: Record<string, unknown>): Promise<Record<string, any>> {
  const r = await t.gql(acceptTenant, CREATE, { input: { events: [e] } });
  const res = r.createAuditEvents;
  expect(res.__typename, JSON.stringify(res)).toBe('CreateAuditEventsPayload');
  expect(res.stored).toBe(1);
  const id = res.events[0].id;
  const { rows } = await sql.query(`select * from "t_${acceptTenant}".audit_events where id = $1`, [
    id,
  ]);
  expect(rows).toHaveLength(1);
  return rows[0];
}

/**
 * For an event validation let through although PostgreSQL cannot store it, next to a good one:
 * acceptable answers are a ValidationError (nothing accepted), or an accepted call in which the
 * good event is STORED and the bad one has a final status (STORED or DEAD_LETTERED, isolated
 * from its batch). Not acceptable: CommitTimeoutError with the events stuck pending.
 */
function expectRejectedOrSettled(res: Record<string, any>, seen: string): void {
  expect(['ValidationError', 'CreateAuditEventsPayload'], seen).toContain(res.__typename);
  if (res.__typename === 'CreateAuditEventsPayload') {
    expect(res.events[0].status, seen).toBe('STORED');
    expect(['STORED', 'DEAD_LETTERED'], seen).toContain(res.events[1].status);
  }
}

function str(n: number, ch = 'x'): string {
  return ch.repeat(n);
}

/** An object nested `levels` deep: nest(1) = {}, nest(2) = {"a":{}}. */
function nest(levels: number): Record<string, unknown> {
  let v: Record<string, unknown> = {};
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
}

type Setter = (v: string) => Record<string, unknown>;
const baseActor = { type: 'user', id: 'u-1' };
const baseResource = { type: 'workflow', id: 'wf-1' };

/** Every length-limited text field: GraphQL path, limit, how to set it, its column. */
const TEXT_FIELDS: [string, number, Setter, string][] = [
  ['eventType', LIMITS.eventType, (v) => ({ eventType: v }), 'event_type'],
  ['category', LIMITS.category, (v) => ({ category: v }), 'category'],
  ['action', LIMITS.action, (v) => ({ action: v }), 'action'],
  ['correlationId', LIMITS.correlationId, (v) => ({ correlationId: v }), 'correlation_id'],
  ['actor.type', LIMITS.actorType, (v) => ({ actor: { ...baseActor, type: v } }), 'actor_type'],
  ['actor.id', LIMITS.actorId, (v) => ({ actor: { ...baseActor, id: v } }), 'actor_id'],
  [
    'resource.type',
    LIMITS.resourceType,
    (v) => ({ resource: { ...baseResource, type: v } }),
    'resource_type',
  ],
  [
    'resource.id',
    LIMITS.resourceId,
    (v) => ({ resource: { ...baseResource, id: v } }),
    'resource_id',
  ],
  [
    'resource.name',
    LIMITS.resourceName,
    (v) => ({ resource: { ...baseResource, name: v } }),
    'resource_name',
  ],
  ['severity', LIMITS.severity, (v) => ({ severity: v }), 'severity'],
  ['errorCode', LIMITS.errorCode, (v) => ({ errorCode: v }), 'error_code'],
  ['errorMessage', LIMITS.errorMessage, (v) => ({ errorMessage: v }), 'error_message'],
  ['namespace', LIMITS.namespace, (v) => ({ namespace: v }), 'namespace'],
  ['clusterId', LIMITS.clusterId, (v) => ({ clusterId: v }), 'cluster_id'],
  ['traceId', LIMITS.traceId, (v) => ({ traceId: v }), 'trace_id'],
  ['spanId', LIMITS.spanId, (v) => ({ spanId: v }), 'span_id'],
];

describe('field limits of the data model', () => {
  it('quotes the limits the schema documents', () => {
    expect(LIMITS).toMatchObject({
      eventType: 100,
      category: 50,
      action: 50,
      correlationId: 255,
      actorType: 100,
      actorId: 255,
      resourceType: 100,
      resourceId: 255,
      resourceName: 255,
      severity: 20,
      errorCode: 50,
      errorMessage: 4096,
      namespace: 253,
      clusterId: 255,
      traceId: 255,
      spanId: 255,
      dataBytes: 256 * 1024,
      dataDepth: 10,
      durationMs: 2 ** 31 - 1,
    });
  });

  describe.each(TEXT_FIELDS)('%s (at most %i characters)', (field, limit, set, column) => {
    it('rejects one character over the limit as a ValidationError naming the event and field, storing nothing of the call', async () => {
      await expectValidationError(amidGood(event(set(str(limit + 1)))), [{ index: 2, field }]);
    });

    it('stores exactly the limit, counted in characters (non-ASCII), unchanged', async () => {
      const value = str(limit, 'é');
      const row = await expectStored(event(set(value)));
      expect(row[column]).toBe(value);
    });
  });

  it.each([
    ['eventType', { eventType: '' }],
    ['category', { category: '' }],
    ['action', { action: '' }],
    ['correlationId', { correlationId: '' }],
    ['actor.type', { actor: { ...baseActor, type: '' } }],
    ['actor.id', { actor: { ...baseActor, id: '' } }],
    ['resource.type', { resource: { ...baseResource, type: '' } }],
    ['resource.id', { resource: { ...baseResource, id: '' } }],
  ])('rejects an empty required %s', async (field, overrides) => {
    await expectValidationError(amidGood(event(overrides)), [{ index: 2, field }]);
  });

  it('lists every problem of every event in one ValidationError', async () => {
    const res = await expectValidationError(
      [
        event({ eventType: str(LIMITS.eventType + 1) }),
        event(),
        event({ correlationId: '', actor: { type: 'user', id: 'u', ip: 'abc' } }),
      ],
      [
        { index: 0, field: 'eventType' },
        { index: 2, field: 'correlationId' },
        { index: 2, field: 'actor.ip' },
      ],
    );
    expect(res.issues).toHaveLength(3);
    expect(res.message).toMatch(/events\[0\]\.eventType/);
  });
});

describe('actor.ip', () => {
  it.each(['999.1.1.1', 'abc', '1.2.3', '10.0.0.1/8', '::g', '', '1.2.3.04'])(
    'rejects %j',
    async (ip) => {
      await expectValidationError(amidGood(event({ actor: { ...baseActor, ip } })), [
        { index: 2, field: 'actor.ip' },
      ]);
    },
  );

  it.each(['::1', '10.0.0.1', '2001:db8::8a2e:370:7334', '::ffff:255.255.255.255'])(
    'stores %j',
    async (ip) => {
      const row = await expectStored(event({ actor: { ...baseActor, ip } }));
      expect(row.actor_ip).toBe(ip);
    },
  );

  it('stores an event without an ip', async () => {
    const row = await expectStored(event({ actor: baseActor }));
    expect(row.actor_ip).toBeNull();
  });

  // Node's isIP accepts IPv6 zone ids of any length ("fe80::1%<interface>"), while the column is
  // varchar(45). Such an event passes validation, then every batch write fails with 22001 and,
  // with no dead-letter queue, the event (and every event sharing its batch) stays pending
  // forever. Either validation rejects it, or it is stored: never accepted-and-stuck.
  it('never accepts an address the actor_ip column cannot hold (a long IPv6 zone id) only to leave it pending', async () => {
    const tenant = newTenant('vzone');
    created.push(tenant);
    const ip = `fe80::1%${str(60, 'e')}`;
    const r = await t.gql(tenant, CREATE, {
      input: { events: [event(), event({ actor: { ...baseActor, ip } })] },
    });
    const res = r.createAuditEvents;
    const s = await statsOf(tenant);
    const seen = JSON.stringify({ answer: res, stats: s });
    expectRejectedOrSettled(res, seen);
    expect(s.pending, seen).toBe(0);
  });
});

describe('ids', () => {
  it('rejects a parentEventId that is not a UUID', async () => {
    await expectValidationError(amidGood(event({ parentEventId: 'parent-1' })), [
      { index: 2, field: 'parentEventId' },
    ]);
  });

  it('rejects an id that is not a UUID', async () => {
    await expectValidationError(amidGood(event({ id: '1234' })), [{ index: 2, field: 'id' }]);
    await expectValidationError(amidGood(event({ id: '' })), [{ index: 2, field: 'id' }]);
  });

  it('stores a client UUID id and parentEventId, lower-cased', async () => {
    const id = randomUUID();
    const parent = randomUUID();
    const row = await expectStored(
      event({ id: id.toUpperCase(), parentEventId: parent.toUpperCase() }),
    );
    expect(row.id).toBe(id);
    expect(row.parent_event_id).toBe(parent);
  });
});

describe('durationMs (0 … 2^31−1)', () => {
  it('rejects -1 as a ValidationError', async () => {
    await expectValidationError(amidGood(event({ durationMs: -1 })), [
      { index: 2, field: 'durationMs' },
    ]);
  });

  it('stores 0 and 2^31−1', async () => {
    expect((await expectStored(event({ durationMs: 0 }))).duration_ms).toBe(0);
    expect((await expectStored(event({ durationMs: 2 ** 31 - 1 }))).duration_ms).toBe(2 ** 31 - 1);
  });

  it('rejects 2^31 with a GraphQL error (GraphQL Int is 32-bit), storing nothing', async () => {
    await expectGraphQLError(amidGood(event({ durationMs: 2 ** 31 })));
  });

  it('rejects a fractional value with a GraphQL error (Int), storing nothing', async () => {
    await expectGraphQLError(amidGood(event({ durationMs: 1.5 })));
  });
});

describe('data', () => {
  /** A `{"s": "..."}` object whose JSON text is exactly `bytes` UTF-8 bytes long. */
  function dataOfBytes(bytes: number): Record<string, unknown> {
    const d = { s: str(bytes - '{"s":""}'.length) };
    expect(Buffer.byteLength(JSON.stringify(d))).toBe(bytes);
    return d;
  }

  it('stores data of exactly 256 KiB serialised', async () => {
    const row = await expectStored(event({ data: dataOfBytes(LIMITS.dataBytes) }));
    expect(row.data.s).toHaveLength(LIMITS.dataBytes - 8);
  });

  it('rejects data one byte over 256 KiB serialised', async () => {
    await expectValidationError(amidGood(event({ data: dataOfBytes(LIMITS.dataBytes + 1) })), [
      { index: 2, field: 'data' },
    ]);
  });

  it('measures the size in UTF-8 bytes, not characters', async () => {
    // 131,069 "é" = 262,138 bytes + 8 bytes of JSON around them = 262,146 > 262,144,
    // although the string has only 131,077 characters.
    const data = { s: str(131_069, 'é') };
    expect(JSON.stringify(data).length).toBeLessThan(LIMITS.dataBytes);
    await expectValidationError(amidGood(event({ data })), [{ index: 2, field: 'data' }]);
  });

  it('stores data nested 10 levels deep', async () => {
    const row = await expectStored(event({ data: nest(10) }));
    expect(row.data).toEqual(nest(10));
  });

  it('rejects data nested 11 levels deep', async () => {
    await expectValidationError(amidGood(event({ data: nest(11) })), [{ index: 2, field: 'data' }]);
  });

  it('rejects nesting through arrays too', async () => {
    let v: unknown = [];
    for (let i = 1; i < 11; i++) v = [v];
    await expectValidationError(amidGood(event({ data: { a: v } })), [{ index: 2, field: 'data' }]);
  });

  // Hostile input: 50,000 levels in a request body. The depth check must reject it as a
  // ValidationError; a recursive walk to the bottom overflows the stack and the client gets
  // "Unexpected error" (INTERNAL) instead.
  it('rejects data nested 50,000 levels deep as a ValidationError, not an unexpected error', async () => {
    const deep = `${'{"a":'.repeat(50_000)}{}${'}'.repeat(50_000)}`;
    const body = JSON.stringify({
      query: CREATE,
      variables: { input: { events: amidGood(event({ data: '__DEEP__' })) } },
    }).replace('"__DEEP__"', deep);
    const r = await t.raw(rejectTenant, body);
    expect(r.body.errors, JSON.stringify(r.body.errors)).toBeUndefined();
    expect(r.body.data.createAuditEvents.__typename).toBe('ValidationError');
    expect(r.body.data.createAuditEvents.issues).toContainEqual(
      expect.objectContaining({ index: 2, field: 'data' }),
    );
    await expectNothingStored();
  });

  it('rejects an array with a GraphQL error (JSONObject scalar), storing nothing', async () => {
    await expectGraphQLError(amidGood(event({ data: [1, 2] })));
  });

  it('rejects a string with a GraphQL error (JSONObject scalar), storing nothing', async () => {
    await expectGraphQLError(amidGood(event({ data: 'text' })));
  });

  it('stores an event without data as null', async () => {
    const e = event();
    delete e.data;
    expect((await expectStored(e)).data).toBeNull();
  });

  // PostgreSQL jsonb rejects a lone UTF-16 surrogate escape ("\ud800") with 22P02. Such data
  // passes validation; every write of its batch then fails and the events stay pending forever.
  it('never accepts data PostgreSQL cannot store (a lone surrogate) only to leave it pending', async () => {
    const tenant = newTenant('vsur');
    created.push(tenant);
    const body = JSON.stringify({
      query: CREATE,
      variables: { input: { events: [event(), event({ data: { s: '__SUR__' } })] } },
    }).replace('__SUR__', '\\ud800');
    const r = await t.raw(tenant, body);
    const res = r.body.data.createAuditEvents;
    const s = await statsOf(tenant);
    const seen = JSON.stringify({ answer: res, stats: s });
    expectRejectedOrSettled(res, seen);
    expect(s.pending, seen).toBe(0);
  });
});

describe('occurredAt', () => {
  const retentionDays = () => t.app.services.config.retentionDays;
  const skewMs = () => t.app.services.config.maxFutureSkewMs;

  it('rejects an occurredAt older than RETENTION_DAYS', async () => {
    const old = new Date(Date.now() - (retentionDays() + 1) * DAY).toISOString();
    await expectValidationError(amidGood(event({ occurredAt: old })), [
      { index: 2, field: 'occurredAt' },
    ]);
  });

  it('stores an occurredAt just inside the retention window', async () => {
    const old = new Date(Date.now() - (retentionDays() - 1) * DAY);
    const row = await expectStored(event({ occurredAt: old.toISOString() }));
    expect(new Date(row.occurred_at).getTime()).toBe(old.getTime());
  });

  it('rejects an occurredAt later than now + MAX_FUTURE_SKEW_MS', async () => {
    const future = new Date(Date.now() + skewMs() + 60_000).toISOString();
    await expectValidationError(amidGood(event({ occurredAt: future })), [
      { index: 2, field: 'occurredAt' },
    ]);
  });

  it('stores an occurredAt a little less than MAX_FUTURE_SKEW_MS ahead', async () => {
    const future = new Date(Date.now() + skewMs() - 60_000);
    const row = await expectStored(event({ occurredAt: future.toISOString() }));
    expect(new Date(row.occurred_at).getTime()).toBe(future.getTime());
  });

  it('rejects microseconds with a GraphQL error (DateTime scalar), storing nothing', async () => {
    await expectGraphQLError(amidGood(event({ occurredAt: '2026-01-04T13:41:09.005123Z' })));
  });

  it('rejects an occurredAt without a time zone with a GraphQL error (DateTime scalar)', async () => {
    await expectGraphQLError(amidGood(event({ occurredAt: '2026-01-04T13:41:09.005' })));
  });

  it('stores an occurredAt with an offset as the same instant, to the millisecond', async () => {
    const at = new Date(Date.now() - 3_600_000);
    at.setUTCMilliseconds(7);
    const local = new Date(at.getTime() + 2 * 3_600_000).toISOString().replace('Z', '+02:00');
    const row = await expectStored(event({ occurredAt: local }));
    expect(new Date(row.occurred_at).getTime()).toBe(at.getTime());
  });

  // A client sending a wrong DateTime (or Int, or JSONObject) must be told which field is wrong.
  // This fails when the error is masked as "Unexpected error." / INTERNAL — which
  // happens when the module that throws the scalar's GraphQLError and the GraphQL execution
  // engine load two different copies of `graphql` (ESM and CommonJS builds under vitest).
  it('tells the client which field a type-level error is about (not masked as unexpected)', async () => {
    const err = (await expectGraphQLError([
      event({ occurredAt: '2026-01-04T13:41:09.005123Z' }),
    ])) as { message: string; extensions?: { code?: string } };
    expect(err.extensions?.code).not.toBe('INTERNAL');
    expect(err.message).toMatch(/occurredAt/);
  });
});

describe('NUL characters', () => {
  it('rejects NUL in a top-level text field', async () => {
    await expectValidationError(amidGood(event({ eventType: 'a\u0000b' })), [
      { index: 2, field: 'eventType' },
    ]);
  });

  it('rejects NUL in a nested text field (actor.id, resource.name)', async () => {
    await expectValidationError(amidGood(event({ actor: { ...baseActor, id: 'u\u0000' } })), [
      { index: 2, field: /^actor(\.id)?$/ },
    ]);
    await expectValidationError(
      amidGood(event({ resource: { ...baseResource, name: '\u0000' } })),
      [{ index: 2, field: /^resource(\.name)?$/ }],
    );
  });

  it('rejects NUL in a data value and in a data key', async () => {
    await expectValidationError(amidGood(event({ data: { s: 'a\u0000' } })), [
      { index: 2, field: 'data' },
    ]);
    await expectValidationError(amidGood(event({ data: { 'k\u0000': 1 } })), [
      { index: 2, field: 'data' },
    ]);
  });

  // The NUL check on data looks for the text `\u0000` in the serialised JSON, so a backslash
  // followed by "u0000" — an ordinary string PostgreSQL stores fine — is refused as well.
  it('stores data containing the literal text "\\u0000" (a backslash, not a NUL)', async () => {
    const data = { path: 'C:\\u0000\\dir' };
    const row = await expectStored(event({ data }));
    expect(row.data).toEqual(data);
  });
});

describe('number of events per call', () => {
  it('rejects a call with no events', async () => {
    await expectValidationError([], [{ index: null, field: 'events' }]);
  });

  it('rejects MAX_EVENTS_PER_CALL + 1 events', async () => {
    const max = t.app.services.config.maxEventsPerCall;
    const events = Array.from({ length: max + 1 }, () => event());
    await expectValidationError(events, [{ index: null, field: 'events' }]);
  });

  it('stores exactly MAX_EVENTS_PER_CALL events in one call', async () => {
    const max = t.app.services.config.maxEventsPerCall;
    const tenant = newTenant('vmax');
    created.push(tenant);
    const events = Array.from({ length: max }, () => event({ correlationId: 'max' }));
    const r = await t.gql(tenant, CREATE, { input: { events } });
    expect(r.createAuditEvents).toMatchObject({ accepted: max, stored: max });
    expect(await countRows(tenant)).toBe(max);
  });
});

describe('the accept tenant', () => {
  // Runs last in this file: everything the tests above accepted is stored, nothing is pending.
  it('holds exactly what was accepted and keeps the accounting identity', async () => {
    const s = await statsOf(acceptTenant);
    expect(s.pending).toBe(0);
    expect(s.accepted).toBe(s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded);
    expect(await countRows(acceptTenant)).toBe(s.stored);
  });
});

describe('tenant from the request', () => {
  const OPS: [string, string, Record<string, unknown>][] = [
    ['createAuditEvents', CREATE, { input: { events: [event()] } }],
    ['auditEvents', PAGE, {}],
    ['auditStats', STATS, {}],
    ['flushAudit', FLUSH, {}],
  ];

  it.each(OPS)(
    '%s without x-tenant-id is refused as UNAUTHENTICATED',
    async (field, query, vars) => {
      const r = await t.raw(null, { query, variables: vars });
      expect(r.status).toBe(200);
      expect(r.body.data).toBeNull();
      expect(r.body.errors).toHaveLength(1);
      expect(r.body.errors[0]).toMatchObject({
        path: [field],
        extensions: { code: 'UNAUTHENTICATED', retryable: false },
      });
      expect(r.body.errors[0].message).toMatch(/x-tenant-id/);
    },
  );

  it('an empty x-tenant-id is refused as UNAUTHENTICATED', async () => {
    const e = await t.refused(null, CREATE, OPS[0]![2], { 'x-tenant-id': '' });
    expect(e.extensions.code).toBe('UNAUTHENTICATED');
  });

  const BREAKOUTS: [string, string][] = [
    ['public', 'reserved'],
    ['pg_catalog', 'reserved'],
    ['pg_x', 'reserved prefix'],
    ['auditgraph', 'the control schema'],
    ['information_schema', 'reserved'],
    ['A', 'upper case'],
    ['a-b', 'dash'],
    ['a;drop', 'semicolon'],
    ['"x"', 'quotes'],
    ['a'.repeat(41), '41 characters'],
    ['café', 'non-ASCII (Latin-1)'],
    [Buffer.from('арендатор', 'utf8').toString('latin1'), 'non-ASCII (UTF-8 bytes)'],
    ['x, y', 'two tenants'],
  ];

  /** Schemas that exist in every database: a refused id must not be confused with them. */
  const SYSTEM = new Set(['public', 'pg_catalog', 'information_schema', 'auditgraph', 'pg_toast']);

  /** No schema t_<id> (nor one named <id>) and no control row. */
  async function expectNoTraceOf(id: string): Promise<void> {
    const names = [`t_${id}`, ...(SYSTEM.has(id) ? [] : [id])];
    const { rows } = await sql.query('select nspname from pg_namespace where nspname = any($1)', [
      names,
    ]);
    expect(rows).toEqual([]);
    const tenants = await sql.query('select 1 from auditgraph.tenants where tenant_id = $1', [id]);
    expect(tenants.rows).toEqual([]);
  }

  it.each(BREAKOUTS)(
    'x-tenant-id %j (%s) is refused as BAD_USER_INPUT for writes and reads and creates no schema',
    async (id) => {
      for (const [field, query, vars] of OPS) {
        const e = await t.refused(null, query, vars, { 'x-tenant-id': id });
        expect(e.extensions.code, field).toBe('BAD_USER_INPUT');
        expect(e.message).toMatch(/x-tenant-id/);
        expect(e.extensions.issues).toEqual([
          expect.objectContaining({ field: 'x-tenant-id', index: null }),
        ]);
      }
      await expectNoTraceOf(id);
      await expectNoTraceOf(id.toLowerCase());
    },
  );

  it('a tenant id of exactly 40 characters is accepted and gets schema t_<id>', async () => {
    const id = `b${randomBytes(20).toString('hex').slice(0, 39)}`;
    expect(id).toHaveLength(40);
    created.push(id);
    const r = await t.gql(id, CREATE, { input: { events: [event()] } });
    expect(r.createAuditEvents.stored).toBe(1);
    expect(await countRows(id)).toBe(1);
  });

  it('reads for a tenant that does not exist answer UNKNOWN_TENANT and provision nothing', async () => {
    const id = newTenant('vnone');
    created.push(id);
    const page = await t.refused(id, PAGE, { first: 10 });
    expect(page.extensions).toMatchObject({ code: 'UNKNOWN_TENANT', tenantId: id });
    const one = await t.refused(
      id,
      `query($id: String!) { auditEvent(eventId: $id) { __typename } }`,
      { id: randomUUID() },
    );
    expect(one.extensions.code).toBe('UNKNOWN_TENANT');
    const flush = await t.refused(id, FLUSH, {});
    expect(flush.extensions.code).toBe('UNKNOWN_TENANT');
    await expectNoTraceOf(id);
  });

  describe('with TENANT_AUTO_PROVISION=false', () => {
    let strict: TestApp;
    beforeAll(async () => {
      strict = await startApp({ TENANT_AUTO_PROVISION: 'false' });
    });
    afterAll(async () => {
      await strict?.stop();
    });

    it('a write for a new tenant is refused as UNKNOWN_TENANT and provisions nothing', async () => {
      const id = newTenant('vstrict');
      created.push(id);
      const r = await strict.refused(id, CREATE, { input: { events: [event()] } });
      expect(r.extensions).toMatchObject({ code: 'UNKNOWN_TENANT', retryable: false });
      await expectNoTraceOf(id);
      const s = await strict.refused(id, STATS);
      expect(s.extensions.code).toBe('UNKNOWN_TENANT');
    });

    it('a write for an existing tenant is still stored', async () => {
      const before = await countRows(acceptTenant);
      const r = await strict.gql(acceptTenant, CREATE, { input: { events: [event()] } });
      expect(r.createAuditEvents.stored).toBe(1);
      expect(await countRows(acceptTenant)).toBe(before + 1);
    });
  });
});
