import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Scope } from '../src/domain/api-key.js';
import type { TenantId } from '../src/domain/tenant.js';
import { dropTenants, event, newTenant, sqlClient, type TestApp } from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp } from './support/keys.js';
import { sseSubscribe, wsClient, wsSubscribe } from './support/realtime.js';

/**
 * The security suite: two tenants A and B, keys with every combination of scopes for
 * each, a platform key, and callers with no, an unknown, a revoked and an expired key. Every
 * query, mutation and subscription is tried by every caller, on its own tenant and at the other
 * one (naming it with x-tenant-id, or with ids, cursors and dead letters that belong to it).
 * Attempts and successes are counted: the only successes are the allowed ones — an operation on
 * the caller's own tenant with a key that holds its scope — and at the end each tenant holds
 * exactly the events its own keys were allowed to write.
 */

let t: TestApp;
let sql: pg.Client;
const A = newTenant('sa');
const B = newTenant('sb');
const NEW_TENANTS: string[] = [];

type Side = 'A' | 'B';
const tenantOf = (s: Side) => (s === 'A' ? A : B);
const otherOf = (s: Side): Side => (s === 'A' ? 'B' : 'A');

interface Caller {
  name: string;
  /** Headers of its HTTP requests (and, for WebSocket, the connection_init payload). */
  headers: Record<string, string>;
  wsParams: Record<string, unknown> | undefined;
  side: Side | null;
  scopes: ReadonlySet<Scope>;
  /** A key that authenticates. */
  valid: boolean;
}

/** Data each side holds before the attempts. */
interface Fixture {
  eventIds: string[];
  firstEvent: { id: string; occurredAt: string };
  /** A cursor this side minted (page 1 of 1, ordered ASC, no filter). */
  cursor: string;
  keyId: string;
}
const fixture: Record<Side, Fixture> = {} as never;
/** Events each side's keys were allowed to write, counted as the attempts succeed. */
const written: Record<Side, number> = { A: 0, B: 0 };
let setupWriter: Record<Side, string>;

const TENANT_SCOPES: Scope[] = ['events:write', 'events:read', 'deadletters:admin'];

function combinations(): Scope[][] {
  const out: Scope[][] = [];
  for (let mask = 1; mask < 1 << TENANT_SCOPES.length; mask++) {
    out.push(TENANT_SCOPES.filter((_, i) => mask & (1 << i)));
  }
  return out;
}

const callers: Caller[] = [];

function keyCaller(
  name: string,
  secret: string,
  side: Side | null,
  scopes: Scope[],
  valid = true,
): Caller {
  return {
    name,
    headers: bearer(secret),
    wsParams: { authorization: `Bearer ${secret}` },
    side,
    scopes: new Set(scopes),
    valid,
  };
}

