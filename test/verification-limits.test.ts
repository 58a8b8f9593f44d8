import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import { waitUntil } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  PAGE,
  sqlClient,
  type TestApp,
} from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';
import { wsClient, wsSubscribe } from './support/realtime.js';

/**
 * Work a read-only key can make the service do: chain verifications re-read whole months, so a
 * tenant runs at most MAX_VERIFICATIONS_PER_TENANT at once (more are refused, not queued), and a
 * run stops when its caller goes away. And an export signs no checkpoint when nothing but the
 * service's own read records moved the chain since the last one.
 */

/** Events in the verified tenant's chain: enough that one verification takes a while. */
const EVENTS = 30_000;
const ALIASES = 30; // MAX_ALIASES' default

const V = newTenant('vlim');
const OTHER = newTenant('vlimo');
const E = newTenant('vexp');
let t: TestApp;
let sql: pg.Client;
let reader: TestKey;
let otherReader: TestKey;
/** Milliseconds one full verification of V took, undisturbed. */
let fullRunMs = 0;

const FROM = new Date(Date.now() - 40 * 86_400_000).toISOString();
const TO = new Date(Date.now() + 86_400_000).toISOString();

const aliased = (n: number) =>
  `query($from: DateTime!, $to: DateTime!) { ${Array.from(
    { length: n },
    (_, i) => `v${i}: verifyAuditChain(from: $from, to: $to) {
      __typename
      ... on AuditChainVerification { ok eventsVerified elapsedMs }
    }`,
  ).join('\n')} }`;

/** Completed verifications of a tenant on the app: its chain_verifications_total, every result. */
const completed = {
  async get(tenant: string): Promise<number> {
    const metric = t.app.metrics.registry.getSingleMetric('auditgraph_chain_verifications_total');
    const values = (await metric!.get()).values;
    return values.filter((v) => v.labels.tenant === tenant).reduce((n, v) => n + v.value, 0);
  },
};

beforeAll(async () => {
  t = await startKeysApp({ AUDIT_READS: 'true', CHECKPOINT_INTERVAL_MS: '0' });
  sql = await sqlClient();
  const writer = await createKey(t, V, ['events:write'], { label: 'writer' });
  reader = await createKey(t, V, ['events:read'], { label: 'reader' });
  otherReader = await createKey(t, OTHER, ['events:read'], { label: 'other' });
  const w = keyClient(t, writer.secret);
  const at = Date.now() - 3_600_000;
  for (let i = 0; i < EVENTS; i += 1_000) {
    const events = Array.from({ length: 1_000 }, (_, k) =>
      event({ occurredAt: new Date(at + i + k).toISOString(), correlationId: 'vlim' }),
    );
    const r = await w.gql(CREATE, { input: { events } });
    expect(r.createAuditEvents.stored).toBe(1_000);
  }
  const one = await keyClient(t, reader.secret).gql(aliased(1), { from: FROM, to: TO });
  expect(one.v0).toMatchObject({ __typename: 'AuditChainVerification', ok: true });
  fullRunMs = one.v0.elapsedMs;
  // Shorter than this, "stops well before a run would end" could not be told apart from luck.
  expect(fullRunMs).toBeGreaterThan(300);
  console.info(`one verification of ${EVENTS} events: ${fullRunMs} ms`);
}, 180_000);

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(V, OTHER, E);
});

