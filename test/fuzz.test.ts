import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { dropTenants, event, newTenant, sqlClient, type TestApp } from './support/harness.js';
import { createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';

/**
 * Hostile input: thousands of generated requests — malformed JSON, wrong types, huge strings,
 * deep nesting, invalid UTF-8, values nothing downstream can hold (NUL, lone surrogates, year
 * 0000, 1e999) in filters, events, DateTime arguments and export parameters, enormous lists,
 * batches, alias bombs, random headers, random bytes on the WebSocket — within a bounded time. The process stays up, every answer is
 * a well-formed GraphQL result or HTTP error (never a 5xx, never an internal detail), /healthz
 * is fine afterwards, and none of them stored an event (the service's own access records, which
 * record the reads among them, aside).
 */

const HTTP_RUNS = 2_000;
const WS_RUNS = 200;
/** The whole fuzz run must end within this (it takes a fraction of it here). */
const TIME_BOUND_MS = 150_000;
/** MAX_REQUEST_BYTES of the app under fuzz (smaller than the default: the run stays quick). */
const MAX_BODY = 4 * 1024 * 1024;

let t: TestApp;
let sql: pg.Client;
let k: TestKey;
const F = newTenant('fz');
let tenantsBefore = 0;

beforeAll(async () => {
  t = await startKeysApp({
    AUDIT_READS: 'true',
    MAX_CONNECTIONS_PER_TENANT: '0',
    MAX_REQUEST_BYTES: String(MAX_BODY),
  });
  sql = await sqlClient();
  k = await createKey(t, F, ['events:write', 'events:read', 'deadletters:admin'], {
    label: 'fuzz',
  });
  tenantsBefore = (await sql.query('select count(*)::int as n from auditgraph.tenants')).rows[0].n;
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(F);
});

interface HostileRequest {
  kind: string;
  method?: 'POST' | 'GET';
  headers: Record<string, string>;
  body: string | Buffer;
  /** Another route than /graphql (with its query string); the body is then unused. */
  path?: string;
}

const auth = () => ({ authorization: `Bearer ${k.secret}` });
const json = (v: unknown) => JSON.stringify(v);

/** Fields of an event, each valid, so that `invalidEvent` below is what sinks the call. */
const validEvent = fc.constant(null).map(() => event({ correlationId: 'fuzz' }));

/** An event with at least one thing wrong: every call carrying one must be rejected whole. */
const invalidEvent = fc
  .tuple(
    fc.constantFrom(
      { occurredAt: 'not a date' },
      { occurredAt: '2026-01-04T13:41:09.005123Z' },
      { occurredAt: '1970-01-01T00:00:00.000Z' },
      { occurredAt: '2999-01-01T00:00:00.000Z' },
      { eventType: 'x'.repeat(101) },
      { eventType: '' },
      { correlationId: '' },
      { actor: { type: 'user', id: 'u', ip: '999.1.1.1' } },
      { actor: { type: 'user' } },
      { durationMs: -1 },
      { durationMs: 2 ** 40 },
      { outcome: 'MAYBE' },
      { category: 'a\u0000b' },
      { data: [1, 2, 3] },
      { data: 'text' },
      { data: JSON.parse(`${'{"a":'.repeat(12)}{}${'}'.repeat(12)}`) },
      { id: 'not-a-uuid' },
      { parentEventId: 'x' },
      { resource: null },
      { eventType: 'auditgraph.apikey.revoked' },
      { eventType: 'AUDITGRAPH.access.read' },
      { data: { n: 2 ** 53 + 2 } },
      { data: { a: { b: [1, -(2 ** 60)] } } },
    ),
    fc.string({ unit: 'binary', maxLength: 40 }),
  )
  .map(([broken, noise]) => ({ ...event({ correlationId: `fuzz-${noise}` }), ...broken }));

const hostileEvents = fc
  .tuple(fc.array(validEvent, { maxLength: 4 }), invalidEvent, fc.nat())
  .map(([good, bad, at]) => {
    const all = [...good];
    all.splice(at % (good.length + 1), 0, bad);
    return all;
  });

const CREATE = `mutation($input: CreateAuditEventsInput!) { createAuditEvents(input: $input) { __typename } }`;
const PAGE = `query($first: Int, $after: String, $filter: AuditEventFilter) {
  auditEvents(first: $first, after: $after, filter: $filter) { __typename ... on AuditEventConnection { edges { cursor } } } }`;

/** Anything JSON: the shapes a confused or hostile client sends where another is expected. */
const junk = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }),
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc.double(),
  fc.constant(null),
);

