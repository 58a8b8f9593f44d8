import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  sqlClient,
  type TestApp,
} from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';
import {
  FLUSH_COMPLETED,
  redisEnv,
  sseSubscribe,
  wsClient,
  wsSubscribe,
} from './support/realtime.js';

/**
 * Limits a hostile or careless client cannot get past: each configurable,
 * each switched off by 0, each refused with an error that names its setting — and a refused
 * request reads and writes nothing.
 */

let sql: pg.Client;
const apps: TestApp[] = [];
const created: string[] = [];

beforeAll(async () => {
  sql = await sqlClient();
});

afterAll(async () => {
  await Promise.all(apps.map((a) => a.stop()));
  await sql?.end();
  await dropTenants(...created);
});

async function app(env: Record<string, string>): Promise<TestApp> {
  const a = await startKeysApp(env);
  apps.push(a);
  return a;
}

async function key(
  a: TestApp,
  scopes = ['events:write', 'events:read'] as const,
): Promise<TestKey> {
  const id = newTenant('lim');
  created.push(id);
  return createKey(a, id, [...scopes]);
}

async function rows(tenant: string): Promise<number> {
  const r = await sql.query(
    `select count(*)::int as n from "t_${tenant}".audit_events where category <> 'access'`,
  );
  return r.rows[0].n;
}

/** The one error of a refused request, with its HTTP status. */
async function refusal(a: TestApp, k: TestKey, body: unknown) {
  const r = await keyClient(a, k.secret).raw(body);
  expect(r.body.data ?? null, JSON.stringify(r.body)).toBeNull();
  expect(r.body.errors).toHaveLength(1);
  return { status: r.status, error: r.body.errors[0] };
}

const DEEP = `query { auditEvents(first: 1) { ... on AuditEventConnection { edges { node { actor { id: actorId } } } } } }`;
const DEEP_VIA_FRAGMENT = `query { auditEvents(first: 1) { ...C } }
fragment C on AuditEventConnection { edges { ...E } }
fragment E on AuditEventEdge { node { actor { id: actorId } } }`;

describe('query depth (MAX_QUERY_DEPTH)', () => {
  it('refuses fields nested deeper than the limit, through fragments too, naming the limit', async () => {
    const a = await app({ MAX_QUERY_DEPTH: '4' });
    const k = await key(a);
    for (const query of [DEEP, DEEP_VIA_FRAGMENT]) {
      const { status, error } = await refusal(a, k, { query });
      expect(status).toBeLessThan(500);
      expect(error.extensions).toMatchObject({
        code: 'QUERY_TOO_DEEP',
        limit: 'MAX_QUERY_DEPTH',
        max: 4,
      });
      expect(error.message).toMatch(/MAX_QUERY_DEPTH/);
    }
    // At the limit it runs.
    const ok = await keyClient(a, k.secret).gql(
      `query { auditEvents(first: 1) { ... on AuditEventConnection { edges { node { id: eventId } } } } }`,
    );
    expect(ok.auditEvents.edges).toEqual([]);
  });

  it('is off with 0', async () => {
    const a = await app({ MAX_QUERY_DEPTH: '0' });
    const k = await key(a);
    expect((await keyClient(a, k.secret).gql(DEEP)).auditEvents.edges).toEqual([]);
  });
});

describe('aliases (MAX_ALIASES)', () => {
  const bomb = (n: number) =>
    `query { ${Array.from({ length: n }, (_, i) => `a${i}: auditStats { __typename }`).join(' ')} }`;

  it('refuses an alias bomb before anything runs', async () => {
    const a = await app({ MAX_ALIASES: '5' });
    const k = await key(a);
    expect(Object.keys(await keyClient(a, k.secret).gql(bomb(5)))).toHaveLength(5);
    const { status, error } = await refusal(a, k, { query: bomb(6) });
    expect(status).toBeLessThan(500);
    expect(error.extensions).toMatchObject({
      code: 'TOO_MANY_ALIASES',
      limit: 'MAX_ALIASES',
      max: 5,
    });
  });

  it('is off with 0', async () => {
    const a = await app({ MAX_ALIASES: '0', MAX_QUERY_COMPLEXITY: '0' });
    const k = await key(a);
    expect(Object.keys(await keyClient(a, k.secret).gql(bomb(200)))).toHaveLength(200);
  });
});

describe('complexity (MAX_QUERY_COMPLEXITY)', () => {
  const PAGE = `query($n: Int) { auditEvents(first: $n) { ... on AuditEventConnection {
    edges { cursor node { id: eventId occurredAt eventType category action outcome correlationId } } } } }`;

  it('counts the fields of a page once per item, with the page size from variables', async () => {
    const a = await app({ MAX_QUERY_COMPLEXITY: '1000' });
    const k = await key(a);
    expect((await keyClient(a, k.secret).gql(PAGE, { n: 50 })).auditEvents.edges).toEqual([]);
    const { error } = await refusal(a, k, { query: PAGE, variables: { n: 500 } });
    expect(error.extensions).toMatchObject({
      code: 'QUERY_TOO_COMPLEX',
      limit: 'MAX_QUERY_COMPLEXITY',
      max: 1000,
    });
  });

  it('is off with 0', async () => {
    const a = await app({ MAX_QUERY_COMPLEXITY: '0' });
    const k = await key(a);
    expect((await keyClient(a, k.secret).gql(PAGE, { n: 500 })).auditEvents.edges).toEqual([]);
  });
});

