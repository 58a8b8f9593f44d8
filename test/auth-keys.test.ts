import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  PAGE,
  STATS,
  sqlClient,
  type TestApp,
} from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';
import {
  EVENTS_ADDED,
  FLUSH_COMPLETED,
  sseSubscribe,
  wsClient,
  wsSubscribe,
} from './support/realtime.js';

/**
 * AUTH_MODE=keys: the tenant of a request is
 * its key's, and only its key's; a key is stored only as a hash; revocation and expiry take
 * effect on the next request and close what the key holds open.
 */

let t: TestApp;
let sql: pg.Client;
const A = newTenant('ka');
const B = newTenant('kb');
let writerA: TestKey;
let readerA: TestKey;

beforeAll(async () => {
  t = await startKeysApp({ AUDIT_READS: 'false' });
  sql = await sqlClient();
  writerA = await createKey(t, A, ['events:write', 'events:read'], { label: 'writer-a' });
  readerA = await createKey(t, A, ['events:read'], { label: 'reader-a' });
  await t.app.services.tenants.provision(B as never);
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(A, B);
});

async function rows(tenant: string): Promise<number> {
  const r = await sql.query(`select count(*)::int as n from "t_${tenant}".audit_events`);
  return r.rows[0].n;
}

const OPS: [string, string, Record<string, unknown>][] = [
  ['createAuditEvents', CREATE, { input: { events: [event()] } }],
  ['auditEvents', PAGE, {}],
  ['auditStats', STATS, {}],
  ['flushAudit', FLUSH, {}],
];

/** What Apollo Client and urql send: the GraphQL-over-HTTP media type first. */
const GRJ = { accept: 'application/graphql-response+json, application/json;q=0.9' };

/**
 * A refusal answered from the headers, before the body was read: 401 (or 403) for
 * `application/graphql-response+json` (see GRJ), the same body with 200 for `application/json`
 * clients, as the GraphQL-over-HTTP spec asks; never `data`.
 */
function expectRefused(
  r: { status: number; body: any },
  status: 401 | 403 | 200,
  message: RegExp,
  code: 'UNAUTHENTICATED' | 'FORBIDDEN' = status === 403 ? 'FORBIDDEN' : 'UNAUTHENTICATED',
) {
  expect(r.status).toBe(status);
  expect(r.body.data).toBeUndefined();
  expect(r.body.errors).toHaveLength(1);
  expect(r.body.errors[0].extensions).toMatchObject({
    code,
    type: code === 'UNAUTHENTICATED' ? 'UnauthenticatedError' : 'ForbiddenError',
    retryable: false,
  });
  expect(r.body.errors[0].message).toMatch(message);
}

describe('a request without a valid key', () => {
  const anonymous = () => graphqlClient(t.url);

  it.each(OPS)('%s without Authorization is answered 401', async (_field, query, vars) => {
    const r = await anonymous().raw(null, { query, variables: vars }, GRJ);
    expectRefused(r, 401, /Authorization: Bearer/);
  });

  it.each([
    ['no Accept header (*/*)', {}],
    ['accept: application/json', { accept: 'application/json' }],
  ])('with %s the same refusal is a 200, as the spec requires for JSON', async (_n, headers) => {
    const r = await anonymous().raw(null, { query: STATS }, headers);
    expectRefused(r, 200, /Authorization: Bearer/);
    expect(r.body.errors[0].extensions).not.toHaveProperty('http');
  });

  it.each([
    ['a malformed header', 'Basic dXNlcjpwYXNz'],
    ['an empty bearer', 'Bearer '],
    ['a key of the wrong shape', 'Bearer not-a-key'],
    ['an unknown key', `Bearer agk_${randomBytes(32).toString('base64url')}`],
  ])('%s is 401 and reveals nothing of other keys', async (_name, header) => {
    const r = await anonymous().raw(
      null,
      { query: CREATE, variables: OPS[0]![2] },
      { authorization: header, ...GRJ },
    );
    expectRefused(r, 401, /./);
    expect(r.body.errors[0].message).not.toMatch(/agk_|sha|hash|select|auditgraph\./i);
  });

  it('a valid key together with x-tenant-id is 403, and nothing is written anywhere', async () => {
    const before = [await rows(A), await rows(B)];
    for (const tenant of [A, B]) {
      const r = await keyClient(t, writerA.secret).raw(
        { query: CREATE, variables: { input: { events: [event()] } } },
        { 'x-tenant-id': tenant, ...GRJ },
      );
      expectRefused(r, 403, /x-tenant-id/);
    }
    expect([await rows(A), await rows(B)]).toEqual(before);
  });
});