/**
 * JSON texts of values PostgreSQL or JavaScript cannot represent: NUL, lone surrogates, numbers
 * out of range or past 2^53, and instants outside 0001–9999 or not on the calendar.
 */
const UNREPRESENTABLE_TEXT = [
  '"a\\u0000b"',
  '"\\u0000"',
  '"\\ud800"',
  '"x\\udfff"',
  '"\\udc00\\ud800"',
];
const UNREPRESENTABLE_NUMBERS = ['1e999', '-1e999', '1E+400', '1.5e309', '9007199254740993'];
const UNREPRESENTABLE_DATES = [
  '"0000-01-01T00:00:00Z"',
  '"0001-01-01T00:00:00+01:00"',
  '"2026-02-30T00:00:00Z"',
  '"2025-02-29T12:00:00Z"',
  '"2026-01-01T24:00:00Z"',
  '"2026-01-01T00:00:00+24:00"',
  '"10000-01-01T00:00:00Z"',
  '"-000001-01-01T00:00:00Z"',
];
/** `body` (JSON) with the string "__BAD__" replaced by raw JSON text. */
const injected = (body: unknown, raw: string) => json(body).replace('"__BAD__"', raw);
const FILTER_SLOTS: [string, () => Record<string, unknown>][] = [
  ['correlationId', () => ({ correlationId: '__BAD__' })],
  ['actorId', () => ({ actorId: '__BAD__' })],
  ['severity', () => ({ severity: '__BAD__' })],
  ['eventTypes', () => ({ eventTypes: ['ok', '__BAD__'] })],
  ['dataContains value', () => ({ dataContains: { k: '__BAD__' } })],
  ['dataContains nested', () => ({ dataContains: { k: [{ j: '__BAD__' }] } })],
  ['occurredAfter', () => ({ occurredAfter: '__BAD__' })],
  ['occurredBefore', () => ({ occurredBefore: '__BAD__' })],
];
const unrepresentable = fc.constantFrom(
  ...UNREPRESENTABLE_TEXT,
  ...UNREPRESENTABLE_NUMBERS,
  ...UNREPRESENTABLE_DATES,
);

