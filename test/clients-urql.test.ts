import {
  Client,
  fetchExchange,
  gql,
  type OperationResult,
  type OperationResultSource,
} from '@urql/core';
import { cacheExchange } from '@urql/exchange-graphcache';
import { relayPagination } from '@urql/exchange-graphcache/extras';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  EVENTS_PAGE,
  type EventsPage,
  eventIds,
  introspect,
  tampered,
  type Written,
  writeEvents,
} from './support/clients.js';
import { dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * urql with graphcache and `relayPagination()` pages 1,000 events of one correlation id: forward
 * in pages of 50 (first/after, re-executing the query with the next cursor), then, in a second
 * client, backward (last/before). The list graphcache merges holds every event exactly once,
 * in the order asked for. A page asked for with a tampered cursor comes back as
 * result.error with code INVALID_CURSOR, and the merged list in the cache is unchanged. The
 * cache is given the service's own schema (introspected), and must not warn.
 */

const TOTAL = 1000;
const SIZE = 50;
const ORDER = 'OCCURRED_AT_ASC';
const QUERY = gql<EventsPage>(EVENTS_PAGE);

type Result = OperationResult<EventsPage>;

/**
 * The first result that is not stale. Asked for a page it has not fetched, graphcache first
 * answers with what it has (the pages merged so far, stale) and then with the page.
 */
function settled(source: OperationResultSource<Result>): Promise<Result> {
  return new Promise((resolve) => {
    let done = false;
    let stop: (() => void) | undefined;
    const sub = source.subscribe((r) => {
      if (done || r.stale) return;
      done = true;
      resolve(r);
      stop?.();
    });
    stop = sub.unsubscribe;
    if (done) stop();
  });
}

describe('urql with graphcache relayPagination', () => {
  let t: TestApp;
  const tenant = newTenant('urql');
  const correlationId = 'urql-walk';
  const filter = { correlationId };
  let oldestFirst: string[] = [];
  let schema: Awaited<ReturnType<typeof introspect>>;
  let warn: ReturnType<typeof vi.spyOn>;

  beforeAll(async () => {
    t = await startApp();
    schema = await introspect(t, tenant);
    await writeEvents(t, tenant, 10, 'urql-other');
    const written: Written[] = await writeEvents(t, tenant, TOTAL, correlationId);
    oldestFirst = written.map((w) => w.eventId);
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
  });
  beforeEach(() => {
    warn = vi.spyOn(console, 'warn');
  });
  afterEach(() => {
    // graphcache warns about what it cannot cache properly (keys, unknown fields, types).
    expect(warn.mock.calls).toEqual([]);
    warn.mockRestore();
  });

  function urql(): Client {
    return new Client({
      url: t.url,
      fetchOptions: { headers: { 'x-tenant-id': tenant } },
      exchanges: [
        cacheExchange({ schema, resolvers: { Query: { auditEvents: relayPagination() } } }),
        fetchExchange,
      ],
    });
  }

  interface Walked {
    client: Client;
    last: Record<string, unknown>;
    pages: number;
  }

  /** Re-executes the query with each next cursor until the far edge. */
  async function walk(client: Client, direction: 'forward' | 'backward'): Promise<Walked> {
    let vars: Record<string, unknown> =
      direction === 'forward'
        ? { first: SIZE, filter, order: ORDER }
        : { last: SIZE, filter, order: ORDER };
    let pages = 0;
    for (;;) {
      const r = await settled(client.query(QUERY, vars));
      pages++;
      expect(r.error, String(r.error)).toBeUndefined();
      // The answer is the merged list so far, not the page alone.
      expect(r.data!.auditEvents.edges).toHaveLength(pages * SIZE);
      const { pageInfo } = r.data!.auditEvents;
      const more = direction === 'forward' ? pageInfo.hasNextPage : pageInfo.hasPreviousPage;
      if (!more) return { client, last: vars, pages };
      if (pages > TOTAL / SIZE) throw new Error('the walk does not end');
      vars =
        direction === 'forward'
          ? { ...vars, after: pageInfo.endCursor }
          : { ...vars, before: pageInfo.startCursor };
    }
  }

  /** The merged list as the cache holds it, read without the network. */
  function cached(w: Walked): EventsPage | undefined {
    const r = w.client.readQuery(QUERY, w.last, { requestPolicy: 'cache-only' });
    return r?.data;
  }

  it('control: graphcache does warn about what it cannot key, so the check after each test is live', async () => {
    // An actor selected without its id cannot be keyed (graphcache embeds it, and says so).
    const unkeyed = gql(`query Unkeyed($filter: AuditEventFilter) {
      auditEvents(first: 1, filter: $filter) { edges { node { id actor { type } } } }
    }`);
    const r = await settled(urql().query(unkeyed, { filter }));
    expect(r.error).toBeUndefined();
    expect(warn.mock.calls.flat().join('\n')).toContain('Invalid key');
    warn.mockClear();
  });

  let forward: Walked;

  it('pages forward: the merged list holds every event once, in order', async () => {
    forward = await walk(urql(), 'forward');
    expect(forward.pages).toBe(TOTAL / SIZE);
    const ids = eventIds(cached(forward));
    expect(new Set(ids).size).toBe(TOTAL);
    expect(ids).toEqual(oldestFirst);
  });

  it('pages backward: the merged list holds every event once, in order', async () => {
    const backward = await walk(urql(), 'backward');
    expect(backward.pages).toBe(TOTAL / SIZE);
    const ids = eventIds(cached(backward));
    expect(new Set(ids).size).toBe(TOTAL);
    expect(ids).toEqual(oldestFirst);
  });

  it('a tampered cursor comes back as result.error; the merged list stays as it was', async () => {
    expect(forward, 'the forward walk ran').toBeDefined();
    const before = cached(forward);
    expect(eventIds(before)).toHaveLength(TOTAL);
    const genuine = forward.last.after as string;
    const bad = tampered(genuine);
    expect(bad).not.toBe(genuine);

    // The genuine cursor is accepted (from a client of its own), so the refusal is the tampering.
    const control = await settled(urql().query(QUERY, { ...forward.last, after: genuine }));
    expect(control.error).toBeUndefined();
    expect(control.data!.auditEvents.edges).toHaveLength(SIZE);

    const r = await settled(forward.client.query(QUERY, { ...forward.last, after: bad }));
    expect(r.error, 'the request failed').toBeDefined();
    expect(r.error!.graphQLErrors[0]?.extensions?.code).toBe('INVALID_CURSOR');
    expect(r.error!.graphQLErrors[0]?.extensions?.retryable).toBe(false);
    expect(r.error!.networkError).toBeUndefined();

    expect(cached(forward)).toEqual(before);
  });
});
