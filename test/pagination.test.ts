import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  PAGE,
  startApp,
  type TestApp,
} from './support/harness.js';
import { type Direction, idsInOrder, type Order, type Page, page, walk } from './support/paging.js';

/**
 * Keyset pagination over (occurredAt, id) when every event shares one occurredAt, so the order
 * rests entirely on the id tie-break.
 *
 * Covered: page sizes 7 and 50, each walked forward (first/after) and backward (last/before) in
 * both orders (OCCURRED_AT_ASC, OCCURRED_AT_DESC); page size 1 walked forward in ASC and
 * backward in DESC (each walk is 1,000 requests; all four would double the file's run time on
 * two cores). 10 full walks over 1,000 events, about 2,600 requests. Each walk checks: every
 * event exactly once, in the exact order (ASC = ids ascending, DESC = ids descending, compared
 * with the sorted id list), page sizes, hasNextPage/hasPreviousPage on the first, middle and
 * last page, and that startCursor/endCursor are the first/last edge cursors.
 * Then: events inserted mid-walk (same occurredAt and later) are neither repeated nor skipped
 * wrongly, for all four direction × order combinations; and the page-size rules.
 */

const TOTAL = 1000;

/** An instant with millisecond precision, an hour ago: inside retention, not in the future. */
function sharedInstant(): Date {
  return new Date(Math.floor(Date.now() / 1000) * 1000 - 3_600_000 + 123);
}

async function insert(t: TestApp, tenant: string, at: Date, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let offset = 0; offset < n; offset += 1000) {
    const events = Array.from({ length: Math.min(1000, n - offset) }, () =>
      event({ id: randomUUID(), occurredAt: at.toISOString(), correlationId: 'page' }),
    );
    const r = await t.gql(tenant, CREATE, { input: { events, ack: 'COMMITTED' } });
    const p = r.createAuditEvents;
    expect(p.__typename, JSON.stringify(p)).toBe('CreateAuditEventsPayload');
    expect(p.stored).toBe(events.length);
    ids.push(...events.map((e) => e.id as string));
  }
  return ids;
}

/** `(occurredAt, id)` keys in the order's sequence. */
interface Key {
  at: number;
  id: string;
}
function compare(a: Key, b: Key): number {
  if (a.at !== b.at) return a.at - b.at;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}
function sortedIds(keys: Key[], order: Order): string[] {
  const s = [...keys].sort(compare);
  if (order === 'OCCURRED_AT_DESC') s.reverse();
  return s.map((k) => k.id);
}

function checkPageInfo(pages: Page[], direction: Direction, size: number, total: number) {
  const count = Math.ceil(total / size);
  expect(pages).toHaveLength(count);
  pages.forEach((p, i) => {
    const isFirst = i === 0;
    const isLast = i === count - 1;
    const expectedSize = isLast ? total - size * (count - 1) : size;
    const where = `${direction} size ${size}, page ${i}`;
    expect(p.edges.length, where).toBe(expectedSize);
    expect(p.pageInfo.startCursor, where).toBe(p.edges[0]!.cursor);
    expect(p.pageInfo.endCursor, where).toBe(p.edges.at(-1)!.cursor);
    // Forward: nothing before the first page, nothing after the last. Backward: mirrored.
    const info =
      direction === 'forward'
        ? { hasPreviousPage: !isFirst, hasNextPage: !isLast }
        : { hasPreviousPage: !isLast, hasNextPage: !isFirst };
    expect(
      { hasPreviousPage: p.pageInfo.hasPreviousPage, hasNextPage: p.pageInfo.hasNextPage },
      where,
    ).toEqual(info);
  });
}