const arbitraries: [number, fc.Arbitrary<HostileRequest>][] = [
  // Values nothing downstream can hold, where a filter, an event or a DateTime is expected.
  [
    2,
    fc
      .tuple(fc.constantFrom(...FILTER_SLOTS), unrepresentable, fc.boolean())
      .map(([[, slot], bad, literal]) => {
        const filter = slot();
        if (!literal) {
          return {
            kind: 'unrepresentable filter',
            headers: auth(),
            body: injected({ query: PAGE, variables: { filter } }, bad),
          };
        }
        // The same in the document: GraphQL literal syntax, keys unquoted.
        const text = injected(filter, bad).replace(/"([A-Za-z]+)":/g, '$1:');
        return {
          kind: 'unrepresentable filter literal',
          headers: auth(),
          body: json({ query: `{ auditEvents(filter: ${text}) { __typename } }` }),
        };
      }),
  ],
  [
    2,
    fc
      .constantFrom<[string, (e: Record<string, unknown>) => Record<string, unknown>]>(
        ['category', (e) => ({ ...e, category: '__BAD__' })],
        ['actor.id', (e) => ({ ...e, actor: { type: 'user', id: '__BAD__' } })],
        ['resource.name', (e) => ({ ...e, resource: { type: 'r', id: 'r', name: '__BAD__' } })],
        ['data value', (e) => ({ ...e, data: { k: '__BAD__' } })],
        ['data nested', (e) => ({ ...e, data: { k: { j: ['__BAD__'] } } })],
        ['occurredAt', (e) => ({ ...e, occurredAt: '__BAD__' })],
        ['durationMs', (e) => ({ ...e, durationMs: '__BAD__' })],
      )
      .chain(([name, put]) =>
        // Numbers in data are a rule of their own (data must hold them exactly), not tried here;
        // a date is only out of place where an instant or a number is expected.
        fc
          .constantFrom(
            ...UNREPRESENTABLE_TEXT,
            ...(['occurredAt', 'durationMs'].includes(name) ? UNREPRESENTABLE_DATES : []),
            ...(name === 'durationMs' ? UNREPRESENTABLE_NUMBERS : []),
          )
          .map((bad) => [put, bad] as const),
      )
      .map(([put, bad]) => ({
        kind: 'unrepresentable event',
        headers: auth(),
        body: injected({ query: CREATE, variables: { input: { events: [put(event())] } } }, bad),
      })),
  ],
  [
    1,
    fc.tuple(fc.constantFrom(...UNREPRESENTABLE_DATES), fc.boolean()).map(([bad, from]) => ({
      kind: 'unrepresentable DateTime argument',
      headers: auth(),
      body: json({
        query: `{ verifyAuditChain(from: ${from ? bad : '"2026-01-01T00:00:00Z"'}, to: ${from ? '"2027-01-01T00:00:00Z"' : bad}) { __typename } }`,
      }),
    })),
  ],
  [
    1,
    fc
      .constantFrom(...FILTER_SLOTS)
      .chain(([name, slot]) =>
        // A date is only out of place where an instant is expected.
        fc
          .constantFrom(
            ...UNREPRESENTABLE_TEXT,
            ...UNREPRESENTABLE_NUMBERS,
            ...(name.startsWith('occurred') ? UNREPRESENTABLE_DATES : []),
          )
          .map((bad) => [slot, bad] as const),
      )
      .map(([slot, bad]) => ({
        kind: 'unrepresentable export filter',
        method: 'GET' as const,
        headers: auth(),
        body: '',
        path: `/export?filter=${encodeURIComponent(injected(slot(), bad))}`,
      })),
  ],
  // Malformed JSON: truncated, garbled, or not JSON at all.
  [
    3,
    fc.tuple(fc.jsonValue(), fc.nat(), fc.string({ maxLength: 20 })).map(([v, cut, noise]) => {
      const text = json({ query: '{ auditStats { __typename } }', variables: v });
      return {
        kind: 'malformed json',
        headers: auth(),
        body: text.slice(0, cut % text.length) + noise,
      };
    }),
  ],
  [
    1,
    fc
      .uint8Array({ maxLength: 2_000 })
      .map((b) => ({ kind: 'random bytes', headers: auth(), body: Buffer.from(b) })),
  ],
  // Wrong types for every top-level key.
  [
    3,
    fc.record({ query: junk, variables: junk, operationName: junk, extensions: junk }).map((r) => ({
      kind: 'wrong types',
      headers: auth(),
      body: json(r),
    })),
  ],
  // Valid documents, hostile variables.
  [
    3,
    fc.record({ first: junk, after: junk, filter: junk }).map((variables) => ({
      kind: 'hostile variables',
      headers: auth(),
      body: json({ query: PAGE, variables }),
    })),
  ],
  [
    3,
    fc
      .record({
        first: fc.integer({ min: -1_000_000, max: 1_000_000 }),
        after: fc.oneof(
          fc.string(),
          fc.base64String(),
          fc.constant(`${Date.now()}.${'0'.repeat(36)}.xxxxxxxxxxxxxxxxxxxxxx`),
        ),
        filter: fc.record(
          {
            correlationId: fc.string({ unit: 'binary', maxLength: 300 }),
            eventTypes: fc.array(fc.string(), { maxLength: 60 }),
            dataContains: fc.dictionary(
              fc.string({ unit: 'binary' }),
              fc.jsonValue({ maxDepth: 3 }),
            ),
            occurredAfter: fc.string(),
          },
          { requiredKeys: [] },
        ),
      })
      .map((variables) => ({
        kind: 'hostile page',
        headers: auth(),
        body: json({ query: PAGE, variables }),
      })),
  ],
  // Writes that must be rejected whole.
  [
    4,
    fc
      .tuple(hostileEvents, fc.constantFrom('COMMITTED', 'BUFFERED', 'MAYBE', null))
      .map(([events, ack]) => ({
        kind: 'invalid write',
        headers: auth(),
        body: json({ query: CREATE, variables: { input: { events, ack } } }),
      })),
  ],
  // Huge strings, in the document and in variables (up to the body limit and past it).
  [
    1,
    fc.integer({ min: 1_000, max: MAX_BODY }).map((n) => ({
      kind: 'huge string variable',
      headers: auth(),
      body: json({
        query: CREATE,
        variables: { input: { events: [{ ...event(), eventType: 'x'.repeat(n) }] } },
      }),
    })),
  ],
  [
    1,
    fc.integer({ min: 10_000, max: 1_000_000 }).map((n) => ({
      kind: 'huge document',
      headers: auth(),
      body: json({ query: `{ auditStats { __typename } } # ${'x'.repeat(n)}` }),
    })),
  ],
  [
    1,
    fc.constant(null).map(() => ({
      kind: 'body over MAX_REQUEST_BYTES',
      headers: auth(),
      body: json({ query: `{ auditStats { __typename } } # ${'x'.repeat(MAX_BODY + 1)}` }),
    })),
  ],
  // Deep nesting: of the document, and of JSON variables.
  [
    2,
    fc.integer({ min: 10, max: 20_000 }).map((n) => ({
      kind: 'deep document',
      headers: auth(),
      body: json({ query: `{ ${'auditEvents { '.repeat(n)}${'}'.repeat(n)} }` }),
    })),
  ],
  [
    2,
    fc.integer({ min: 11, max: 30_000 }).map((n) => ({
      kind: 'deep variables',
      headers: auth(),
      body: `{"query":${json(CREATE)},"variables":{"input":{"events":[${json({ ...event(), data: '__D__' }).replace('"__D__"', `${'{"a":'.repeat(n)}{}${'}'.repeat(n)}`)}]}}}`,
    })),
  ],
  // Invalid UTF-8 inside a JSON string, and lone surrogate escapes.
  [
    2,
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => {
      const high = Buffer.from(bytes.map((b) => b | 0x80));
      return {
        kind: 'invalid utf-8',
        headers: auth(),
        body: Buffer.concat([
          Buffer.from(`{"query":${json(CREATE)},"variables":{"input":{"events":[{"eventType":"`),
          high,
          Buffer.from(`","occurredAt":"${new Date().toISOString()}"}]}}}`),
        ]),
      };
    }),
  ],
  [
    1,
    fc.constantFrom('\\ud800', '\\udfff', '\\u0000', '\\ud83d').map((esc) => ({
      kind: 'bad escapes',
      headers: auth(),
      body: `{"query":${json(CREATE)},"variables":{"input":{"events":[${json({ ...event(), eventType: '__E__' }).replace('__E__', `a${esc}b`)}]}}}`,
    })),
  ],
  // Numbers data cannot hold exactly, as JSON text (1e999 parses as Infinity).
  [
    1,
    fc.constantFrom('1e999', '-1e999', '1e400', '9007199254740993').map((n) => ({
      kind: 'inexact number in data',
      headers: auth(),
      body: `{"query":${json(CREATE)},"variables":{"input":{"events":[${json({ ...event(), data: '__N__' }).replace('"__N__"', `{"a":{"b":${n}}}`)}]}}}`,
    })),
  ],
  // Enormous lists.
  [
    1,
    fc.integer({ min: 1_001, max: 5_000 }).map((n) => ({
      kind: 'enormous event list',
      headers: auth(),
      body: json({
        query: CREATE,
        variables: { input: { events: Array.from({ length: n }, () => ({})) } },
      }),
    })),
  ],
  [
    1,
    fc.integer({ min: 51, max: 50_000 }).map((n) => ({
      kind: 'enormous filter list',
      headers: auth(),
      body: json({
        query: PAGE,
        variables: { filter: { eventTypes: Array.from({ length: n }, (_, i) => `t${i}`) } },
      }),
    })),
  ],
  // Batches, alias bombs, fragment bombs.
  [
    2,
    fc
      .array(
        fc.record({ query: fc.constantFrom(PAGE, CREATE, '{ auditStats { __typename } }', 'x') }),
        {
          minLength: 2,
          maxLength: 100,
        },
      )
      .map((ops) => ({ kind: 'batch', headers: auth(), body: json(ops) })),
  ],
  [
    2,
    fc.integer({ min: 31, max: 2_000 }).map((n) => ({
      kind: 'alias bomb',
      headers: auth(),
      body: json({
        query: `{ ${Array.from({ length: n }, (_, i) => `a${i}: auditStats { __typename }`).join(' ')} }`,
      }),
    })),
  ],
  [
    1,
    fc.integer({ min: 2, max: 30 }).map((levels) => {
      const frags = Array.from(
        { length: levels },
        (_, i) =>
          `fragment F${i} on Query { ${i + 1 < levels ? `...F${i + 1} ...F${i + 1}` : 'auditStats { __typename }'} }`,
      ).join('\n');
      return {
        kind: 'fragment bomb',
        headers: auth(),
        body: json({ query: `{ ...F0 }\n${frags}` }),
      };
    }),
  ],
  // Random GraphQL-ish text and random headers.
  [
    3,
    fc
      .array(
        fc.constantFrom(
          '{',
          '}',
          '(',
          ')',
          'query',
          'mutation',
          'subscription',
          '...',
          'on',
          '$x',
          ':',
          'auditEvents',
          'createAuditEvents',
          '__schema',
          '"s"',
          '1',
          '@skip',
          'fragment',
        ),
        { maxLength: 60 },
      )
      .map((tokens) => ({
        kind: 'random document',
        headers: auth(),
        body: json({ query: tokens.join(' ') }),
      })),
  ],
  [
    2,
    fc
      .record(
        {
          authorization: fc.oneof(
            fc.stringMatching(/^[\x20-\x7e]{0,80}$/),
            fc.constant(null).map(() => `Bearer ${k.secret}x`),
          ),
          'x-tenant-id': fc.oneof(
            fc.constantFrom(
              'public',
              'pg_catalog',
              'auditgraph',
              'a;drop schema x',
              '"q"',
              'a'.repeat(41),
              '',
            ),
            fc.stringMatching(/^[\x21-\x7e]{0,50}$/),
          ),
          'content-type': fc.constantFrom(
            'application/json',
            'text/plain',
            'application/graphql',
            'multipart/form-data',
            'application/x-www-form-urlencoded',
            '',
          ),
        },
        { requiredKeys: [] },
      )
      .map((headers) => ({
        kind: 'random headers',
        headers,
        body: json({
          query: CREATE,
          variables: { input: { events: [{ ...event(), occurredAt: 'bad' }] } },
        }),
      })),
  ],
  [
    1,
    fc.string({ maxLength: 300 }).map((q) => ({
      kind: 'GET with junk',
      method: 'GET' as const,
      headers: auth(),
      body: q,
    })),
  ],
];

