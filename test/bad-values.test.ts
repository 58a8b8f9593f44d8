import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditExporter } from '../src/export/exporter.js';
import { verifyExport } from '../src/export/verify-export.js';
import { createExportRoute } from '../src/http/export-route.js';
import { AuditEventReader } from '../src/query/audit-event-reader.js';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  PAGE,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Values a client can send that PostgreSQL or JavaScript cannot represent — NUL in text, lone
 * UTF-16 surrogates, year 0000 and other impossible dates, numbers such as 1e999 — are the
 * client's mistake and are answered as such, naming the field: a ValidationError (filters,
 * events), a BAD_USER_INPUT GraphQL error (DateTime arguments), a 400 with a JSON reason
 * (GET /export). Never a masked INTERNAL, never a dropped connection.
 */

let t: TestApp;
let sql: pg.Client;
const T = newTenant('bad');

beforeAll(async () => {
  t = await startApp();
  sql = await sqlClient();
  const r = await t.gql(T, CREATE, { input: { events: [event({ correlationId: 'bad-seed' })] } });
  expect(r.createAuditEvents.stored).toBe(1);
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(T);
});

/** A request body with `raw` JSON text put in place of the string "__RAW__". */
const withRaw = (body: unknown, raw: string) => JSON.stringify(body).replace('"__RAW__"', raw);

async function page(filterOrBody: Record<string, unknown> | string) {
  const body =
    typeof filterOrBody === 'string'
      ? filterOrBody
      : { query: PAGE, variables: { filter: filterOrBody } };
  return t.raw(T, body);
}

function expectFilterIssue(r: { status: number; body: any }, field: string) {
  const seen = JSON.stringify(r.body);
  expect(r.status, seen).toBe(200);
  expect(r.body.data, seen).toBeNull();
  expect(r.body.errors, seen).toHaveLength(1);
  expect(r.body.errors[0].extensions, seen).toMatchObject({
    code: 'BAD_USER_INPUT',
    issues: [expect.objectContaining({ field })],
  });
  expect(r.body.errors[0].message, seen).toContain(field);
}

describe('filters', () => {
  const STRING_FIELDS = [
    'correlationId',
    'category',
    'action',
    'actorType',
    'actorId',
    'resourceType',
    'resourceId',
    'severity',
  ];

  it('refuses NUL in every text field of the filter as a ValidationError naming it', async () => {
    for (const f of STRING_FIELDS) {
      expectFilterIssue(await page({ [f]: 'a\u0000b' }), `filter.${f}`);
    }
    expectFilterIssue(await page({ eventTypes: ['ok', 'a\u0000'] }), 'filter.eventTypes');
    expectFilterIssue(await page({ dataContains: { k: 'v\u0000' } }), 'filter.dataContains');
    expectFilterIssue(await page({ dataContains: { 'k\u0000': 1 } }), 'filter.dataContains');
    expectFilterIssue(
      await page({ dataContains: { a: [{ b: '\u0000' }] } }),
      'filter.dataContains',
    );
  });

  it('refuses lone surrogates in text and in dataContains', async () => {
    for (const esc of ['\\ud800', '\\udfff']) {
      const q = { query: PAGE, variables: { filter: { correlationId: '__RAW__' } } };
      expectFilterIssue(await page(withRaw(q, `"a${esc}"`)), 'filter.correlationId');
      const d = { query: PAGE, variables: { filter: { dataContains: { s: '__RAW__' } } } };
      expectFilterIssue(await page(withRaw(d, `"${esc}"`)), 'filter.dataContains');
      const k = { query: PAGE, variables: { filter: { dataContains: '__RAW__' } } };
      expectFilterIssue(await page(withRaw(k, `{"${esc}":1}`)), 'filter.dataContains');
    }
  });

  it('refuses numbers in dataContains that cannot be compared exactly (1e999, 2^53 + 2)', async () => {
    for (const n of ['1e999', '-1e999', '1E+400', '9007199254740993']) {
      const q = { query: PAGE, variables: { filter: { dataContains: { n: '__RAW__' } } } };
      expectFilterIssue(await page(withRaw(q, n)), 'filter.dataContains');
    }
    // As a literal in the document, too.
    const literal = await t.raw(T, {
      query: '{ auditEvents(filter: { dataContains: { n: 1e999 } }) { __typename } }',
    });
    expectFilterIssue(literal, 'filter.dataContains');
    // Ordinary numbers still filter.
    const ok = await page({ dataContains: { n: 1.5e3 } });
    expect(ok.body.data.auditEvents.__typename).toBe('AuditEventConnection');
  });
});