describe('a valid key', () => {
  it('writes into its own tenant only, whatever else the request says', async () => {
    const before = await rows(B);
    const r = await keyClient(t, writerA.secret).gql(CREATE, {
      input: { events: [event({ correlationId: 'own' })] },
    });
    expect(r.createAuditEvents).toMatchObject({
      __typename: 'CreateAuditEventsPayload',
      stored: 1,
    });
    const own = await sql.query(
      `select count(*)::int as n from "t_${A}".audit_events where correlation_id = 'own'`,
    );
    expect(own.rows[0].n).toBe(1);
    expect(await rows(B)).toBe(before);
  });

  it('is refused a field whose scope it lacks with FORBIDDEN naming the scope', async () => {
    const reader = keyClient(t, readerA.secret);
    const e = await reader.refused(CREATE, { input: { events: [event()] } });
    expect(e).toMatchObject({
      path: ['createAuditEvents'],
      extensions: { code: 'FORBIDDEN', retryable: false },
    });
    expect(e.message).toMatch(/events:write/);
    // The request is refused as a whole: 403 for GraphQL-over-HTTP clients, 200 for JSON ones.
    const body = { query: CREATE, variables: { input: { events: [event()] } } };
    expect((await reader.raw(body, GRJ)).status).toBe(403);
    expect((await reader.raw(body, { accept: 'application/json' })).status).toBe(200);
  });

  it('answers a request that was answered in part with 200, its refused field null', async () => {
    const writer = keyClient(t, (await createKey(t, A, ['events:write'])).secret);
    const id = Buffer.from(`AuditEvent:${randomUUID()}@${new Date().toISOString()}`).toString(
      'base64',
    );
    const r = await writer.raw(
      { query: 'query($id: ID!) { __typename node(id: $id) { id } }', variables: { id } },
      GRJ,
    );
    expect(r.body.data).toEqual({ __typename: 'Query', node: null });
    expect(r.body.errors[0].extensions.code).toBe('FORBIDDEN');
    // The spec asks for 2xx whenever `data` is not null; a whole refusal stays a 403 (above).
    expect(r.status).toBe(200);
    expect(r.body.errors[0].extensions).not.toHaveProperty('http');
    const page = await keyClient(t, readerA.secret).gql(PAGE, { first: 1 });
    expect(page.auditEvents.__typename).toBe('AuditEventConnection');
  });

  it('is stored only as a SHA-256 hash, with its prefix, label and scopes', async () => {
    const { rows: keys } = await sql.query('select * from auditgraph.api_keys where id = $1', [
      writerA.id,
    ]);
    expect(keys).toHaveLength(1);
    const row = keys[0];
    expect(row.key_hash).toBe(createHash('sha256').update(writerA.secret).digest('hex'));
    expect(writerA.secret).toMatch(/^agk_[A-Za-z0-9_-]{43}$/);
    expect(row.prefix).toBe(writerA.secret.slice(0, 12));
    expect(row).toMatchObject({
      tenant_id: A,
      label: 'writer-a',
      scopes: ['events:write', 'events:read'],
    });
    // The key itself is in no column of any row of the control schema.
    const dump = await sql.query('select row_to_json(k)::text as j from auditgraph.api_keys k');
    for (const r of dump.rows) expect(r.j).not.toContain(writerA.secret.slice(12));
  });

  it('records its last use', async () => {
    await keyClient(t, readerA.secret).gql(PAGE, { first: 1 });
    const { rows: keys } = await sql.query(
      'select last_used_at from auditgraph.api_keys where id = $1',
      [readerA.id],
    );
    // Written without waiting for the answer: give it a moment.
    for (let i = 0; i < 50 && keys[0].last_used_at === null; i++) {
      await new Promise((r) => setTimeout(r, 20));
      keys.splice(
        0,
        1,
        ...(
          await sql.query('select last_used_at from auditgraph.api_keys where id = $1', [
            readerA.id,
          ])
        ).rows,
      );
    }
    expect(keys[0].last_used_at).toBeInstanceOf(Date);
  });
});