describe('document size (MAX_QUERY_TOKENS)', () => {
  it('stops parsing a document past the limit', async () => {
    const a = await app({ MAX_QUERY_TOKENS: '50' });
    const k = await key(a);
    const query = `query { ${'__typename '.repeat(100)} }`;
    const { status, error } = await refusal(a, k, { query });
    expect(status).toBeLessThan(500);
    expect(error.extensions).toMatchObject({ code: 'QUERY_TOO_LARGE', limit: 'MAX_QUERY_TOKENS' });
  });

  it('answers a document nested beyond the parser’s stack as a typed error, not a crash', async () => {
    const a = await app({ MAX_QUERY_TOKENS: '0', MAX_QUERY_DEPTH: '0' });
    const k = await key(a);
    const query = `query { ${'a { '.repeat(50_000)}${'}'.repeat(50_000)} }`;
    const r = await keyClient(a, k.secret).raw({ query });
    expect(r.status).toBeLessThan(500);
    expect(r.body.errors, JSON.stringify(r.body).slice(0, 500)).toHaveLength(1);
    expect(r.body.errors[0].extensions).toMatchObject({ code: 'QUERY_TOO_DEEP' });
  });
});

describe('operations per request (MAX_OPERATIONS_PER_REQUEST)', () => {
  const op = { query: '{ auditStats { __typename } }' };

  it('refuses batches when batching is off (the default), naming the limit', async () => {
    const a = await app({});
    const k = await key(a);
    const r = await keyClient(a, k.secret).raw([op, op]);
    expect(r.status).toBe(413);
    expect(r.body.errors[0].extensions).toMatchObject({
      code: 'TOO_MANY_OPERATIONS',
      limit: 'MAX_OPERATIONS_PER_REQUEST',
      max: 1,
    });
  });

  it('allows batches up to the limit', async () => {
    const a = await app({ MAX_OPERATIONS_PER_REQUEST: '2' });
    const k = await key(a);
    const two = await keyClient(a, k.secret).raw([op, op]);
    expect(two.status).toBe(200);
    expect(two.body).toHaveLength(2);
    const three = await keyClient(a, k.secret).raw([op, op, op]);
    expect(three.status).toBe(413);
    expect(three.body.errors[0].extensions.limit).toBe('MAX_OPERATIONS_PER_REQUEST');
  });
});

describe('introspection and GraphiQL (INTROSPECTION, GRAPHIQL)', () => {
  it('can both be switched off', async () => {
    const a = await app({ INTROSPECTION: 'false', GRAPHIQL: 'false' });
    const k = await key(a);
    const r = await keyClient(a, k.secret).raw({ query: '{ __schema { types { name } } }' });
    expect(r.body.data ?? null).toBeNull();
    expect(r.body.errors[0].message).toMatch(/introspection/i);
    const page = await fetch(a.url, { headers: { accept: 'text/html' } });
    expect(await page.text()).not.toMatch(/<html/i);
  });

  it('are on by default, GraphiQL with the Authorization header to fill in', async () => {
    const a = await app({});
    const page = await fetch(a.url, { headers: { accept: 'text/html' } });
    const html = await page.text();
    expect(html).toMatch(/<html/i);
    expect(html).toMatch(/Bearer/);
    expect(html).not.toMatch(/https?:\/\/(unpkg|cdn)/);
  });
});

describe('connections per tenant (MAX_CONNECTIONS_PER_TENANT)', () => {
  it('closes a WebSocket over the limit with 4429 and answers an SSE stream over it with LimitExceededError', async () => {
    const a = await app({ MAX_CONNECTIONS_PER_TENANT: '2' });
    const k = await key(a);
    const params = { authorization: `Bearer ${k.secret}` };
    const c1 = wsClient(a.url, params);
    const c2 = wsClient(a.url, params);
    const s1 = wsSubscribe(c1, 'flushCompleted', FLUSH_COMPLETED);
    const s2 = wsSubscribe(c2, 'flushCompleted', FLUSH_COMPLETED);
    expect((await s1.next()).__typename).toBe('SubscriptionReady');
    expect((await s2.next()).__typename).toBe('SubscriptionReady');

    let closed: { code: number; reason: string } | undefined;
    const c3 = wsClient(a.url, params, { closed: (e) => (closed = e as typeof closed) });
    await expect(wsSubscribe(c3, 'flushCompleted', FLUSH_COMPLETED).next()).rejects.toMatchObject({
      code: 4429,
    });
    expect(closed?.reason).toMatch(/MAX_CONNECTIONS_PER_TENANT/);
    const sse = await sseSubscribe(
      a.url,
      null,
      'flushCompleted',
      FLUSH_COMPLETED,
      {},
      bearer(k.secret),
    ).then(
      () => null,
      (err: { status: number; body: string }) => err,
    );
    expect(sse?.status).toBe(429);
    expect(JSON.parse(sse!.body).errors[0].extensions).toMatchObject({
      code: 'LIMIT_EXCEEDED',
      limit: 'MAX_CONNECTIONS_PER_TENANT',
    });

    // Another tenant is not affected; a closed connection frees its place.
    const other = await key(a);
    const c4 = wsClient(a.url, { authorization: `Bearer ${other.secret}` });
    const s4 = wsSubscribe(c4, 'flushCompleted', FLUSH_COMPLETED);
    expect((await s4.next()).__typename).toBe('SubscriptionReady');
    await s1.close();
    await c1.dispose();
    let again: string | undefined;
    for (let i = 0; i < 50 && again !== 'SubscriptionReady'; i++) {
      const c5 = wsClient(a.url, params);
      again = await wsSubscribe(c5, 'flushCompleted', FLUSH_COMPLETED)
        .next()
        .then((m) => m.__typename as string)
        .catch(() => undefined);
      await c5.dispose();
      if (again !== 'SubscriptionReady') await new Promise((r) => setTimeout(r, 20));
    }
    expect(again).toBe('SubscriptionReady');
    await Promise.all([s2.close(), s4.close(), c2.dispose(), c3.dispose(), c4.dispose()]);
  });
});

