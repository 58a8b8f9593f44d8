import { PAGE, type TestApp } from './harness.js';

/** One `auditEvents` connection as the PAGE operation of the harness returns it. */
export interface PageNode {
  id: string;
  occurredAt: string;
  correlationId: string;
  eventType: string;
}
export interface Page {
  edges: { cursor: string; node: PageNode }[];
  pageInfo: {
    hasNextPage: boolean;
    hasPreviousPage: boolean;
    startCursor: string | null;
    endCursor: string | null;
  };
}

export type Order = 'OCCURRED_AT_ASC' | 'OCCURRED_AT_DESC';
export type Direction = 'forward' | 'backward';

/** The raw `auditEvents` result (connection or typed error), for tests about errors. */
export async function auditEvents(
  t: TestApp,
  tenant: string,
  vars: Record<string, unknown>,
): Promise<Record<string, any>> {
  const data = await t.gql(tenant, PAGE, vars);
  return data.auditEvents;
}

/** One page; throws (with the typed error) when the answer is not a connection. */
export async function page(
  t: TestApp,
  tenant: string,
  vars: Record<string, unknown>,
): Promise<Page> {
  const r = await auditEvents(t, tenant, vars);
  if (r.__typename !== 'AuditEventConnection') {
    throw new Error(`expected a connection, got ${JSON.stringify(r)}`);
  }
  return r as Page;
}

export interface WalkOptions {
  size: number;
  direction: Direction;
  order: Order;
  filter?: Record<string, unknown>;
  /** Called after each page with its index (0 = the first page fetched). */
  onPage?: (index: number, p: Page) => Promise<void> | void;
  /** Safety net so a paging bug cannot loop forever. */
  maxPages?: number;
}

/**
 * Follows cursors until the far edge: forward with first/after until hasNextPage is false,
 * backward with last/before until hasPreviousPage is false. Returns the pages in the order
 * they were fetched.
 */
export async function walk(t: TestApp, tenant: string, o: WalkOptions): Promise<Page[]> {
  const pages: Page[] = [];
  let cursor: string | null = null;
  const maxPages = o.maxPages ?? 5_000;
  for (;;) {
    const vars: Record<string, unknown> =
      o.direction === 'forward'
        ? { first: o.size, after: cursor, filter: o.filter, order: o.order }
        : { last: o.size, before: cursor, filter: o.filter, order: o.order };
    const p = await page(t, tenant, vars);
    pages.push(p);
    await o.onPage?.(pages.length - 1, p);
    const more = o.direction === 'forward' ? p.pageInfo.hasNextPage : p.pageInfo.hasPreviousPage;
    if (!more) break;
    cursor = o.direction === 'forward' ? p.pageInfo.endCursor : p.pageInfo.startCursor;
    if (cursor === null) throw new Error('a page with more to come has no cursor');
    if (pages.length >= maxPages) throw new Error(`walk did not end after ${maxPages} pages`);
  }
  return pages;
}

/** The ids of a walk in the query's order (a backward walk's pages are fetched end first). */
export function idsInOrder(pages: Page[], direction: Direction): string[] {
  const ordered = direction === 'forward' ? pages : [...pages].reverse();
  return ordered.flatMap((p) => p.edges.map((e) => e.node.id));
}