describe('revocation and expiry', () => {
  it('a revoked key is refused on its very next request', async () => {
    const k = await createKey(t, A, ['events:write', 'events:read'], { label: 'to-revoke' });
    const c = keyClient(t, k.secret);
    expect((await c.gql(STATS)).auditStats.__typename).toBe('AuditStats');
    const revoked = await t.app.services.apiKeys.revoke(k.id);
    expect(revoked?.revokedAt).toBeInstanceOf(Date);
    expectRefused(
      await c.raw({ query: CREATE, variables: { input: { events: [event()] } } }, GRJ),
      401,
      /revoked/,
    );
  });

  it('an expired key is refused', async () => {
    const k = await createKey(t, A, ['events:read'], { expiresAt: new Date(Date.now() + 1_000) });
    const c = keyClient(t, k.secret);
    expect((await c.gql(STATS)).auditStats.__typename).toBe('AuditStats');
    await new Promise((r) => setTimeout(r, 1_100));
    expectRefused(await c.raw({ query: STATS }, GRJ), 401, /expired/);
  });

  it('revoking a key closes its WebSocket connections with 4401 and its SSE streams', async () => {
    const k = await createKey(t, A, ['events:read'], { label: 'live' });
    let closed: { code: number; reason: string } | undefined;
    const ws = wsClient(
      t.url,
      { authorization: `Bearer ${k.secret}` },
      { closed: (e) => (closed = e as { code: number; reason: string }) },
    );
    const wsSub = wsSubscribe(ws, 'flushCompleted', FLUSH_COMPLETED, {});
    expect((await wsSub.next()).__typename).toBe('SubscriptionReady');
    const sse = await sseSubscribe(
      t.url,
      null,
      'auditEventsAdded',
      EVENTS_ADDED,
      {},
      bearer(k.secret),
    );
    expect((await sse.next()).__typename).toBe('SubscriptionReady');

    await t.app.services.apiKeys.revoke(k.id);

    const last = await sse.next();
    expect(last).toMatchObject({
      __typename: 'SubscriptionInterruptedError',
      reason: 'UNAUTHENTICATED',
      retryable: false,
    });
    await expect(sse.next()).rejects.toThrow('the subscription ended');
    await expect(wsSub.next()).rejects.toMatchObject({ code: 4401 });
    expect(closed).toMatchObject({ code: 4401, reason: expect.stringMatching(/revoked/) });
    await ws.dispose();
    await sse.close();
  });
});

describe('graphql-ws connection_init', () => {
  it.each([
    ['no payload', undefined, 4401, /authorization/],
    [
      'an unknown key',
      { authorization: `Bearer agk_${randomBytes(32).toString('base64url')}` },
      4401,
      /not valid/,
    ],
    ['a tenantId', { tenantId: 'x' }, 4403, /tenantId/],
  ])('with %s closes the connection', async (_name, params, code, reason) => {
    let closed: { code: number; reason: string } | undefined;
    const c = wsClient(t.url, params as Record<string, unknown> | undefined, {
      closed: (e) => (closed = e as { code: number; reason: string }),
    });
    const sub = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, {});
    await expect(sub.next()).rejects.toMatchObject({ code });
    expect(closed?.reason).toMatch(reason);
    await c.dispose();
  });

  it('with a valid key subscribes to the key’s tenant', async () => {
    const c = wsClient(t.url, { authorization: `Bearer ${writerA.secret}` });
    const corr = `ws-${randomBytes(4).toString('hex')}`;
    const sub = wsSubscribe(c, 'flushCompleted', FLUSH_COMPLETED, { correlationId: corr });
    expect((await sub.next()).__typename).toBe('SubscriptionReady');
    await keyClient(t, writerA.secret).gql(CREATE, {
      input: { events: [event({ correlationId: corr })] },
    });
    const m = await sub.next();
    expect(m).toMatchObject({ __typename: 'FlushCompleted', stored: 1 });
    await sub.close();
    await c.dispose();
  });
});
