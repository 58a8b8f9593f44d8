import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childServices } from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  sqlClient,
  storedCounts,
} from './support/harness.js';

/**
 * No journal, no BUFFERED: the local journal file cannot grow (the process's file-size limit
 * stands in for a full disk — a write past it comes up short, then fails). BUFFERED calls are
 * then refused whole with JournalUnavailableError, COMMITTED calls are still stored, /readyz
 * says which levels are available — and every call answered BUFFERED before that, the one whose
 * write came up short included, is stored once after a kill -9 and a restart.
 */

const REFUSED = `mutation Create($input: CreateAuditEventsInput!) {
  createAuditEvents(input: $input) {
    __typename
    ... on AuditError { message retryable }
    ... on JournalUnavailableError { reason retryAfterMs }
  }
}`;

describe('the journal file cannot grow', () => {
  const tenant = newTenant('diskfull');
  /** COMMITTED calls go to another tenant: one of this tenant's would write its buffer too. */
  const other = newTenant('diskfull');
  const services = childServices();
  const dlqDir = services.tempDir('auditgraph-diskfull-');
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await sqlClient();
  });

  afterAll(async () => {
    await services.cleanup();
    await admin?.end();
    await dropTenants(tenant, other);
  });

  const env = {
    DLQ_DIR: dlqDir,
    FLUSH_INTERVAL_MS: '30000',
    BATCH_SIZE: '5000',
    RATE_LIMIT_EVENTS_PER_SECOND: '0',
  };

  it('refuses BUFFERED whole, keeps COMMITTED, and loses nothing it acknowledged', async () => {
    const svc = await services.spawn(env, { fileSizeLimitKiB: 256 });
    const client = graphqlClient(`${svc.base}/graphql`);
    const acknowledged: string[] = [];
    let refusal: Record<string, any> | undefined;
    let refusedIds: string[] = [];
    for (let k = 0; k < 200 && !refusal; k++) {
      const events = Array.from({ length: 50 }, () => event({ id: randomUUID() }));
      const r = (await client.gql(tenant, REFUSED, { input: { events, ack: 'BUFFERED' } }))
        .createAuditEvents;
      if (r.__typename === 'CreateAuditEventsPayload') {
        acknowledged.push(...events.map((e) => e.id as string));
      } else {
        refusal = r;
        refusedIds = events.map((e) => e.id as string);
      }
    }
    console.info(
      `[journal-disk-full] ${acknowledged.length} events acknowledged before the refusal: ${refusal?.reason}`,
    );
    expect(refusal).toMatchObject({ __typename: 'JournalUnavailableError', retryable: true });
    expect(refusal!.reason).toMatch(/journal/);
    expect(acknowledged.length).toBeGreaterThan(0);

    const ready = (await (await fetch(`${svc.base}/readyz`)).json()) as Record<string, any>;
    expect(ready.acks).toEqual({ COMMITTED: true, BUFFERED: false });
    const committed = [event({ id: randomUUID() }), event({ id: randomUUID() })];
    const c = (await client.gql(other, CREATE, { input: { events: committed, ack: 'COMMITTED' } }))
      .createAuditEvents;
    expect(c).toMatchObject({ __typename: 'CreateAuditEventsPayload', stored: 2 });

    await svc.kill();
    // What the kill left: every acknowledged call, only in the journal.
    const { rows: before } = await admin.query<{ n: number }>(
      `select count(*)::int as n from "t_${tenant}".audit_events`,
    );
    expect(before[0]!.n).toBe(0);
    const again = await services.spawn(env);
    const flushed = await graphqlClient(`${again.base}/graphql`).gql(tenant, FLUSH, {
      timeoutMs: 20_000,
    });
    expect(flushed.flushAudit.__typename).toBe('FlushAuditPayload');
    const counts = await storedCounts(admin, tenant, [...acknowledged, ...refusedIds]);
    expect(acknowledged.filter((id) => counts.get(id) !== 1)).toEqual([]);
    // The refused call was not accepted: none of its events was kept anywhere.
    expect(refusedIds.filter((id) => counts.has(id))).toEqual([]);
  });
});