describe('DateTime', () => {
  const BAD = [
    '0000-01-01T00:00:00Z',
    '0001-01-01T00:00:00+01:00', // year 0 in UTC
    '2026-02-30T00:00:00Z',
    '2025-02-29T00:00:00Z',
    '2026-04-31T00:00:00Z',
    '2026-00-10T00:00:00Z',
    '2026-01-01T24:00:00Z',
    '2026-01-01T12:60:00Z',
    '2026-01-01T12:00:60Z',
    '2026-01-01T12:00:00+24:00',
  ];

  it('refuses impossible instants in variables as BAD_USER_INPUT naming the field', async () => {
    for (const v of BAD) {
      const r = await page({ occurredAfter: v });
      const seen = `${v}: ${JSON.stringify(r.body)}`;
      expect(r.body.data, seen).toBeUndefined();
      expect(r.body.errors, seen).toHaveLength(1);
      expect(r.body.errors[0].extensions?.code, seen).toBe('BAD_USER_INPUT');
      expect(r.body.errors[0].message, seen).toContain('filter.occurredAfter');
    }
  });

  it('refuses them as literals, in every DateTime argument', async () => {
    for (const v of BAD.slice(0, 3)) {
      for (const query of [
        `{ auditEvents(filter: { occurredBefore: "${v}" }) { __typename } }`,
        `{ verifyAuditChain(from: "${v}", to: "2026-01-01T00:00:00Z") { __typename } }`,
        `{ auditEvent(eventId: "00000000-0000-4000-8000-000000000000", occurredAt: "${v}") { __typename } }`,
      ]) {
        const r = await t.raw(T, { query });
        const seen = `${query}: ${JSON.stringify(r.body)}`;
        expect(r.body.errors?.[0]?.extensions?.code, seen).toBe('BAD_USER_INPUT');
        expect(r.body.errors[0].message, seen).toContain(v);
      }
    }
  });

  it('accepts the first and last instants of the range', async () => {
    const r = await page({
      occurredAfter: '0001-01-01T00:00:00Z',
      occurredBefore: '9999-12-31T23:59:59.999Z',
    });
    expect(r.body.data.auditEvents.__typename, JSON.stringify(r.body)).toBe('AuditEventConnection');
    expect(r.body.data.auditEvents.edges.length).toBeGreaterThan(0);
  });

  it('refuses year 0000 in an event as BAD_USER_INPUT naming occurredAt, storing nothing', async () => {
    const r = await t.raw(T, {
      query: CREATE,
      variables: { input: { events: [event({ occurredAt: '0000-01-01T00:00:00Z' })] } },
    });
    expect(r.body.errors?.[0]?.extensions?.code, JSON.stringify(r.body)).toBe('BAD_USER_INPUT');
    expect(r.body.errors[0].message).toContain('occurredAt');
  });
});

describe('events', () => {
  async function expectEventIssue(ev: Record<string, unknown> | string, field: RegExp) {
    const body =
      typeof ev === 'string'
        ? ev
        : { query: CREATE, variables: { input: { events: [event(), ev] } } };
    const r = await t.raw(T, body);
    const seen = JSON.stringify(r.body);
    expect(r.body.errors, seen).toBeUndefined();
    const res = r.body.data.createAuditEvents;
    expect(res.__typename, seen).toBe('ValidationError');
    expect(
      res.issues.some(
        (i: { index: number; field: string }) => i.index === 1 && field.test(i.field),
      ),
      seen,
    ).toBe(true);
  }

  it('refuses NUL in event strings and in data keys and values, naming the field', async () => {
    await expectEventIssue(event({ category: 'a\u0000' }), /^category$/);
    await expectEventIssue(event({ errorMessage: '\u0000' }), /^errorMessage$/);
    await expectEventIssue(
      event({ actor: { type: 'user', id: 'u\u0000', ip: null } }),
      /^actor\.id$/,
    );
    await expectEventIssue(event({ data: { 'k\u0000': 1 } }), /^data$/);
    await expectEventIssue(event({ data: { a: { b: ['x', 'y\u0000'] } } }), /^data$/);
    // A lone surrogate, in a string field and in data.
    const body = (raw: string, patch: Record<string, unknown>) =>
      withRaw({ query: CREATE, variables: { input: { events: [event(), event(patch)] } } }, raw);
    await expectEventIssue(body('"a\\ud800"', { action: '__RAW__' }), /^action$/);
    await expectEventIssue(body('{"s":"\\udc00"}', { data: '__RAW__' }), /^data$/);
  });
});

/** A GET with node:http: status, headers and the body as sent, or how the connection ended. */
function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string; body: string; error?: string }> {
  return new Promise((resolve) => {
    const req = request(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () =>
        resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }),
      );
      res.on('error', (e) =>
        resolve({ status: res.statusCode!, type: '', body, error: e.message }),
      );
    });
    req.on('error', (e) => resolve({ status: 0, type: '', body: '', error: e.message }));
    req.end();
  });
}