beforeAll(async () => {
  t = await startKeysApp({ AUDIT_READS: 'true', MAX_CONNECTIONS_PER_TENANT: '0' });
  sql = await sqlClient();
  setupWriter = {
    A: (await createKey(t, A, ['events:write', 'events:read'], { label: 'setup-a' })).secret,
    B: (await createKey(t, B, ['events:write', 'events:read'], { label: 'setup-b' })).secret,
  };
  for (const side of ['A', 'B'] as const) {
    const c = keyClient(t, setupWriter[side]);
    const created = await c.gql(
      `mutation($input: CreateAuditEventsInput!) { createAuditEvents(input: $input) {
        ... on CreateAuditEventsPayload { events { id: eventId occurredAt } } } }`,
      { input: { events: [event({ correlationId: 'fx' }), event({ correlationId: 'fx' })] } },
    );
    const events = created.createAuditEvents.events;
    const page = await c.gql(
      `query { auditEvents(first: 1, order: OCCURRED_AT_ASC, filter: { correlationId: "fx" }) {
        ... on AuditEventConnection { pageInfo { endCursor hasNextPage } } } }`,
    );
    expect(page.auditEvents.pageInfo.hasNextPage).toBe(true);
    const extra = await createKey(t, tenantOf(side), ['events:read'], { label: `victim-${side}` });
    fixture[side] = {
      eventIds: events.map((e: { id: string }) => e.id),
      firstEvent: events[0],
      cursor: page.auditEvents.pageInfo.endCursor,
      keyId: extra.id,
    };
  }
  for (const side of ['A', 'B'] as const) {
    for (const scopes of combinations()) {
      const k = await createKey(t, tenantOf(side), scopes, {
        label: `${side}:${scopes.join('+')}`,
      });
      callers.push(keyCaller(`${side} key [${scopes.join(' ')}]`, k.secret, side, scopes));
    }
    // audit:admin alone and with every other scope (all its subsets would double the table).
    for (const scopes of [['audit:admin'], [...TENANT_SCOPES, 'audit:admin']] as Scope[][]) {
      const k = await createKey(t, tenantOf(side), scopes, {
        label: `${side}:${scopes.join('+')}`,
      });
      callers.push(keyCaller(`${side} key [${scopes.join(' ')}]`, k.secret, side, scopes));
    }
  }
  const platform = await createKey(t, null, ['tenants:admin'], { label: 'platform' });
  callers.push(keyCaller('platform key', platform.secret, null, ['tenants:admin']));
  const all: Scope[] = [...TENANT_SCOPES, 'audit:admin'];
  const revoked = await createKey(t, A, all, { label: 'revoked' });
  await t.app.services.apiKeys.revoke(revoked.id);
  callers.push(keyCaller('revoked A key', revoked.secret, 'A', all, false));
  const expired = await createKey(t, A, all, { expiresAt: new Date(Date.now() + 300) });
  callers.push(keyCaller('expired A key', expired.secret, 'A', all, false));
  const revokedAdmin = await createKey(t, null, ['tenants:admin'], { label: 'revoked-admin' });
  await t.app.services.apiKeys.revoke(revokedAdmin.id);
  callers.push(
    keyCaller('revoked platform key', revokedAdmin.secret, null, ['tenants:admin'], false),
  );
  callers.push(
    keyCaller('unknown key', `agk_${randomBytes(32).toString('base64url')}`, 'A', all, false),
  );
  callers.push({
    name: 'no key',
    headers: {},
    wsParams: undefined,
    side: 'A',
    scopes: new Set(all),
    valid: false,
  });
  callers.push({
    name: 'no key, x-tenant-id',
    headers: { 'x-tenant-id': A },
    wsParams: { tenantId: A },
    side: 'A',
    scopes: new Set(all),
    valid: false,
  });
  await new Promise((r) => setTimeout(r, 400)); // the expired key is expired now
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(A, B, ...NEW_TENANTS);
});

/** A parked dead letter of `side`, fresh for each attempt (replay and discard use them up). */
async function parkedDeadLetter(side: Side): Promise<string> {
  const id = randomUUID();
  await t.app.services.deadLetters.add({
    id,
    tenant: tenantOf(side) as TenantId,
    state: 'PARKED',
    records: [],
    errorCode: '22P02',
    error: 'security suite',
    attempts: 5,
    replays: 3,
    firstFailedAt: new Date(),
    lastFailedAt: new Date(),
    nextAttemptAt: null,
  });
  return id;
}

interface Attempt {
  /** The field tried. */
  field: string;
  /** `own`: the caller's tenant; `other`: the other tenant, named or referred to; `admin`: none. */
  target: 'own' | 'other' | 'admin';
  /** How the other tenant is reached, for the report. */
  via?: string;
  scope: Scope;
  run(c: Caller): Promise<boolean>;
}

