import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * Compiled execution (graphql/compiled-queries.ts) changes how a repeated operation runs, never
 * what it answers: every read below, and every write refused the same way each time, is sent
 * three times against the real service — once through graphql-js, then twice compiled — and
 * must come back the same, status included, whether it succeeds, is refused by a resolver, or
 * has bad variables.
 */

let t: TestApp;
let off: TestApp;
const T = newTenant('jit');
const STRANGER = newTenant('jitx');

const EVERY_FIELD = `query All($first: Int, $after: String, $last: Int, $before: String, $filter: AuditEventFilter) {
  auditEvents(first: $first, after: $after, last: $last, before: $before, filter: $filter) {
    __typename
    ... on AuditEventConnection {
      edges { cursor node { __typename id eventId occurredAt receivedAt eventType category action outcome
        correlationId actor { type actorId ip } resource { type resourceId name } parentEventId severity
        durationMs errorCode errorMessage namespace clusterId traceId spanId data chainSeq prevHash hash batchId } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}`;

function withoutRequestIds(body: unknown): unknown {
  return JSON.parse(JSON.stringify(body), (k, v) => (k === 'requestId' ? undefined : v));
}

async function compiledCount(app: TestApp): Promise<number> {
  const text = await app.app.metrics.render();
  return Number(/^auditgraph_graphql_queries_compiled_total (\d+)/m.exec(text)?.[1]);
}

beforeAll(async () => {
  t = await startApp();
  off = await startApp({ QUERY_COMPILE_AFTER: '-1' });
  const base = Date.now() - 120_000;
  const events = Array.from({ length: 6 }, (_, i) =>
    event({
      id: randomUUID(),
      occurredAt: new Date(base + i * 1_000).toISOString(),
      eventType: i % 2 ? 'workflow.execution.failed' : 'workflow.execution.started',
      outcome: i % 2 ? 'FAILURE' : 'SUCCESS',
      severity: i % 2 ? 'error' : null,
      durationMs: i % 3 ? 1_000 * i : null,
      errorCode: i % 2 ? 'E_STEP' : null,
      data: { seq: i, nested: { list: [1, 'two', null, { deep: true }] } },
    }),
  );
  const r = await t.gql(T, CREATE, { input: { ack: 'COMMITTED', events } });
  expect(r.createAuditEvents.stored).toBe(6);
}, 120_000);

afterAll(async () => {
  await t?.stop();
  await off?.stop();
  await dropTenants(T, STRANGER);
});

describe('compiled queries', () => {
  it('answer every read exactly as graphql-js does, and are compiled from the second time', async () => {
    const first = (await t.gql(T, EVERY_FIELD, { first: 3 })).auditEvents;
    const cursor: string = first.pageInfo.endCursor;
    const node = first.edges[0].node;
    const reads: [string | null, string, Record<string, unknown>?][] = [
      [T, EVERY_FIELD, { first: 3 }],
      [T, EVERY_FIELD, { first: 2, after: cursor }],
      [T, EVERY_FIELD, { last: 2, before: cursor }],
      [
        T,
        EVERY_FIELD,
        {
          first: 10,
          filter: { dataContains: { seq: 3 }, eventTypes: ['workflow.execution.failed'] },
        },
      ],
      [
        T,
        EVERY_FIELD,
        { first: 10, filter: { occurredAfter: node.occurredAt, outcome: 'FAILURE' } },
      ],
      // Refused by the resolver: a cursor of another filter, a tampered one, a size out of range.
      [T, EVERY_FIELD, { first: 2, after: cursor, filter: { outcome: 'SUCCESS' } }],
      [T, EVERY_FIELD, { first: 2, after: `${cursor.slice(0, -2)}AA` }],
      [T, EVERY_FIELD, { first: 0 }],
      [T, EVERY_FIELD, { first: 2, last: 2 }],
      // Bad variables: graphql-js's words and status.
      [T, EVERY_FIELD, { first: 'three' }],
      [T, EVERY_FIELD, { first: 2, filter: { occurredAfter: '0000-01-01T00:00:00Z' } }],
      [T, EVERY_FIELD, { first: 2, filter: { dataContains: 'not an object' } }],
      [
        T,
        'query($id: ID!) { node(id: $id) { __typename id ... on AuditEvent { eventId data hash } } }',
        { id: node.id },
      ],
      [
        T,
        'query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }',
        { ids: [node.id, 'bogus'] },
      ],
      [
        T,
        'query($e: String!) { auditEvent(eventId: $e) { eventId actor { actorId } } }',
        { e: node.eventId },
      ],
      [T, 'query($e: String!) { auditEvent(eventId: $e) { eventId } }', { e: randomUUID() }],
      [T, 'query($e: String!) { auditEvent(eventId: $e) { eventId } }', { e: 'not-a-uuid' }],
      [
        T,
        '{ auditStats { __typename ... on AuditStats { accepted stored pending identityHolds } } }',
      ],
      [T, '{ __typename __type(name: "Actor") { name fields { name type { name kind } } } }'],
      // Writes that are refused the same way every time: events that fail validation (a typed
      // ValidationError), a variable of the wrong shape (graphql-js's words, naming the path).
      [T, CREATE, { input: { events: [event({ occurredAt: 'yesterday', outcome: 'SUCCESS' })] } }],
      [T, CREATE, { input: { events: [event({ eventType: '' }), event({ actor: null })] } }],
      [T, CREATE, { input: { ack: 'SOMETIMES', events: [event()] } }],
      // The tenant never wrote (unknown), and no tenant at all.
      [STRANGER, EVERY_FIELD, { first: 1 }],
      [null, EVERY_FIELD, { first: 1 }],
    ];
    const before = await compiledCount(t);
    for (const [tenant, query, variables] of reads) {
      const answers = [];
      for (let i = 0; i < 3; i++) {
        const r = await t.raw(tenant, { query, variables });
        answers.push({ status: r.status, body: withoutRequestIds(r.body) });
      }
      const seen = `${query.slice(0, 40)} ${JSON.stringify(variables)}`;
      expect(answers[1], seen).toEqual(answers[0]);
      expect(answers[2], seen).toEqual(answers[0]);
    }
    // Each distinct text is compiled once, on its second execution: the 7 texts above without a
    // string literal (the page's and the write's had run before); __type(name: "Actor") is not.
    expect((await compiledCount(t)) - before).toBe(7);
  });

  it('are not compiled with QUERY_COMPILE_AFTER=-1 (negative control), and answer the same', async () => {
    const page = async (app: TestApp) =>
      (await app.raw(T, { query: EVERY_FIELD, variables: { first: 4 } })).body;
    const compiledAnswer = [await page(t), await page(t)];
    const plain = [await page(off), await page(off), await page(off)];
    expect(await compiledCount(off)).toBe(0);
    for (const p of plain) expect(p).toEqual(compiledAnswer[1]);
  });
});