describe('verifyAuditChain', () => {
  it(`runs one of ${ALIASES} aliased verifications and refuses the rest with LIMIT_EXCEEDED`, async () => {
    const before = await completed.get(V);
    const { body } = await keyClient(t, reader.secret).raw({
      query: aliased(ALIASES),
      variables: { from: FROM, to: TO },
    });
    // One alias ran; each refused one is null, with its error.
    const ran = Object.values(body.data).filter((v) => v !== null);
    expect(ran).toEqual([expect.objectContaining({ __typename: 'AuditChainVerification' })]);
    const refused = body.errors as { message: string; extensions: Record<string, unknown> }[];
    expect(refused).toHaveLength(ALIASES - 1);
    expect(refused[0]).toMatchObject({
      message: expect.stringContaining('at most 1 (MAX_VERIFICATIONS_PER_TENANT)'),
      extensions: { code: 'LIMIT_EXCEEDED', limit: 'MAX_VERIFICATIONS_PER_TENANT', max: 1 },
    });
    expect((await completed.get(V)) - before).toBe(1);
    expect(t.app.services.chainAuditor.running(V as TenantId)).toBe(0);
  });

  it(`stops verifying when 3 requests of ${ALIASES} aliases are abandoned after 0.5 s, and serves others`, async () => {
    const before = await completed.get(V);
    const auditor = t.app.services.chainAuditor;
    const aborts = Array.from({ length: 3 }, () => new AbortController());
    const sent = aborts.map((a) =>
      fetch(t.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...bearer(reader.secret) },
        body: JSON.stringify({ query: aliased(ALIASES), variables: { from: FROM, to: TO } }),
        signal: a.signal,
      }).then(
        async (res) => ({ answered: true, text: await res.text() }),
        () => ({ answered: false, text: '' }),
      ),
    );
    // The verification has started on the server before the callers leave (after 0.5 s, or
    // sooner on a machine fast enough to finish a run by then: they must leave while it runs).
    await waitUntil(
      'a verification to run',
      async () => auditor.running(V as TenantId),
      (n) => n > 0,
    );
    await new Promise((r) => setTimeout(r, Math.min(500, fullRunMs / 3)));
    for (const a of aborts) a.abort();
    const abandonedAt = Date.now();
    const results = await Promise.all(sent);
    // Nothing was answered to them: each request was still verifying when it was abandoned.
    expect(results.filter((r) => r.answered && r.text.includes('AuditChainVerification"'))).toEqual(
      [],
    );

    // Well before one full run would end, the server has stopped verifying for them.
    const bound = Math.min(2_000, Math.max(300, fullRunMs / 2));
    await waitUntil(
      'the abandoned verifications to stop',
      async () => auditor.running(),
      (n) => n === 0,
      bound,
    );
    const stoppedMs = Date.now() - abandonedAt;
    console.info(`abandoned verifications stopped ${stoppedMs} ms after the callers left`);
    // None of them ran to the end, and nothing was left queued to run later.
    expect((await completed.get(V)) - before).toBe(0);

    // The tenant's slot is free again, and another tenant is served promptly.
    const started = Date.now();
    const page = await keyClient(t, otherReader.secret).gql(PAGE, { first: 5 });
    expect(page.auditEvents.__typename).toBe('AuditEventConnection');
    expect(Date.now() - started).toBeLessThan(1_000);
    const again = await keyClient(t, reader.secret).gql(aliased(1), { from: FROM, to: TO });
    expect(again.v0.__typename).toBe('AuditChainVerification');
  });
});

describe('verifyAuditChain as a query over graphql-ws', () => {
  it('stops when the client completes the operation, and when the connection closes', async () => {
    const before = await completed.get(V);
    const auditor = t.app.services.chainAuditor;
    const bound = Math.min(2_000, Math.max(300, fullRunMs / 2));
    for (const leave of ['complete', 'close'] as const) {
      const client = wsClient(t.url, { authorization: `Bearer ${reader.secret}` });
      try {
        let answered = false;
        const stop = client.subscribe(
          { query: aliased(1), variables: { from: FROM, to: TO } },
          { next: () => (answered = true), error: () => {}, complete: () => {} },
        );
        await waitUntil(
          'a verification to run',
          async () => auditor.running(V as TenantId),
          (n) => n > 0,
        );
        const left = Date.now();
        if (leave === 'complete') stop();
        else await client.dispose();
        await waitUntil(
          `the verification to stop after the client's ${leave}`,
          async () => auditor.running(V as TenantId),
          (n) => n === 0,
          bound,
        );
        console.info(`a ${leave}d query's verification stopped in ${Date.now() - left} ms`);
        expect(answered).toBe(false);
      } finally {
        await client.dispose();
      }
    }
    expect((await completed.get(V)) - before).toBe(0);
  });
});