async function gql(
  c: Caller,
  query: string,
  variables: Record<string, unknown> = {},
  extra: Record<string, string> = {},
) {
  const res = await fetch(t.url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json',
      ...c.headers,
      ...extra,
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as {
    data?: Record<string, any> | null;
    errors?: { extensions?: { code?: string } }[];
  };
  expectOnlyRefusals(c, res.status, res.headers, body);
  return body.data ?? {};
}

/** Codes a refusal of this matrix may carry; anything else (INTERNAL above all) is a defect. */
const REFUSAL_CODES = new Set([
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'UNKNOWN_TENANT',
  'BAD_USER_INPUT',
  'INVALID_CURSOR',
]);

/**
 * A refused request carries only refusal codes, never a masked error; 401 (with
 * `WWW-Authenticate: Bearer`) only for callers without a valid key, and 403 only with FORBIDDEN.
 */
function expectOnlyRefusals(
  c: Caller,
  status: number,
  resHeaders: Headers,
  body: { data?: unknown; errors?: { extensions?: { code?: string } }[] },
) {
  const codes = (body.errors ?? []).map((e) => e.extensions?.code ?? 'none');
  expect(
    codes.filter((code) => !REFUSAL_CODES.has(code)),
    `${c.name}: ${JSON.stringify(body.errors)}`,
  ).toEqual([]);
  if (status === 401) {
    expect(resHeaders.get('www-authenticate')).toBe('Bearer');
    expect(c.valid, `${c.name} has a valid key but was answered 401`).toBe(false);
    expect(codes).toEqual(['UNAUTHENTICATED']);
  } else if (status === 403) {
    expect(codes, c.name).toContain('FORBIDDEN');
  } else {
    expect(status, c.name).toBe(200);
  }
}

const own = (c: Caller) => c.side ?? 'A';
const other = (c: Caller) => otherOf(own(c));
const nameOther = (c: Caller) => ({ 'x-tenant-id': tenantOf(other(c)) });

/** What a field answered: its typename, `list` for a list (auditCheckpoints), `null` if refused. */
const typename = (v: { __typename?: string } | unknown[] | null | undefined) =>
  Array.isArray(v) ? 'list' : (v?.__typename ?? 'null');

const CREATE = `mutation($input: CreateAuditEventsInput!) { createAuditEvents(input: $input) { __typename } }`;
const PAGE = `query($after: String, $filter: AuditEventFilter) {
  auditEvents(first: 10, after: $after, order: OCCURRED_AT_ASC, filter: $filter) {
    __typename ... on AuditEventConnection { edges { node { id: eventId } } } } }`;
const ONE = `query($id: String!) { auditEvent(eventId: $id) { __typename ... on AuditEvent { id: eventId } } }`;
const STATS = '{ auditStats { __typename } }';
const FLUSH = 'mutation { flushAudit(input: { timeoutMs: 5000 }) { __typename } }';
const WAIT = '{ waitForEvents(correlationId: "corr", count: 1, timeoutMs: 1) { __typename } }';
const DEAD_LETTERS =
  '{ deadLetters { __typename ... on DeadLetterConnection { edges { node { id } } } } }';
const REPLAY = `mutation($ids: [ID!]) { replayDeadLetters(input: { ids: $ids }) {
  __typename ... on ReplayDeadLettersPayload { replayed { id: deadLetterId } } } }`;
const DISCARD = `mutation($id: ID!) { discardDeadLetter(input: { id: $id, reason: "security" }) { __typename } }`;

const VERIFY_CHAIN = `{ verifyAuditChain(from: "2026-01-01T00:00:00Z", to: "2027-01-01T00:00:00Z") {
  __typename ... on AuditChainVerification { ok } } }`;
const CHECKPOINTS = '{ auditCheckpoints { __typename } }';
const SIGN_CHECKPOINTS = 'mutation { signAuditCheckpoints { __typename } }';
const PLACE_HOLD = `mutation { placeLegalHold(input: { correlationId: "sec-hold", reason: "security table" }) {
  __typename } }`;
// null: back to the default, so the attempts change nothing another attempt depends on.
const SET_RETENTION = 'mutation { setRetention(input: { days: null }) { __typename } }';
const RUN_MAINTENANCE = 'mutation { runMaintenance { __typename } }';

/** Writes one event; a success is counted for the tenant it went to. */
async function tryWrite(c: Caller, extra: Record<string, string>, side: Side): Promise<boolean> {
  const d = await gql(c, CREATE, { input: { events: [event({ correlationId: 'sec' })] } }, extra);
  const ok = typename(d.createAuditEvents) === 'CreateAuditEventsPayload';
  if (ok) written[side]++;
  return ok;
}

/** A page, successful only if every event in it is the caller's own. */
async function tryPage(
  c: Caller,
  vars: Record<string, unknown>,
  extra: Record<string, string>,
): Promise<boolean> {
  const d = await gql(c, PAGE, vars, extra);
  if (typename(d.auditEvents) !== 'AuditEventConnection') return false;
  const ids: string[] = d.auditEvents.edges.map((e: any) => e.node.id);
  const foreign = fixture[other(c)].eventIds;
  expect(
    ids.filter((id) => foreign.includes(id)),
    `${c.name} read another tenant's events`,
  ).toEqual([]);
  return true;
}

/** Opens a subscription over SSE; a success is its SubscriptionReady. */
async function trySse(c: Caller, field: string, extra: Record<string, string>): Promise<boolean> {
  const headers = { ...c.headers, ...extra };
  let s: Awaited<ReturnType<typeof sseSubscribe>>;
  try {
    s = await sseSubscribe(
      t.url,
      null,
      field,
      `subscription { ${field} { __typename } }`,
      {},
      headers,
    );
  } catch (err) {
    // A subscription refused when it is opened answers its status before any event.
    const e = err as { status?: number; headers?: Headers; body?: string };
    if (e.status === undefined || e.status < 400 || e.status >= 500) throw err;
    expectOnlyRefusals(
      c,
      e.status === 404 || e.status === 400 ? 200 : e.status,
      e.headers!,
      JSON.parse(e.body!),
    );
    return false;
  }
  try {
    return (await s.next()).__typename === 'SubscriptionReady';
  } finally {
    await s.close();
  }
}

/** Opens a subscription over graphql-ws; a refused connection or message is not a success. */
async function tryWs(field: string, params: Record<string, unknown> | undefined): Promise<boolean> {
  const client = wsClient(t.url, params);
  try {
    const s = wsSubscribe(client, field, `subscription { ${field} { __typename } }`);
    const first = await s.next().catch(() => null);
    await s.close();
    return first?.__typename === 'SubscriptionReady';
  } finally {
    await client.dispose();
  }
}

const ATTEMPTS: Attempt[] = [
  {
    field: 'createAuditEvents',
    target: 'own',
    scope: 'events:write',
    run: (c) => tryWrite(c, {}, own(c)),
  },
  {
    field: 'createAuditEvents',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:write',
    run: (c) => tryWrite(c, nameOther(c), other(c)),
  },
  { field: 'auditEvents', target: 'own', scope: 'events:read', run: (c) => tryPage(c, {}, {}) },
  {
    field: 'auditEvents',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:read',
    run: (c) => tryPage(c, {}, nameOther(c)),
  },
  {
    field: 'auditEvents',
    target: 'other',
    via: 'its cursor',
    scope: 'events:read',
    run: (c) =>
      tryPage(c, { after: fixture[other(c)].cursor, filter: { correlationId: 'fx' } }, {}),
  },
  {
    field: 'auditEvent',
    target: 'own',
    scope: 'events:read',
    run: async (c) => {
      const id = fixture[own(c)].firstEvent.id;
      const d = await gql(c, ONE, { id });
      return typename(d.auditEvent) === 'AuditEvent' && d.auditEvent.id === id;
    },
  },
  {
    field: 'auditEvent',
    target: 'other',
    via: 'its event id',
    scope: 'events:read',
    run: async (c) =>
      typename((await gql(c, ONE, { id: fixture[other(c)].firstEvent.id })).auditEvent) ===
      'AuditEvent',
  },
  {
    field: 'auditEvent',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:read',
    run: async (c) =>
      typename(
        (await gql(c, ONE, { id: fixture[other(c)].firstEvent.id }, nameOther(c))).auditEvent,
      ) === 'AuditEvent',
  },
  {
    field: 'auditStats',
    target: 'own',
    scope: 'events:read',
    run: async (c) => typename((await gql(c, STATS)).auditStats) === 'AuditStats',
  },
  {
    field: 'auditStats',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:read',
    run: async (c) => typename((await gql(c, STATS, {}, nameOther(c))).auditStats) === 'AuditStats',
  },
  {
    field: 'waitForEvents',
    target: 'own',
    scope: 'events:read',
    run: async (c) => typename((await gql(c, WAIT)).waitForEvents) === 'EventWait',
  },
  {
    field: 'waitForEvents',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:read',
    run: async (c) =>
      typename((await gql(c, WAIT, {}, nameOther(c))).waitForEvents) === 'EventWait',
  },
  {
    field: 'flushAudit',
    target: 'own',
    scope: 'events:write',
    run: async (c) => typename((await gql(c, FLUSH)).flushAudit) === 'FlushAuditPayload',
  },
  {
    field: 'flushAudit',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'events:write',
    run: async (c) =>
      typename((await gql(c, FLUSH, {}, nameOther(c))).flushAudit) === 'FlushAuditPayload',
  },
  {
    field: 'deadLetters',
    target: 'own',
    scope: 'deadletters:admin',
    run: async (c) => {
      const theirs = await parkedDeadLetter(other(c));
      const d = await gql(c, DEAD_LETTERS);
      if (typename(d.deadLetters) !== 'DeadLetterConnection') return false;
      expect(d.deadLetters.edges.map((e: any) => e.node.id)).not.toContain(theirs);
      return true;
    },
  },
  {
    field: 'deadLetters',
    target: 'other',
    via: 'x-tenant-id',
    scope: 'deadletters:admin',
    run: async (c) =>
      typename((await gql(c, DEAD_LETTERS, {}, nameOther(c))).deadLetters) ===
      'DeadLetterConnection',
  },
  {
    field: 'replayDeadLetters',
    target: 'own',
    scope: 'deadletters:admin',
    run: async (c) => {
      const id = await parkedDeadLetter(own(c));
      const d = await gql(c, REPLAY, { ids: [id] });
      return d.replayDeadLetters?.replayed?.length === 1;
    },
  },
  {
    field: 'replayDeadLetters',
    target: 'other',
    via: 'its dead letter id',
    scope: 'deadletters:admin',
    run: async (c) => {
      const id = await parkedDeadLetter(other(c));
      const d = await gql(c, REPLAY, { ids: [id] });
      const still = await t.app.services.deadLetters.get(tenantOf(other(c)) as TenantId, id);
      expect(still?.state, `${c.name} replayed another tenant's dead letter`).toBe('PARKED');
      return d.replayDeadLetters?.replayed?.length === 1;
    },
  },
  {
    field: 'discardDeadLetter',
    target: 'own',
    scope: 'deadletters:admin',
    run: async (c) =>
      typename(
        (await gql(c, DISCARD, { id: await parkedDeadLetter(own(c)) })).discardDeadLetter,
      ) === 'DeadLetter',
  },
  {
    field: 'discardDeadLetter',
    target: 'other',
    via: 'its dead letter id',
    scope: 'deadletters:admin',
    run: async (c) => {
      const id = await parkedDeadLetter(other(c));
      const d = await gql(c, DISCARD, { id });
      const still = await t.app.services.deadLetters.get(tenantOf(other(c)) as TenantId, id);
      expect(still?.state, `${c.name} discarded another tenant's dead letter`).toBe('PARKED');
      return typename(d.discardDeadLetter) === 'DeadLetter';
    },
  },
  ...(['flushCompleted', 'auditEventsAdded', 'deadLetterEvents'] as const).flatMap(
    (field): Attempt[] => {
      const scope: Scope = field === 'deadLetterEvents' ? 'deadletters:admin' : 'events:read';
      return [
        { field: `${field} (SSE)`, target: 'own', scope, run: (c) => trySse(c, field, {}) },
        {
          field: `${field} (SSE)`,
          target: 'other',
          via: 'x-tenant-id',
          scope,
          run: (c) => trySse(c, field, nameOther(c)),
        },
        {
          field: `${field} (graphql-ws)`,
          target: 'own',
          scope,
          run: (c) => tryWs(field, c.wsParams),
        },
        {
          field: `${field} (graphql-ws)`,
          target: 'other',
          via: 'tenantId in connection_init',
          scope,
          run: (c) => tryWs(field, { ...c.wsParams, tenantId: tenantOf(other(c)) }),
        },
      ];
    },
  ),
  ...(
    [
      ['verifyAuditChain', 'events:read', 'AuditChainVerification', VERIFY_CHAIN],
      ['auditChainKey', 'events:read', 'AuditChainKey', '{ auditChainKey { __typename } }'],
      ['auditCheckpoints', 'events:read', 'list', CHECKPOINTS],
      ['signAuditCheckpoints', 'audit:admin', 'SignedAuditCheckpoints', SIGN_CHECKPOINTS],
      ['legalHolds', 'audit:admin', 'LegalHoldList', '{ legalHolds { __typename } }'],
      ['placeLegalHold', 'audit:admin', 'LegalHoldPayload', PLACE_HOLD],
      ['retention', 'audit:admin', 'Retention', '{ retention { __typename } }'],
      ['setRetention', 'audit:admin', 'SetRetentionPayload', SET_RETENTION],
      ['runMaintenance', 'audit:admin', 'MaintenanceReport', RUN_MAINTENANCE],
    ] as const
  ).flatMap(([field, scope, success, query]): Attempt[] => [
    {
      field,
      target: 'own',
      scope,
      run: async (c) => typename((await gql(c, query))[field]) === success,
    },
    {
      field,
      target: 'other',
      via: 'x-tenant-id',
      scope,
      run: async (c) => typename((await gql(c, query, {}, nameOther(c)))[field]) === success,
    },
  ]),
  {
    field: 'tenants',
    target: 'admin',
    scope: 'tenants:admin',
    run: async (c) =>
      typename((await gql(c, '{ tenants { __typename } }')).tenants) === 'TenantConnection',
  },
  {
    field: 'apiKeys',
    target: 'admin',
    scope: 'tenants:admin',
    run: async (c) =>
      typename(
        (await gql(c, 'query($t: String) { apiKeys(tenantId: $t) { __typename } }', { t: A }))
          .apiKeys,
      ) === 'ApiKeyList',
  },
  {
    field: 'provisionTenant',
    target: 'admin',
    scope: 'tenants:admin',
    run: async (c) => {
      const id = newTenant('snew');
      NEW_TENANTS.push(id);
      const d = await gql(
        c,
        'mutation($id: String!) { provisionTenant(input: { tenantId: $id }) { __typename } }',
        { id },
      );
      return typename(d.provisionTenant) === 'ProvisionTenantPayload';
    },
  },
  {
    field: 'createApiKey',
    target: 'admin',
    scope: 'tenants:admin',
    run: async (c) => {
      const d = await gql(
        c,
        'mutation($t: String) { createApiKey(input: { tenantId: $t, scopes: [EVENTS_READ], label: "made" }) { __typename } }',
        { t: tenantOf(own(c)) },
      );
      return typename(d.createApiKey) === 'CreateApiKeyPayload';
    },
  },
  {
    field: 'revokeApiKey',
    target: 'admin',
    scope: 'tenants:admin',
    run: async (c) => {
      const victim = await createKey(t, tenantOf(other(c)), ['events:read'], { label: 'victim' });
      const d = await gql(
        c,
        'mutation($id: ID!) { revokeApiKey(input: { id: $id }) { __typename } }',
        {
          id: victim.id,
        },
      );
      return typename(d.revokeApiKey) === 'ApiKey';
    },
  },
];

/** The rule under test: an operation on the caller's own tenant with a key holding its scope. */
function allowed(c: Caller, a: Attempt): boolean {
  if (!c.valid || !c.scopes.has(a.scope)) return false;
  if (a.target === 'admin') return c.side === null;
  return a.target === 'own' && c.side !== null;
}

async function rows(tenant: string): Promise<number> {
  const r = await sql.query(
    // Access and lifecycle records (legal holds, retention changes) are the service's own.
    `select count(*)::int as n from "t_${tenant}".audit_events where category not in ('access', 'lifecycle')`,
  );
  return r.rows[0].n;
}

describe('who may do what', () => {
  it('allows exactly the operations a key’s tenant and scopes allow, on every transport', async () => {
    const before = { A: await rows(A), B: await rows(B) };
    let attempts = 0;
    const unexpected: string[] = [];
    const succeeded: string[] = [];
    const outcomes: { c: Caller; a: Attempt; ok: boolean }[] = [];
    for (const c of callers) {
      for (const a of ATTEMPTS) {
        attempts++;
        const label = `${c.name} → ${a.field} on ${a.target}${a.via ? ` via ${a.via}` : ''}`;
        const ok = await a.run(c);
        outcomes.push({ c, a, ok });
        if (ok) succeeded.push(label);
        if (ok !== allowed(c, a)) unexpected.push(`${ok ? 'ALLOWED' : 'REFUSED'}: ${label}`);
      }
    }
    const expected = callers.flatMap((c) => ATTEMPTS.filter((a) => allowed(c, a))).length;
    console.info(
      `security suite: ${callers.length} callers × ${ATTEMPTS.length} operations = ${attempts} attempts, ` +
        `${succeeded.length} successes (${expected} allowed)`,
    );
    expect(unexpected).toEqual([]);
    expect(succeeded).toHaveLength(expected);
    // Negative controls: the same outcomes judged by broken rules must disagree, proving the
    // comparison above can fail. A server that ignored scopes, or tenants, or key validity would
    // have allowed what these rules allow; the real one refused some of each.
    const broken: Record<string, (c: Caller, a: Attempt) => boolean> = {
      'scopes ignored': (c, a) =>
        c.valid && (a.target === 'admin' ? c.side === null : c.side !== null),
      'tenants ignored': (c, a) =>
        c.valid && c.scopes.has(a.scope) && (a.target !== 'admin' || c.side === null),
      'validity ignored': (c, a) =>
        c.scopes.has(a.scope) &&
        (a.target === 'admin' ? c.side === null : a.target === 'own' && c.side !== null),
    };
    for (const [name, rule] of Object.entries(broken)) {
      const disagreements = outcomes.filter(({ c, a, ok }) => ok !== rule(c, a)).length;
      expect(disagreements, `a server with ${name} would be caught`).toBeGreaterThan(0);
    }
    expect(attempts).toBe(callers.length * ATTEMPTS.length);
    // Each tenant holds exactly what its own keys were allowed to write.
    const flush = (side: Side) =>
      keyClient(t, setupWriter[side]).gql(
        'mutation { flushAudit(input: { timeoutMs: 10000 }) { __typename } }',
      );
    await flush('A');
    await flush('B');
    expect({ A: await rows(A), B: await rows(B) }).toEqual({
      A: before.A + written.A,
      B: before.B + written.B,
    });
    expect(written.A).toBeGreaterThan(0);
    expect(written.B).toBeGreaterThan(0);
  }, 180_000);
});

describe('cursors across tenants', () => {
  it('refuses a cursor minted by A when B replays it, and reveals nothing of A', async () => {
    const readerB = await createKey(t, B, ['events:read']);
    const r = await keyClient(t, readerB.secret).raw({
      query: `query($after: String, $filter: AuditEventFilter) {
        auditEvents(first: 10, after: $after, order: OCCURRED_AT_ASC, filter: $filter) {
          __typename ... on AuditEventConnection { edges { node { id: eventId } } }  } }`,
      variables: { after: fixture.A.cursor, filter: { correlationId: 'fx' } },
    });
    expect(r.body.data).toBeNull();
    const res = r.body.errors[0];
    expect(res.extensions).toMatchObject({ code: 'INVALID_CURSOR', retryable: false });
    const text = JSON.stringify(r.body);
    expect(text).not.toContain(A);
    for (const id of fixture.A.eventIds) expect(text).not.toContain(id);
    expect(Object.keys(res.extensions).sort()).toEqual(['code', 'retryable', 'type']);
    // The same cursor still works for A: it was refused for being B's, not for being broken.
    const mine = await keyClient(t, setupWriter.A).gql(
      `query($after: String) { auditEvents(first: 10, after: $after, order: OCCURRED_AT_ASC, filter: { correlationId: "fx" }) {
        __typename ... on AuditEventConnection { edges { node { id: eventId } } } } }`,
      { after: fixture.A.cursor },
    );
    const rest = mine.auditEvents.edges.map((e: any) => e.node.id);
    expect(rest).toHaveLength(1);
    expect(fixture.A.eventIds).toContain(rest[0]);
  });
});
