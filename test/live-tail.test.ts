import { randomUUID } from 'node:crypto';
import type { Client } from 'graphql-ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';
import {
  type Message,
  redisEnv,
  type Stream,
  sseSubscribe,
  wsClient,
  wsSubscribe,
} from './support/realtime.js';

/**
 * auditEventsAdded(after:): a live tail resumed from a cursor sends every event stored after it,
 * then live ones, each once, in chain order per month — across two instances sharing Redis,
 * with writers on both while the tail replays. Real PostgreSQL and Redis.
 */

const TAIL = `subscription Tail($filter: AuditEventFilter, $after: String) {
  auditEventsAdded(filter: $filter, after: $after) {
    __typename
    ... on SubscriptionReady { instanceId startCursor }
    ... on AuditEventAdded { cursor node { id: eventId occurredAt chainSeq data } }
    ... on SubscriptionInterruptedError { reason }
  }
}`;

const PAGE = `query P($filter: AuditEventFilter) {
  auditEvents(first: 5, filter: $filter) { edges { cursor } } }`;

let a: TestApp;
let b: TestApp;
const tenants: string[] = [];
const clients: Client[] = [];
const tenant = (what: string) => {
  const id = newTenant(what);
  tenants.push(id);
  return id;
};
const tail = (app: TestApp, id: string, variables: Record<string, unknown>): Stream => {
  const c = wsClient(app.url, { tenantId: id });
  clients.push(c);
  return wsSubscribe(c, 'auditEventsAdded', TAIL, variables);
};
const write = (app: TestApp, id: string, events: Record<string, unknown>[]) =>
  app.gql(id, CREATE, { input: { events } });
const batch = (n: number, correlationId: string, over: Record<string, unknown> = {}) =>
  Array.from({ length: n }, () => event({ id: randomUUID(), correlationId, ...over }));

/** The month chain an event is in (first instant of its UTC month). */
const monthOf = (m: Message) => (m.node.occurredAt as string).slice(0, 7);

/** Reads `n` events from a tail (after its ready marker has been read). */
async function events(s: Stream, n: number): Promise<Message[]> {
  const got: Message[] = [];
  while (got.length < n) {
    const m = await s.next();
    expect(m.__typename).toBe('AuditEventAdded');
    got.push(m);
  }
  return got;
}

/** Per month, positions strictly increasing: chain order, nothing twice. */
function expectChainOrder(seen: Message[]): void {
  const last = new Map<string, number>();
  for (const m of seen) {
    const month = monthOf(m);
    expect(m.node.chainSeq).toBeGreaterThan(last.get(month) ?? 0);
    last.set(month, m.node.chainSeq);
  }
}

beforeAll(async () => {
  const env = {
    ...redisEnv(),
    BATCH_SIZE: '20',
    FLUSH_INTERVAL_MS: '50',
    TAIL_REPLAY_MAX_EVENTS: '500',
  };
  a = await startApp({ ...env, INSTANCE_ID: 'tail-a' });
  b = await startApp({ ...env, INSTANCE_ID: 'tail-b' });
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.dispose()));
  await a?.stop();
  await b?.stop();
  await dropTenants(...tenants);
});

