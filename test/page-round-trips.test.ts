import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  captureStatements,
  dropTenants,
  event,
  newTenant,
  PAGE,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * A page costs one database round trip in the common case: the page's rows and, after a cursor,
 * whether anything lies on the cursor's far side (hasPreviousPage forward, hasNextPage backward)
 * come from one statement; the tenant check is answered from memory once the tenant is known,
 * and the read's access record (AUDIT_READS, on) is buffered, not written on the caller's path.
 * Statements are counted where they leave the process: every query the `pg` driver sends that
 * names the tenant's schema, while the app under test runs in this process.
 */

describe('database round trips per page', () => {
  const tenant = newTenant('trips');
  let app: TestApp;
  let capture: ReturnType<typeof captureStatements> | undefined;

  beforeAll(async () => {
    // The access records' batch waits for the interval: it must not fall inside a counted read.
    app = await startApp({ FLUSH_INTERVAL_MS: '60000' });
    const events = Array.from({ length: 120 }, (_, i) =>
      event({
        id: randomUUID(),
        occurredAt: new Date(Date.now() - 60_000 - i * 1_000).toISOString(),
      }),
    );
    const r = await app.gql(tenant, CREATE, { input: { events, ack: 'COMMITTED' } });
    expect(r.createAuditEvents.stored).toBe(120);
    capture = captureStatements(`t_${tenant}`);
  });

  afterAll(async () => {
    capture?.stop();
    await app?.stop();
    await dropTenants(tenant);
  });

  /** The page, and the statements naming the tenant's schema that it sent. */
  const counted = async (variables: Record<string, unknown>) => {
    const sent = capture!.sent;
    sent.length = 0;
    const page = (await app.gql(tenant, PAGE, variables)).auditEvents;
    return { page, statements: sent.map((s) => s.text) };
  };

  it('the newest page, the next one and a page back: one statement each, the right pageInfo', async () => {
    const first = await counted({ first: 50 });
    expect(first.page.edges).toHaveLength(50);
    expect(first.page.pageInfo).toMatchObject({ hasNextPage: true, hasPreviousPage: false });
    expect(first.statements).toHaveLength(1);

    const next = await counted({ first: 50, after: first.page.pageInfo.endCursor });
    expect(next.page.edges).toHaveLength(50);
    expect(next.page.pageInfo).toMatchObject({ hasNextPage: true, hasPreviousPage: true });
    expect(next.statements).toHaveLength(1);

    const back = await counted({ last: 20, before: next.page.pageInfo.startCursor });
    expect(back.page.edges.map((e: { node: { id: string } }) => e.node.id)).toEqual(
      first.page.edges.slice(30).map((e: { node: { id: string } }) => e.node.id),
    );
    expect(back.page.pageInfo).toMatchObject({ hasNextPage: true, hasPreviousPage: true });
    expect(back.statements).toHaveLength(1);

    const last = await counted({ first: 50, after: next.page.pageInfo.endCursor });
    expect(last.page.edges).toHaveLength(20);
    expect(last.page.pageInfo).toMatchObject({ hasNextPage: false, hasPreviousPage: true });
    expect(last.statements).toHaveLength(1);
  });

  it('control: the count sees the statements of other reads too (a look-up by id)', async () => {
    const first = await counted({ first: 1 });
    const id = first.page.edges[0].node.id;
    const sent = capture!.sent;
    sent.length = 0;
    await app.gql(tenant, `query($id: String!) { auditEvent(eventId: $id) { __typename } }`, {
      id,
    });
    expect(sent.length).toBeGreaterThanOrEqual(1);
  });
});