describe('auditChainVerification (graphql-ws)', () => {
  const SUB = `subscription($from: DateTime!, $to: DateTime!) {
    auditChainVerification(from: $from, to: $to) {
      __typename
      ... on AuditChainVerificationProgress { done eventsVerified }
      
    }
  }`;

  it('refuses a second run of the tenant, and stops the first when it is completed', async () => {
    const before = await completed.get(V);
    const auditor = t.app.services.chainAuditor;
    const client = wsClient(t.url, { authorization: `Bearer ${reader.secret}` });
    try {
      const first = wsSubscribe(client, 'auditChainVerification', SUB, { from: FROM, to: TO });
      expect((await first.next()).__typename).toBe('SubscriptionReady');
      expect(auditor.running(V as TenantId)).toBe(1);

      const second = wsSubscribe(client, 'auditChainVerification', SUB, { from: FROM, to: TO });
      await expect(second.next()).rejects.toMatchObject([
        { extensions: { code: 'LIMIT_EXCEEDED', limit: 'MAX_VERIFICATIONS_PER_TENANT', max: 1 } },
      ]);
      await second.close();

      const left = Date.now();
      await first.close();
      await waitUntil(
        'the completed verification to stop',
        async () => auditor.running(V as TenantId),
        (n) => n === 0,
        Math.min(2_000, Math.max(300, fullRunMs / 2)),
      );
      console.info(`a completed subscription's verification stopped in ${Date.now() - left} ms`);
      expect((await completed.get(V)) - before).toBe(0);
    } finally {
      await client.dispose();
    }
  });
});

describe('GET /export', () => {
  let exporter: TestKey;
  let writer: TestKey;

  beforeAll(async () => {
    exporter = await createKey(t, E, ['events:read', 'events:write'], { label: 'exporter' });
    writer = await createKey(t, E, ['events:write'], { label: 'writer' });
    const r = await keyClient(t, writer.secret).gql(CREATE, {
      input: { events: Array.from({ length: 5 }, () => event({ correlationId: 'vexp' })) },
    });
    expect(r.createAuditEvents.stored).toBe(5);
  });

  const checkpoints = async () =>
    (
      await sql.query(`select month, seq from "t_${E}".chain_checkpoints order by month, seq`)
    ).rows.map((r) => `${new Date(r.month).toISOString()}#${r.seq}`);

  /** One export as the exporter key; then its read record is stored (flushAudit). */
  async function exportOnce(): Promise<void> {
    const res = await fetch(t.url.replace('/graphql', '/export'), {
      headers: bearer(exporter.secret),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('"trailer"');
    const f = await keyClient(t, exporter.secret).gql(FLUSH, { timeoutMs: 10_000 });
    expect(f.flushAudit.__typename).toBe('FlushAuditPayload');
  }

  it('signs no checkpoint on a second export when nothing but its read records changed', async () => {
    await exportOnce();
    const after1 = await checkpoints();
    expect(after1.length).toBeGreaterThan(0);
    // The first export's read record is in the chain now.
    const reads = async () =>
      (
        await sql.query(
          `select count(*)::int as n from "t_${E}".audit_events where event_type = 'auditgraph.access.read'`,
        )
      ).rows[0].n as number;
    expect(await reads()).toBe(1);

    await exportOnce();
    expect(await checkpoints()).toEqual(after1);
    await exportOnce();
    expect(await checkpoints()).toEqual(after1);
    // Each read is still recorded (AUDIT_READS), and nothing else was written.
    expect(await reads()).toBe(3);
    const { rows } = await sql.query(
      `select count(*)::int as n from "t_${E}".audit_events where event_type <> 'auditgraph.access.read'`,
    );
    expect(rows[0].n).toBe(5);

    // A real write moves the chain: the next export signs it (and vouches for it).
    const w = await keyClient(t, writer.secret).gql(CREATE, {
      input: { events: [event({ correlationId: 'vexp' })] },
    });
    expect(w.createAuditEvents.stored).toBe(1);
    await exportOnce();
    const after = await checkpoints();
    expect(after.length).toBe(after1.length + 1);
  });
});