describe('write rate per tenant (RATE_LIMIT_EVENTS_PER_SECOND)', () => {
  const events = (n: number) => Array.from({ length: n }, () => event({ correlationId: 'rate' }));

  it.each([
    ['in memory', {}],
    ['in Redis', redisEnv()],
  ])(
    'answers RateLimitedError past the rate and burst (%s), accepting nothing of that call',
    async (_n, env) => {
      const a = await app({
        ...env,
        RATE_LIMIT_EVENTS_PER_SECOND: '10',
        RATE_LIMIT_BURST_EVENTS: '5',
        MAX_EVENTS_PER_CALL: '10',
      });
      const k = await key(a);
      const c = keyClient(a, k.secret);
      expect(
        (await c.gql(CREATE, { input: { events: events(10) } })).createAuditEvents.stored,
      ).toBe(10);
      const refused = (
        await c.gql(
          `mutation($input: CreateAuditEventsInput!) { createAuditEvents(input: $input) {
          __typename ... on RateLimitedError { retryAfterMs limit } ... on AuditError { message retryable } } }`,
          { input: { events: events(10) } },
        )
      ).createAuditEvents;
      expect(refused).toMatchObject({ __typename: 'RateLimitedError', retryable: true });
      expect(refused.message).toMatch(/RATE_LIMIT_EVENTS_PER_SECOND/);
      expect(refused.limit).toBe('RATE_LIMIT_EVENTS_PER_SECOND');
      expect(refused.retryAfterMs).toBeGreaterThan(0);
      expect(refused.retryAfterMs).toBeLessThanOrEqual(10_000);
      // Until that refusal's retry time, a call is refused before its input is read: input
      // the types would refuse answers RateLimitedError (not a variables error).
      const garbage = events(10).map((e) => ({ ...e, outcome: 'NOPE' }));
      const shed = await c.raw({
        query: `mutation($input: CreateAuditEventsInput!) { createAuditEvents(input: $input) {
          __typename ... on RateLimitedError { retryAfterMs } } }`,
        variables: { input: { events: garbage } },
      });
      expect(shed.body.errors).toBeUndefined();
      expect(shed.body.data.createAuditEvents.__typename).toBe('RateLimitedError');
      expect(shed.body.data.createAuditEvents.retryAfterMs).toBeLessThanOrEqual(
        refused.retryAfterMs,
      );
      expect(await rows(k.tenant!)).toBe(10);
      const other = await key(a);
      expect(
        (await keyClient(a, other.secret).gql(CREATE, { input: { events: events(10) } }))
          .createAuditEvents.stored,
      ).toBe(10);
    },
  );

  it('shares the budget of a tenant across instances through Redis', async () => {
    const env = {
      ...redisEnv(),
      RATE_LIMIT_EVENTS_PER_SECOND: '10',
      RATE_LIMIT_BURST_EVENTS: '0',
      MAX_EVENTS_PER_CALL: '10',
    };
    const a = await app(env);
    const b = await app(env);
    const k = await key(a);
    const send = (x: TestApp) =>
      keyClient(x, k.secret).gql(CREATE, { input: { events: events(6), ack: 'BUFFERED' } });
    // Within one second (windows are aligned to the first call): 6 + 6 > 10.
    const answers = [];
    for (let i = 0; i < 4; i++)
      answers.push((await send(i % 2 ? b : a)).createAuditEvents.__typename);
    expect(answers).toContain('RateLimitedError');
  });

  it('is off with 0', async () => {
    const a = await app({ RATE_LIMIT_EVENTS_PER_SECOND: '0' });
    const k = await key(a);
    for (let i = 0; i < 5; i++) {
      const r = await keyClient(a, k.secret).gql(CREATE, {
        input: { events: events(200), ack: 'BUFFERED' },
      });
      expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    }
  });
});