describe('auditEventsAdded from a cursor', () => {
  it('resumes after the last event received: the events stored meanwhile first, then live, each once', async () => {
    const id = tenant('resume');
    const corr = `c-${randomUUID()}`;
    const first = tail(a, id, { filter: { correlationId: corr } });
    expect((await first.next()).__typename).toBe('SubscriptionReady');
    const early = batch(30, corr);
    await write(a, id, early);
    const got1 = await events(first, 30);
    await first.close();
    const cursor = got1.at(-1)!.cursor as string;

    // While nobody tails: events on both instances, this month and a month back.
    const lastMonth = new Date();
    lastMonth.setUTCMonth(lastMonth.getUTCMonth() - 1, 15);
    const missed = [
      ...batch(25, corr),
      ...batch(5, corr, { occurredAt: lastMonth.toISOString() }),
      ...batch(10, `other-${corr}`),
    ];
    await write(a, id, missed.slice(0, 20));
    await write(b, id, missed.slice(20));

    const resumed = tail(b, id, { filter: { correlationId: corr }, after: cursor });
    const ready = await resumed.next();
    expect(ready).toMatchObject({ __typename: 'SubscriptionReady', startCursor: cursor });
    // Writers on both instances while the replay runs.
    const live = [batch(20, corr), batch(20, corr), batch(20, corr)];
    const writing = Promise.all([
      write(a, id, live[0]!),
      write(b, id, live[1]!),
      write(a, id, live[2]!),
    ]);
    const got2 = await events(resumed, 30 + 60);
    await writing;

    const want = [...missed.filter((e) => e.correlationId === corr), ...live.flat()].map(
      (e) => e.id,
    );
    expect(got2.map((m) => m.node.id).sort()).toEqual([...want].sort());
    expect(new Set([...got1, ...got2].map((m) => m.node.id)).size).toBe(30 + 90);
    expectChainOrder([...got1, ...got2]);
    // The month back came too, in its own chain.
    expect(got2.filter((m) => monthOf(m) === lastMonth.toISOString().slice(0, 7))).toHaveLength(5);
    await resumed.close();

    // Negative control: a tail opened now without a cursor sees none of those events.
    const fresh = tail(a, id, { filter: { correlationId: corr } });
    expect((await fresh.next()).__typename).toBe('SubscriptionReady');
    const sentinel = batch(1, corr);
    await write(a, id, sentinel);
    expect((await fresh.next()).node.id).toBe(sentinel[0]!.id);
    await fresh.close();
  });

  it('sends an event committed between the subscription and its replay once, not twice', async () => {
    const id = tenant('seam');
    // Hold the replay (its read of the chain heads) until the events are committed and their
    // live messages are queued for the subscriber: both sides then hold them.
    const queries = a.app.services.queries;
    const tailStore = queries.tailStore.bind(queries);
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    queries.tailStore = (tenantId, filter) => {
      const store = tailStore(tenantId, filter);
      return {
        ...store,
        heads: async (m) => {
          if (m === undefined) await gate;
          return store.heads(m);
        },
      };
    };
    try {
      const s = tail(a, id, {});
      expect((await s.next()).__typename).toBe('SubscriptionReady');
      const seam = batch(10, 'seam');
      await write(a, id, seam);
      await new Promise((r) => setTimeout(r, 100)); // the live messages reach the subscriber
      release();
      const sentinel = batch(1, 'seam');
      await write(a, id, sentinel);
      const got = await events(s, 11);
      expect(got.map((m) => m.node.id)).toEqual([...seam, ...sentinel].map((e) => e.id));
      await s.close();
    } finally {
      queries.tailStore = tailStore;
      release();
    }
  });

  it('from the ready marker’s startCursor, before any event came, misses nothing', async () => {
    const id = tenant('ready');
    const first = tail(a, id, {});
    const ready = await first.next();
    await first.close();
    const stored = batch(12, 'r');
    await write(b, id, stored);
    const resumed = tail(a, id, { after: ready.startCursor });
    expect((await resumed.next()).__typename).toBe('SubscriptionReady');
    const got = await events(resumed, 12);
    expect(got.map((m) => m.node.id)).toEqual(stored.map((e) => e.id));
    await resumed.close();
  });

  it('refuses a replay past TAIL_REPLAY_MAX_EVENTS with REPLAY_TOO_LARGE, before streaming', async () => {
    const id = tenant('toolarge');
    const first = tail(a, id, {});
    const ready = await first.next();
    await first.close();
    for (let i = 0; i < 6; i++) await write(a, id, batch(100, 'big'));
    const refused = tail(a, id, { after: ready.startCursor });
    const err = await refused.next().then(
      () => null,
      (e: unknown) => JSON.stringify(e),
    );
    expect(err).toContain('REPLAY_TOO_LARGE');
    expect(err).toContain('"events":600');
    expect(err).toContain('"max":500');
    // Over SSE, an HTTP 400 with the code.
    const sse = await sseSubscribe(a.url, id, 'auditEventsAdded', TAIL, {
      after: ready.startCursor,
    }).then(
      () => null,
      (e: { status: number; body: string }) => e,
    );
    expect(sse?.status).toBe(400);
    expect(sse?.body).toContain('REPLAY_TOO_LARGE');
    // Negative control: within the bound, the same tenant's tail replays.
    const near = tail(a, id, {});
    const nearReady = await near.next();
    await near.close();
    await write(a, id, batch(3, 'small'));
    const ok = tail(a, id, { after: nearReady.startCursor });
    expect((await ok.next()).__typename).toBe('SubscriptionReady');
    expect(await events(ok, 3)).toHaveLength(3);
    await ok.close();
  });

  it('takes only its own tenant’s tail cursors: another tenant’s, an altered one or a page cursor is INVALID_CURSOR', async () => {
    const mine = tenant('curmine');
    const theirs = tenant('curtheirs');
    const other = tail(a, theirs, {});
    const theirCursor = (await other.next()).startCursor as string;
    await other.close();
    await write(a, mine, batch(5, 'p'));
    const page = await a.gql(mine, PAGE, {});
    const pageCursor = page.auditEvents.edges[0].cursor as string;
    const own = tail(a, mine, {});
    const ownCursor = (await own.next()).startCursor as string;
    await own.close();
    const altered = ownCursor.replace(/-(\d+)\./, (_, n) => `-${Number(n) + 1}.`);
    expect(altered).not.toBe(ownCursor);
    for (const after of [theirCursor, altered, pageCursor, 'x'.repeat(40_000)]) {
      const s = tail(a, mine, { after });
      const err = await s.next().then(
        () => null,
        (e: unknown) => JSON.stringify(e),
      );
      expect(err).toContain('INVALID_CURSOR');
    }
  });
});