describe('GET /export', () => {
  const exportUrl = (query: string) => `${t.url.replace('/graphql', '/export')}?${query}`;
  const filter = (f: string) => `filter=${encodeURIComponent(f)}`;

  it('answers every bad parameter with 400 and a JSON reason naming it', async () => {
    const cases: [string, string][] = [
      [filter('{"correlationId":"a\\u0000"}'), 'filter.correlationId'],
      [filter('{"eventTypes":["\\u0000"]}'), 'filter.eventTypes'],
      [filter('{"dataContains":{"\\u0000":1}}'), 'filter.dataContains'],
      [filter('{"correlationId":"\\ud800"}'), 'filter.correlationId'],
      [filter('{"occurredAfter":"0000-01-01T00:00:00Z"}'), 'filter.occurredAfter'],
      [filter('{"occurredBefore":"2026-02-30T00:00:00Z"}'), 'filter.occurredBefore'],
      [filter('{"occurredBefore":"2026-01-01T24:00:00Z"}'), 'filter.occurredBefore'],
      [filter('{"dataContains":{"n":1e999}}'), 'filter.dataContains'],
      [filter('{"dataContains":{"n":-1E+400}}'), 'filter.dataContains'],
      [filter('{"dataContains":{"n":9007199254740993}}'), 'filter.dataContains'],
      [filter('{"nope":1}'), 'filter.nope'],
      [filter('{"correlationId":'), 'filter'],
      [filter('%FF'), 'filter'],
      ['format=%00', 'format'],
      ['format=xml', 'format'],
      ['gzip=2', 'gzip'],
      ['gzip=1&gzip=0', 'gzip'],
      ['%00=1', '\u0000'],
    ];
    for (const [query, field] of cases) {
      const r = await get(exportUrl(query), { 'x-tenant-id': T });
      const seen = `${query}: ${r.status} ${r.error ?? ''} ${r.body.slice(0, 300)}`;
      expect(r.status, seen).toBe(400);
      expect(r.type, seen).toContain('application/json');
      const { error } = JSON.parse(r.body);
      expect(error, seen).toMatchObject({
        type: 'ValidationError',
        code: 'BAD_USER_INPUT',
        retryable: false,
      });
      expect(
        error.issues.map((i: { field: string }) => i.field),
        seen,
      ).toContain(field);
    }
  });

  describe('when reading fails', () => {
    let server: Server;
    /** Which page read of an export fails (1: the first). */
    let failOn = 0;
    let reads = 0;
    let base = '';

    beforeAll(async () => {
      // The service's own route over a reader whose `failOn`-th page read fails, as a lost
      // database connection would.
      const reader = new AuditEventReader(t.app.db);
      const failing = Object.assign(Object.create(reader) as AuditEventReader, {
        chainPage: (q: Parameters<AuditEventReader['chainPage']>[0]) => {
          reads++;
          if (reads === failOn) return Promise.reject(new Error('connection terminated'));
          return reader.chainPage(q);
        },
      });
      const route = createExportRoute(
        t.app.services,
        new AuditExporter(failing, t.app.services.checkpoints, { hmac: false, pageSize: 1 }),
        t.app.log,
      );
      server = createServer((req, res) => route(req, res, 'test-request'));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/export`;
      const more = Array.from({ length: 5 }, () => event({ correlationId: 'bad-more' }));
      const w = await t.gql(T, CREATE, { input: { events: more } });
      expect(w.createAuditEvents.stored).toBe(5);
    });

    afterAll(async () => {
      await new Promise((r) => server?.close(r));
    });

    it('before the first byte: a 500 with a JSON reason, not a dropped connection', async () => {
      reads = 0;
      failOn = 1;
      const r = await get(base, { 'x-tenant-id': T });
      expect(r.error, r.error).toBeUndefined();
      expect(r.status).toBe(500);
      expect(JSON.parse(r.body).error).toMatchObject({ type: 'InternalError', code: 'INTERNAL' });
    });

    it('while streaming: the body ends with an error line, and the verifier says it failed', async () => {
      for (const format of ['jsonl', 'csv'] as const) {
        reads = 0;
        failOn = 3;
        const r = await get(`${base}?format=${format}`, { 'x-tenant-id': T });
        expect(r.error, r.error).toBeUndefined();
        expect(r.status).toBe(200);
        const lines = r.body.trimEnd().split('\n');
        const last = lines.at(-1)!;
        const error =
          format === 'jsonl' ? JSON.parse(last).error : JSON.parse(last.slice('#error,'.length));
        expect(error, last).toMatchObject({ type: 'InternalError', requestId: 'test-request' });
        expect(r.body).not.toContain('trailer');
        const v = await verifyExport(Readable.from([Buffer.from(r.body)]), {});
        expect(v.ok).toBe(false);
        expect(v.problem?.message).toMatch(/failed on the server/);
      }
    });
  });
});