const hostileRequest = fc.oneof(
  ...arbitraries.map(([weight, arbitrary]) => ({ weight, arbitrary })),
);

/** Internals that must never reach a client. */
const LEAKS = [
  /\n\s+at [^\n]*:\d+:\d+/, // a stack frame
  /node_modules|\/work\/|\.ts:\d+/,
  /syntax error at or near|relation "|SQLSTATE|duplicate key value|violates/i,
  /"t_[a-z0-9_]+"|t_[a-z0-9_]+\.audit_events/,
];

async function send(r: HostileRequest): Promise<{ status: number; text: string; type: string }> {
  const url = r.path
    ? t.url.replace('/graphql', r.path)
    : r.method === 'GET'
      ? `${t.url}?query=${encodeURIComponent(String(r.body))}`
      : t.url;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...r.headers };
  if (headers['content-type'] === '') delete headers['content-type'];
  const res = await fetch(url, {
    method: r.method ?? 'POST',
    headers,
    body:
      r.method === 'GET' ? undefined : typeof r.body === 'string' ? r.body : new Uint8Array(r.body),
  });
  return {
    status: res.status,
    text: await res.text(),
    type: res.headers.get('content-type') ?? '',
  };
}

/** A GraphQL result: an object with `data` and/or `errors` (each with a message), or a batch of them. */
function isGraphQLResult(v: unknown): boolean {
  if (Array.isArray(v)) return v.length > 0 && v.every(isGraphQLResult);
  if (!v || typeof v !== 'object') return false;
  const o = v as { data?: unknown; errors?: unknown };
  if (!('data' in o) && !('errors' in o)) return false;
  if ('errors' in o) {
    if (!Array.isArray(o.errors) || o.errors.length === 0) return false;
    for (const e of o.errors as { message?: unknown; extensions?: { code?: unknown } }[]) {
      if (typeof e.message !== 'string') return false;
      if (e.extensions?.code === 'INTERNAL') return false;
    }
  }
  return true;
}

