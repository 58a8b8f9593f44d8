import {
  ApolloClient,
  CombinedGraphQLErrors,
  gql,
  HttpLink,
  InMemoryCache,
  type ObservableQuery,
} from '@apollo/client';
import { relayStylePagination } from '@apollo/client/utilities';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  EVENTS_PAGE,
  type EventsPage,
  eventIds,
  tampered,
  type Written,
  writeEvents,
} from './support/clients.js';
import { CREATE, dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * Apollo Client 4 pages 1,000 events of one correlation id through its normalised cache with
 * `relayStylePagination(['filter', 'order'])`: forward in pages of 50 (first/after, fetchMore),
 * then, in a second client, backward (last/before). The merged list in the cache holds every
 * event exactly once, in the order asked for. A page asked for with a tampered cursor fails on
 * Apollo's error path (CombinedGraphQLErrors, code INVALID_CURSOR) and leaves the merged list
 * in the cache as it was.
 */

const TOTAL = 1000;
const SIZE = 50;
const ORDER = 'OCCURRED_AT_DESC';
const QUERY = gql(EVENTS_PAGE);

function apollo(t: TestApp, tenant: string): ApolloClient {
  return new ApolloClient({
    link: new HttpLink({ uri: t.url, fetch, headers: { 'x-tenant-id': tenant } }),
    cache: new InMemoryCache({
      typePolicies: {
        Query: { fields: { auditEvents: relayStylePagination(['filter', 'order']) } },
      },
    }),
  });
}

interface Walked {
  client: ApolloClient;
  query: ObservableQuery<EventsPage>;
  variables: Record<string, unknown>;
  pages: EventsPage[];
}

/** Walks to the far edge with fetchMore; returns the pages as the service sent them. */
async function walk(client: ApolloClient, direction: 'forward' | 'backward', filter: object) {
  const variables =
    direction === 'forward'
      ? { first: SIZE, filter, order: ORDER }
      : { last: SIZE, filter, order: ORDER };
  const query = client.watchQuery<EventsPage>({ query: QUERY, variables });
  // Watching (as a rendered list does) sends the first page.
  const first = await new Promise<EventsPage>((resolve, reject) => {
    query.subscribe({
      next: (r) => {
        if (r.error) reject(r.error);
        else if (r.dataState === 'complete') resolve(r.data);
      },
      error: reject,
    });
  });
  const pages: EventsPage[] = [first];
  for (;;) {
    const { pageInfo } = pages.at(-1)!.auditEvents;
    const more = direction === 'forward' ? pageInfo.hasNextPage : pageInfo.hasPreviousPage;
    if (!more) break;
    if (pages.length > TOTAL / SIZE) throw new Error('the walk does not end');
    const next = await query.fetchMore({
      variables:
        direction === 'forward' ? { after: pageInfo.endCursor } : { before: pageInfo.startCursor },
    });
    pages.push(next.data!);
  }
  return { client, query, variables, pages } satisfies Walked;
}

/** The list as Apollo's cache holds it (what a component reading the query would render). */
function cached(w: Walked): EventsPage | null {
  return w.client.readQuery<EventsPage>({ query: QUERY, variables: w.variables });
}

describe('Apollo Client 4 with relayStylePagination', () => {
  let t: TestApp;
  const tenant = newTenant('apollo');
  const correlationId = 'apollo-walk';
  const filter = { correlationId };
  let newestFirst: string[] = [];

  beforeAll(async () => {
    t = await startApp();
    // Other events of the tenant stay out of the walk: the filter is part of the cache key.
    await writeEvents(t, tenant, 10, 'apollo-other');
    const written: Written[] = await writeEvents(t, tenant, TOTAL, correlationId);
    newestFirst = written.map((w) => w.eventId).reverse();
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
  });

  let forward: Walked;

  it('pages forward with fetchMore: the cache holds every event once, in order', async () => {
    forward = await walk(apollo(t, tenant), 'forward', filter);
    expect(forward.pages).toHaveLength(TOTAL / SIZE);
    for (const p of forward.pages) expect(p.auditEvents.edges).toHaveLength(SIZE);
    const ids = eventIds(cached(forward));
    expect(new Set(ids).size).toBe(TOTAL);
    expect(ids).toEqual(newestFirst);
  });

  it('pages backward with fetchMore: the cache holds every event once, in order', async () => {
    const backward = await walk(apollo(t, tenant), 'backward', filter);
    expect(backward.pages).toHaveLength(TOTAL / SIZE);
    // The first page fetched is the end of the list.
    expect(eventIds(backward.pages[0])).toEqual(newestFirst.slice(-SIZE));
    const ids = eventIds(cached(backward));
    expect(new Set(ids).size).toBe(TOTAL);
    expect(ids).toEqual(newestFirst);
    backward.client.stop();
  });

  it('a tampered cursor fails on the error path and leaves the merged list alone', async () => {
    expect(forward, 'the forward walk ran').toBeDefined();
    const before = cached(forward);
    expect(eventIds(before)).toHaveLength(TOTAL);
    const genuine = forward.pages[3]!.auditEvents.pageInfo.endCursor!;
    const bad = tampered(genuine);
    expect(bad).not.toBe(genuine);

    // The genuine cursor gives a page (kept out of the cache), so the refusal is the tampering.
    const control = await forward.client.query<EventsPage>({
      query: QUERY,
      variables: { ...forward.variables, after: genuine },
      fetchPolicy: 'no-cache',
    });
    expect(eventIds(control.data)).toEqual(newestFirst.slice(4 * SIZE, 5 * SIZE));

    // fetchMore rejects with the GraphQL errors...
    const thrown = await forward.query.fetchMore({ variables: { after: bad } }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(CombinedGraphQLErrors.is(thrown), String(thrown)).toBe(true);
    expect((thrown as CombinedGraphQLErrors).errors[0]?.extensions?.code).toBe('INVALID_CURSOR');
    expect((thrown as CombinedGraphQLErrors).data ?? null).toBeNull();

    // ...and a query with errorPolicy 'all' hands them back as result.error.
    const result = await forward.client.query<EventsPage>({
      query: QUERY,
      variables: { ...forward.variables, after: bad },
      fetchPolicy: 'network-only',
      errorPolicy: 'all',
    });
    expect(CombinedGraphQLErrors.is(result.error), String(result.error)).toBe(true);
    expect((result.error as CombinedGraphQLErrors).errors[0]?.extensions).toMatchObject({
      code: 'INVALID_CURSOR',
      retryable: false,
    });

    // The list merged so far is still in the cache, unchanged.
    expect(cached(forward)).toEqual(before);
    expect(forward.query.getCurrentResult().data).toEqual(before);
    forward.client.stop();
  });
});

/**
 * Apollo normalises every object with an `id` by `__typename:id`. An actor and a resource are
 * not entities of the service: two events by the same actor may carry different ips, and two on
 * the same resource different names. They name their ids actorId and resourceId, so each event
 * keeps its own.
 */
describe('Apollo Client 4 and the values inside an event', () => {
  let t: TestApp;
  const tenant = newTenant('apolloactor');
  const QUERY_ACTORS = gql(`query Actors($filter: AuditEventFilter) {
    auditEvents(first: 10, filter: $filter, order: OCCURRED_AT_ASC) {
      edges { node { id eventId actor { type actorId ip } resource { type resourceId name } } }
    }
  }`);
  const variables = { filter: { correlationId: 'same-actor' } };

  beforeAll(async () => {
    t = await startApp();
    const at = Date.now() - 60_000;
    const events = [0, 1].map((i) => ({
      occurredAt: new Date(at + i * 1_000).toISOString(),
      eventType: 'workflow.execution.started',
      category: 'workflow',
      action: 'start',
      outcome: 'SUCCESS',
      correlationId: 'same-actor',
      actor: { type: 'user', id: 'alice', ip: `10.0.0.${i}` },
      resource: { type: 'workflow', id: 'wf-1', name: `name-${i}` },
    }));
    const r = await t.gql(tenant, CREATE, { input: { events } });
    expect(r.createAuditEvents.stored).toBe(2);
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
  });

  type Actors = {
    auditEvents: { edges: { node: { actor: { ip: string }; resource: { name: string } } }[] };
  };
  const seen = (data: Actors | undefined) =>
    data?.auditEvents.edges.map((e) => `${e.node.actor.ip} ${e.node.resource.name}`);

  async function read(cache: InMemoryCache) {
    const client = new ApolloClient({
      link: new HttpLink({ uri: t.url, fetch, headers: { 'x-tenant-id': tenant } }),
      cache,
    });
    const r = await client.query<Actors>({ query: QUERY_ACTORS, variables });
    client.stop();
    return seen(r.data);
  }

  it('keeps each event’s actor ip and resource name apart in the cache', async () => {
    expect(await read(new InMemoryCache())).toEqual(['10.0.0.0 name-0', '10.0.0.1 name-1']);
  });

  it('can fail: keyed by their ids, the two actors and resources collapse into one each', async () => {
    const keyed = new InMemoryCache({
      typePolicies: { Actor: { keyFields: ['actorId'] }, Resource: { keyFields: ['resourceId'] } },
    });
    const collapsed = await read(keyed);
    expect(collapsed).toHaveLength(2);
    expect(collapsed![0]).toBe(collapsed![1]);
  });
});