describe('keyset pagination over 1,000 events with one shared occurredAt', () => {
  let t: TestApp;
  const tenant = newTenant('page');
  const extraTenants: string[] = [];
  const at = sharedInstant();
  let keys: Key[] = [];

  beforeAll(async () => {
    t = await startApp();
    const ids = await insert(t, tenant, at, TOTAL);
    keys = ids.map((id) => ({ at: at.getTime(), id }));
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant, ...extraTenants);
  });

  // Sizes 7 and 50 in all four direction × order combinations; size 1 (1,000 requests per walk)
  // forward in ASC and backward in DESC, so it still covers both directions and both orders.
  const combos: [number, Direction, Order][] = [
    [1, 'forward', 'OCCURRED_AT_ASC'],
    [1, 'backward', 'OCCURRED_AT_DESC'],
  ];
  for (const size of [7, 50]) {
    for (const direction of ['forward', 'backward'] as const) {
      for (const order of ['OCCURRED_AT_ASC', 'OCCURRED_AT_DESC'] as const) {
        combos.push([size, direction, order]);
      }
    }
  }

  it.each(combos)(
    'returns every event once, in id order, with correct pageInfo (size %i, %s, %s)',
    async (size, direction, order) => {
      const pages = await walk(t, tenant, { size, direction, order });
      const seen = idsInOrder(pages, direction);
      expect(new Set(seen).size).toBe(seen.length);
      expect(seen).toEqual(sortedIds(keys, order));
      for (const p of pages)
        for (const e of p.edges) expect(e.node.occurredAt).toBe(at.toISOString());
      checkPageInfo(pages, direction, size, TOTAL);
    },
    // A size-1 walk is 1,000 requests: on a loaded 2-core machine that can take over a minute.
    180_000,
  );

  it('orders ties by id ascending under OCCURRED_AT_ASC and descending under OCCURRED_AT_DESC', async () => {
    const asc = await page(t, tenant, { first: 5, order: 'OCCURRED_AT_ASC' });
    const desc = await page(t, tenant, { first: 5, order: 'OCCURRED_AT_DESC' });
    const ids = keys.map((k) => k.id).sort();
    expect(asc.edges.map((e) => e.node.id)).toEqual(ids.slice(0, 5));
    expect(desc.edges.map((e) => e.node.id)).toEqual(ids.slice(-5).reverse());
  });

  it.each([
    ['forward', 'OCCURRED_AT_ASC'],
    ['forward', 'OCCURRED_AT_DESC'],
    ['backward', 'OCCURRED_AT_ASC'],
    ['backward', 'OCCURRED_AT_DESC'],
  ] as [Direction, Order][])(
    'shows events inserted mid-walk at most once, exactly those past the cursor (%s, %s)',
    async (direction, order) => {
      const own = newTenant('pagemid');
      extraTenants.push(own);
      const ids = await insert(t, own, at, TOTAL);
      const all: Key[] = ids.map((id) => ({ at: at.getTime(), id }));
      const later = new Date(at.getTime() + 60_000);
      let cursorKey: Key | undefined;

      const pages = await walk(t, own, {
        size: 50,
        direction,
        order,
        onPage: async (i, p) => {
          if (i !== 2) return;
          // After page 3: 20 more at the same instant (ids land on both sides of the cursor)
          // and 20 at a later instant.
          const edge = direction === 'forward' ? p.edges.at(-1)! : p.edges[0]!;
          cursorKey = { at: Date.parse(edge.node.occurredAt), id: edge.node.id };
          const same = await insert(t, own, at, 20);
          const newer = await insert(t, own, later, 20);
          all.push(...same.map((id) => ({ at: at.getTime(), id })));
          all.push(...newer.map((id) => ({ at: later.getTime(), id })));
        },
      });
      expect(cursorKey).toBeDefined();

      const seenInFetchOrder = pages.flatMap((p) =>
        direction === 'forward' ? p.edges : [...p.edges].reverse(),
      );
      const seen = seenInFetchOrder.map((e) => e.node.id);
      expect(seen.length - new Set(seen).size, 'duplicates').toBe(0);
      // Every original event exactly once.
      const seenSet = new Set(seen);
      expect(ids.filter((id) => !seenSet.has(id))).toEqual([]);

      // The rest of the walk is exactly the rows past the cursor, in order: for a forward
      // walk "past" means later in the query order, for a backward walk earlier.
      const rest = pages.slice(3);
      const restIds = idsInOrder(rest, direction);
      const inOrder = sortedIds(all, order);
      const pos = inOrder.indexOf(cursorKey!.id);
      expect(pos).toBeGreaterThanOrEqual(0);
      const expectedRest = direction === 'forward' ? inOrder.slice(pos + 1) : inOrder.slice(0, pos);
      expect(restIds).toEqual(expectedRest);
      // The first three pages plus the rest cover the new events that lie past the cursor.
      const newPast = expectedRest.filter((id) => !ids.includes(id));
      expect(newPast.length).toBeGreaterThan(0);
      expect(newPast.length).toBeLessThanOrEqual(40);
    },
  );

  // "Every given condition must hold" (AuditEventFilter): an empty string is a given value, and
  // no stored event has an empty correlationId or category (both are required, non-empty), nor
  // an empty severity. Either answer is acceptable — no events, or a ValidationError — but not
  // every event of the tenant, as if the condition had not been given.
  it.each([
    ['correlationId', { correlationId: '' }],
    ['category', { category: '' }],
    ['severity', { severity: '' }],
  ])('does not ignore an empty-string %s filter', async (_name, filter) => {
    const { body } = await t.raw(tenant, { query: PAGE, variables: { first: 5, filter } });
    // Refused (BAD_USER_INPUT), or answered as a filter that matches nothing: never ignored.
    if (body.errors) {
      expect(body.errors[0].extensions.code).toBe('BAD_USER_INPUT');
      return;
    }
    const r = body.data.auditEvents;
    expect(r.__typename).toBe('AuditEventConnection');
    expect(r.edges.map((e: { node: { id: string } }) => e.node.id)).toEqual([]);
  });

  it('defaults to 50 per page', async () => {
    const p = await page(t, tenant, {});
    expect(p.edges).toHaveLength(50);
    expect(p.pageInfo).toMatchObject({ hasNextPage: true, hasPreviousPage: false });
    const back = await page(t, tenant, { before: p.pageInfo.endCursor });
    expect(back.edges).toHaveLength(49); // the 49 events before the 50th, read backward
    expect(back.edges.map((e) => e.node.id)).toEqual(p.edges.slice(0, 49).map((e) => e.node.id));
  });

  it('accepts first: 500 and last: 500 (the maximum)', async () => {
    expect((await page(t, tenant, { first: 500 })).edges).toHaveLength(500);
    expect((await page(t, tenant, { last: 500 })).edges).toHaveLength(500);
  });

  it.each([
    ['first: 0', { first: 0 }, 'first'],
    ['first: 501', { first: 501 }, 'first'],
    ['first: -1', { first: -1 }, 'first'],
    ['last: 0', { last: 0 }, 'last'],
    ['last: 501', { last: 501 }, 'last'],
    ['first and last', { first: 10, last: 10 }, 'last'],
  ])('rejects %s with BAD_USER_INPUT', async (_name, vars, field) => {
    const e = await t.refused(tenant, PAGE, vars);
    expect(e.extensions).toMatchObject({ code: 'BAD_USER_INPUT', retryable: false });
    expect(e.extensions.issues).toEqual([expect.objectContaining({ field })]);
    expect(e.message).toContain(field);
  });
});