describe('hostile input', () => {
  it(
    `answers ${HTTP_RUNS} generated hostile HTTP requests and ${WS_RUNS} hostile WebSocket sessions well, and stores nothing`,
    async () => {
      const started = Date.now();
      const kinds = new Map<string, number>();
      const statuses = new Map<number, number>();
      const times = new Map<string, number>();

      await fc.assert(
        fc.asyncProperty(hostileRequest, async (r) => {
          kinds.set(r.kind, (kinds.get(r.kind) ?? 0) + 1);
          const t0 = Date.now();
          const res = await send(r);
          times.set(r.kind, (times.get(r.kind) ?? 0) + Date.now() - t0);
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          const where = `${r.kind}: ${res.status} ${res.text.slice(0, 300)}`;
          expect(res.status, where).toBeLessThan(500);
          for (const leak of LEAKS) expect(res.text, where).not.toMatch(leak);
          expect(res.text, where).not.toContain(k.secret);
          // Every export request here is refused by its parameters: 400, with a JSON reason.
          if (r.path?.startsWith('/export')) {
            expect(res.status, where).toBe(400);
            expect(JSON.parse(res.text).error.code, where).toBe('BAD_USER_INPUT');
            return;
          }
          if (res.type.includes('json')) {
            const body = JSON.parse(res.text);
            if (res.status === 200) expect(isGraphQLResult(body), where).toBe(true);
            else expect(typeof body === 'object' && body !== null, where).toBe(true);
          } else {
            // Not JSON: only an HTTP error (a refused body, an unknown media type…) may be.
            expect(res.status, where).toBeGreaterThanOrEqual(400);
          }
        }),
        { numRuns: HTTP_RUNS },
      );

      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.oneof(
              fc.uint8Array({ maxLength: 512 }).map((b) => Buffer.from(b)),
              fc.string({ unit: 'binary', maxLength: 200 }),
              fc.jsonValue({ maxDepth: 3 }).map((v) => json(v)),
              fc.constantFrom(
                json({ type: 'connection_init', payload: { authorization: 'Bearer x' } }),
                json({ type: 'connection_init', payload: { tenantId: 'public' } }),
                json({ type: 'connection_init', payload: 'x' }),
                json({ type: 'connection_init' }),
                json({
                  type: 'subscribe',
                  id: '1',
                  payload: { query: 'subscription { flushCompleted { __typename } }' },
                }),
                json({ type: 'subscribe', id: 1, payload: null }),
                json({ type: 'ping' }),
                json({ type: 'complete', id: '1' }),
                'x'.repeat(100_000),
              ),
            ),
            { minLength: 1, maxLength: 8 },
          ),
          fc.boolean(),
          async (frames, authenticated) => {
            const ws = new WebSocket(t.url.replace(/^http/, 'ws'), 'graphql-transport-ws');
            const closed = new Promise<number>((resolve) =>
              ws.on('close', (code) => resolve(code)),
            );
            ws.on('error', () => {});
            await new Promise<void>((resolve) => {
              ws.once('open', () => resolve());
              ws.once('close', () => resolve());
            });
            if (ws.readyState === ws.OPEN) {
              if (authenticated) {
                ws.send(
                  json({
                    type: 'connection_init',
                    payload: { authorization: `Bearer ${k.secret}` },
                  }),
                );
              }
              for (const f of frames) if (ws.readyState === ws.OPEN) ws.send(f);
              await new Promise((r) => setTimeout(r, 5));
              ws.close();
            }
            const code = await closed;
            // Closed by either side with a code; never a dropped connection (1006) from a crash.
            expect(code).not.toBe(1006);
          },
        ),
        { numRuns: WS_RUNS },
      );

      const elapsed = Date.now() - started;
      console.info(
        `fuzz: ${HTTP_RUNS} HTTP requests and ${WS_RUNS} WebSocket sessions in ${elapsed} ms; ` +
          `kinds ${json(Object.fromEntries(kinds))}; statuses ${json(Object.fromEntries(statuses))}; ` +
          `ms per kind ${json(Object.fromEntries(times))}`,
      );
      expect(elapsed).toBeLessThan(TIME_BOUND_MS);

      // The process is up and healthy, and still serves the tenant correctly.
      const health = await fetch(t.url.replace('/graphql', '/healthz'));
      expect(health.status).toBe(200);
      const c = keyClient(t, k.secret);
      const flushed = await c.gql(
        'mutation { flushAudit(input: { timeoutMs: 10000 }) { __typename } }',
      );
      expect(flushed.flushAudit.__typename).toBe('FlushAuditPayload');

      // Nothing from the hostile requests was stored, and no tenant was created.
      const stored = await sql.query(
        `select category, count(*)::int as n from "t_${F}".audit_events group by category`,
      );
      expect(stored.rows.filter((r) => r.category !== 'access')).toEqual([]);
      const tenantsAfter = (await sql.query('select count(*)::int as n from auditgraph.tenants'))
        .rows[0].n;
      expect(tenantsAfter).toBe(tenantsBefore);
      // The access records of the hostile reads were stored like any event: none dead-lettered.
      const stats = await c.gql(
        '{ auditStats { ... on AuditStats { accepted stored pending deadLettered identityHolds } } }',
      );
      expect(stats.auditStats).toMatchObject({ pending: 0, deadLettered: 0, identityHolds: true });
      const access = stored.rows.find((r) => r.category === 'access')?.n ?? 0;
      expect(access).toBe(stats.auditStats.stored);
    },
    TIME_BOUND_MS + 60_000,
  );
});
