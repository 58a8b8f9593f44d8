import { createPublicKey, randomUUID, verify } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PartitionManager } from '../src/db/partitions.js';
import { ChainHasher, canonicalEvent, genesisHash } from '../src/domain/chain.js';
import { checkpointStatement } from '../src/domain/checkpoint.js';
import type { AuditEventRecord } from '../src/domain/event.js';
import { parseTenantId, tenantSchema } from '../src/domain/tenant.js';
import { BatchWriter, chainedFieldsOf } from '../src/ingest/batch-writer.js';
import { create, flush, utcMonth } from './support/db.js';
import {
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { wsClient, wsSubscribe } from './support/realtime.js';

/**
 * Tamper evidence: each tenant's events form one hash chain per month, in commit order, and
 * signed checkpoints pin the chain's head. These tests play the attacker who has superuser on
 * the database: they switch the immutability triggers off (session_replication_role = replica
 * skips them, as it would for them) and rewrite, delete, re-chain. Verification must name what
 * they did.
 */

const VERIFY = `query V($from: DateTime!, $to: DateTime!) {
  verifyAuditChain(from: $from, to: $to) {
    __typename
    ... on AuditChainVerification {
      ok eventsVerified
      months { month status eventsVerified lastSeq lastHash checkpoints }
      firstBreak { kind month seq eventId expectedHash actualHash message }
    }
    
    
  }
}`;

const SIGN = `mutation { signAuditCheckpoints {
  __typename
  ... on SignedAuditCheckpoints { data { month seq hash signedAt keyId signature tenant } }
  
} }`;

const FROM = new Date(Date.now() - 2 * 365 * 86_400_000).toISOString();
const TO = new Date(Date.now() + 86_400_000).toISOString();

/** Runs statements as an attacker with superuser: triggers off for this session. */
async function asAttacker(work: (c: pg.Client) => Promise<void>): Promise<void> {
  const c = await sqlClient();
  try {
    await c.query(`set session_replication_role = replica`);
    await work(c);
  } finally {
    await c.end();
  }
}

async function verifyAll(t: TestApp, tenant: string) {
  const r = await t.gql(tenant, VERIFY, { from: FROM, to: TO });
  expect(r.verifyAuditChain.__typename).toBe('AuditChainVerification');
  return r.verifyAuditChain;
}

/** Writes `n` events of `month` for the tenant, COMMITTED, in calls of `perCall`. */
async function writeEvents(t: TestApp, tenant: string, n: number, perCall = 10, month = 0) {
  // This month: the last hour (but not before the month began); an earlier month: its start.
  const now = Date.now();
  const base =
    month === 0
      ? Math.max(utcMonth(new Date(now)).getTime(), now - 3_600_000)
      : utcMonth(new Date(now), month).getTime() + 3_600_000;
  const ids: string[] = [];
  for (let i = 0; i < n; i += perCall) {
    const batch = Array.from({ length: Math.min(perCall, n - i) }, (_, k) =>
      event({
        id: randomUUID(),
        occurredAt: new Date(base + (i + k) * 10).toISOString(),
        correlationId: `chain-${tenant}`,
        data: { n: i + k, note: 'abc', nested: { list: [1, 2.5, 'x'], ok: true } },
      }),
    );
    const r = await create(t, tenant, batch);
    expect(r.__typename).toBe('CreateAuditEventsPayload');
    ids.push(...batch.map((e) => e.id as string));
  }
  return ids;
}

describe('hash chain and signed checkpoints', () => {
  let t: TestApp;
  const tenants: string[] = [];
  const tenant = (prefix: string) => {
    const id = newTenant(prefix);
    tenants.push(id);
    return id;
  };

  beforeAll(async () => {
    // Checkpoints only on request here, so each test decides what is signed when.
    t = await startApp({ CHECKPOINT_INTERVAL_MS: '0', BATCH_SIZE: '7' });
  });
  afterAll(async () => {
    await t.stop();
    await dropTenants(...tenants);
  });

  it('chains every stored event: positions 1..n per month, each hash recomputable from the row', async () => {
    const id = tenant('chain');
    await writeEvents(t, id, 40, 9);
    await writeEvents(t, id, 12, 6, -1);
    const c = await sqlClient();
    try {
      const rows = (
        await c.query(
          `select date_trunc('month', occurred_at at time zone 'UTC') as m, count(*)::int as n,
                  min(chain_seq)::int as lo, max(chain_seq)::int as hi,
                  count(distinct chain_seq)::int as distinct_seqs
             from "t_${id}".audit_events group by 1 order by 1`,
        )
      ).rows;
      expect(rows.map((r) => [r.n, r.lo, r.hi, r.distinct_seqs])).toEqual([
        [12, 1, 12, 12],
        [40, 1, 40, 40],
      ]);
    } finally {
      await c.end();
    }
    const v = await verifyAll(t, id);
    expect(v.ok).toBe(true);
    expect(v.eventsVerified).toBe(52);
    expect(v.months.map((m: { status: string }) => m.status)).toEqual(['OK', 'OK']);
    expect(v.firstBreak).toBeNull();
  });

  it('exposes a public key that verifies every checkpoint it signs, and signs only heads that moved', async () => {
    const id = tenant('keys');
    await writeEvents(t, id, 15, 5);
    const key = (
      await t.gql(
        id,
        `{ auditChainKey { ... on AuditChainKey { algorithm keyId publicKeyPem keyed hashAlgorithm canonicalization } } }`,
      )
    ).auditChainKey;
    expect(key).toMatchObject({ algorithm: 'Ed25519', keyed: false, hashAlgorithm: 'SHA-256' });
    const first = (await t.gql(id, SIGN)).signAuditCheckpoints;
    expect(first.__typename).toBe('SignedAuditCheckpoints');
    expect(first.data).toHaveLength(1);
    const cp = first.data[0];
    expect(cp.seq).toBe(15);
    const statement = checkpointStatement({
      tenant: id,
      month: new Date(cp.month),
      seq: cp.seq,
      hash: Buffer.from(cp.hash, 'hex'),
      signedAt: new Date(cp.signedAt),
    });
    const publicKey = createPublicKey(key.publicKeyPem);
    expect(verify(null, statement, publicKey, Buffer.from(cp.signature, 'base64'))).toBe(true);
    // The same statement with another position does not verify: the signature binds it.
    const forged = checkpointStatement({
      tenant: id,
      month: new Date(cp.month),
      seq: cp.seq - 1,
      hash: Buffer.from(cp.hash, 'hex'),
      signedAt: new Date(cp.signedAt),
    });
    expect(verify(null, forged, publicKey, Buffer.from(cp.signature, 'base64'))).toBe(false);
    // Nothing moved: nothing new to sign. After more events: one new checkpoint.
    expect((await t.gql(id, SIGN)).signAuditCheckpoints.data).toHaveLength(0);
    await writeEvents(t, id, 3, 3);
    const next = (await t.gql(id, SIGN)).signAuditCheckpoints.data;
    expect(next.map((c: { seq: number }) => c.seq)).toEqual([18]);
    const listed = (await t.gql(id, `{ auditCheckpoints { seq keyId } }`)).auditCheckpoints;
    expect(listed.map((c: { seq: number }) => c.seq)).toEqual([15, 18]);
    expect(new Set(listed.map((c: { keyId: string }) => c.keyId))).toEqual(new Set([key.keyId]));
  });

  it('names exactly the event whose data had one byte changed in the database', async () => {
    const id = tenant('tamper');
    await writeEvents(t, id, 30, 10);
    await t.gql(id, SIGN);
    expect((await verifyAll(t, id)).ok).toBe(true);
    let victim = '';
    await asAttacker(async (c) => {
      // Chain order is commit order (batches of one call may commit in either order): pick by place.
      victim = (await c.query(`select id from "t_${id}".audit_events where chain_seq = 18`)).rows[0]
        .id;
      // "abc" → "abd": one byte of the event's data.
      const r = await c.query(
        `update "t_${id}".audit_events set data = jsonb_set(data, '{note}', '"abd"') where id = $1`,
        [victim],
      );
      expect(r.rowCount).toBe(1);
    });
    const v = await verifyAll(t, id);
    expect(v.ok).toBe(false);
    expect(v.firstBreak).toMatchObject({ kind: 'HASH_MISMATCH', eventId: victim, seq: 18 });
    expect(v.firstBreak.expectedHash).toMatch(/^[0-9a-f]{64}$/);
    expect(v.firstBreak.actualHash).toMatch(/^[0-9a-f]{64}$/);
    expect(v.firstBreak.expectedHash).not.toBe(v.firstBreak.actualHash);
    // Everything before the changed event was verified, nothing after it is vouched for.
    expect(v.months[0]).toMatchObject({ status: 'BROKEN', eventsVerified: 17 });
  });

  it('detects the newest 10 events deleted (and the head rewound) against the last signed checkpoint', async () => {
    const id = tenant('trunc');
    await writeEvents(t, id, 35, 7);
    await t.gql(id, SIGN);
    await asAttacker(async (c) => {
      const s = `"t_${id}"`;
      const r = await c.query(
        `delete from ${s}.audit_events where chain_seq > (select max(chain_seq) - 10 from ${s}.audit_events)`,
      );
      expect(r.rowCount).toBe(10);
      // A careful attacker also rewinds the head, so new writes would continue seamlessly.
      await c.query(
        `update ${s}.chain_heads h set seq = e.chain_seq, hash = e.hash
           from ${s}.audit_events e where e.chain_seq = 25 and h.month = date_trunc('month', e.occurred_at at time zone 'UTC') at time zone 'UTC'`,
      );
    });
    const v = await verifyAll(t, id);
    expect(v.ok).toBe(false);
    expect(v.firstBreak).toMatchObject({ kind: 'TRUNCATED', seq: 35, eventId: null });
    expect(v.firstBreak.message).toContain('10 event(s) were removed');
    // Control: without a checkpoint past the cut, the same deletion is not detectable — which
    // is why heads are signed periodically and checkpoints kept outside the database too.
    const other = tenant('trunc_ctl');
    await writeEvents(t, other, 35, 7);
    await asAttacker(async (c) => {
      await c.query(
        `delete from "t_${other}".audit_events where chain_seq > (select max(chain_seq) - 10 from "t_${other}".audit_events)`,
      );
    });
    expect((await verifyAll(t, other)).ok).toBe(true);
  });

  it('detects a rewritten event even when the attacker re-chains every hash after it', async () => {
    const id = tenant('rechain');
    await writeEvents(t, id, 20, 5);
    await t.gql(id, SIGN);
    const s = `"t_${id}"`;
    await asAttacker(async (c) => {
      await c.query(
        `update ${s}.audit_events set data = jsonb_set(data, '{note}', '"forged"') where chain_seq = 5`,
      );
      // Recompute the chain from position 5 with the public algorithm (it is not keyed here).
      const rows = (await c.query(`select * from ${s}.audit_events order by chain_seq`)).rows;
      const hasher = new ChainHasher();
      let prev = genesisHash(id, new Date(rows[0].occurred_at));
      for (const r of rows) {
        const hash = hasher.link(prev, canonicalEvent(rowFields(r)));
        await c.query(
          `update ${s}.audit_events set prev_hash = $1, hash = $2 where id = $3 and occurred_at = $4`,
          [prev, hash, r.id, r.occurred_at],
        );
        prev = hash;
      }
    });
    const v = await verifyAll(t, id);
    expect(v.ok).toBe(false);
    // Every link holds now, but the signed checkpoint at position 20 names another hash.
    expect(v.firstBreak).toMatchObject({ kind: 'CHECKPOINT_MISMATCH', seq: 20 });
  });

  it('streams a verification over graphql-ws: ready, progress, and last the result', async () => {
    const id = tenant('stream');
    await writeEvents(t, id, 25, 25);
    const client = wsClient(t.url, { tenantId: id });
    try {
      const s = wsSubscribe(
        client,
        'auditChainVerification',
        `subscription($from: DateTime!, $to: DateTime!) { auditChainVerification(from: $from, to: $to) {
          __typename
          ... on AuditChainVerificationProgress { done eventsVerified months result { ok eventsVerified } }
          
        } }`,
        { from: FROM, to: TO },
      );
      const messages = await s.until((m) => m.done === true);
      expect(messages[0]!.__typename).toBe('SubscriptionReady');
      expect(messages.at(-1)).toMatchObject({
        __typename: 'AuditChainVerificationProgress',
        done: true,
        eventsVerified: 25,
        result: { ok: true, eventsVerified: 25 },
      });
      const refused = wsSubscribe(
        client,
        'auditChainVerification',
        `subscription($from: DateTime!, $to: DateTime!) { auditChainVerification(from: $from, to: $to) {
          __typename } }`,
        { from: TO, to: FROM },
      );
      await expect(refused.next()).rejects.toMatchObject([
        { extensions: { code: 'BAD_USER_INPUT', issues: [{ field: 'to' }] } },
      ]);
      await s.close();
      await refused.close();
    } finally {
      await client.dispose();
    }
  });

  it('reports an event slipped in around the writer, and refuses a range that is backwards', async () => {
    const id = tenant('slip');
    await writeEvents(t, id, 5, 5);
    await asAttacker(async (c) => {
      const s = `"t_${id}"`;
      await c.query(
        `insert into ${s}.audit_events (id, occurred_at, received_at, event_type, category, action, outcome,
           correlation_id, actor_type, actor_id, resource_type, resource_id, batch_id)
         select gen_random_uuid(), occurred_at, received_at, event_type, category, action, outcome,
           correlation_id, actor_type, actor_id, resource_type, resource_id, batch_id
           from ${s}.audit_events limit 1`,
      );
    });
    const v = await verifyAll(t, id);
    expect(v.firstBreak).toMatchObject({ kind: 'UNCHAINED' });
    const bad = await t.refused(id, VERIFY, { from: TO, to: FROM });
    expect(bad.extensions).toMatchObject({ code: 'BAD_USER_INPUT', issues: [{ field: 'to' }] });
  });
});

/** The chain's fields of a raw `pg` row. */
function rowFields(r: Record<string, any>) {
  return {
    id: r.id,
    occurredAt: r.occurred_at,
    receivedAt: r.received_at,
    eventType: r.event_type,
    category: r.category,
    action: r.action,
    outcome: r.outcome,
    correlationId: r.correlation_id,
    actorType: r.actor_type,
    actorId: r.actor_id,
    actorIp: r.actor_ip,
    resourceType: r.resource_type,
    resourceId: r.resource_id,
    resourceName: r.resource_name,
    parentEventId: r.parent_event_id,
    severity: r.severity,
    durationMs: r.duration_ms,
    errorCode: r.error_code,
    errorMessage: r.error_message,
    namespace: r.namespace,
    clusterId: r.cluster_id,
    traceId: r.trace_id,
    spanId: r.span_id,
    data: r.data,
  };
}

describe('concurrent writers of one tenant', () => {
  const apps: TestApp[] = [];
  const tenants: string[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 3; i++) {
      apps.push(
        await startApp({
          CHECKPOINT_INTERVAL_MS: '0',
          BATCH_SIZE: '25',
          WRITER_CONCURRENCY: '4',
          INSTANCE_ID: `chain-writer-${i}`,
          // An unexpected error here once answered a write; let the server say what it was.
          LOG_LEVEL: 'error',
        }),
      );
    }
  });
  afterAll(async () => {
    for (const a of apps) await a.stop();
    await dropTenants(...tenants);
  });

  it('three instances writing at once, several batches each in flight, make one unbroken chain per month', async () => {
    const id = newTenant('conc');
    tenants.push(id);
    const now = Date.now();
    const calls: Promise<unknown>[] = [];
    let written = 0;
    for (let round = 0; round < 8; round++) {
      for (const [i, a] of apps.entries()) {
        for (let k = 0; k < 3; k++) {
          const events = Array.from({ length: 40 }, (_, j) =>
            event({
              // Two months at once: a batch may lock two heads, always in month order.
              occurredAt: new Date(
                j % 4 === 0 ? utcMonth(new Date(now), -1).getTime() + j * 1000 : now - j * 1000,
              ).toISOString(),
              correlationId: `conc-${i}-${round}-${k}`,
            }),
          );
          written += events.length;
          calls.push(create(a, id, events, k === 0 ? 'COMMITTED' : 'BUFFERED'));
        }
      }
    }
    const results = (await Promise.all(calls)) as { __typename: string }[];
    expect(results.every((r) => r.__typename === 'CreateAuditEventsPayload')).toBe(true);
    for (const a of apps) expect((await flush(a, id)).__typename).toBe('FlushAuditPayload');
    const c = await sqlClient();
    try {
      const [counts] = (
        await c.query(
          `select count(*)::int as n, count(distinct (date_trunc('month', occurred_at at time zone 'UTC'), chain_seq))::int as places,
                  count(distinct batch_id)::int as batches
             from "t_${id}".audit_events`,
        )
      ).rows;
      expect(counts.n).toBe(written);
      expect(counts.places).toBe(written);
      // Many transactions really did compete for the same heads.
      expect(counts.batches).toBeGreaterThan(20);
      const heads = (await c.query(`select seq::int from "t_${id}".chain_heads order by month`))
        .rows;
      expect(heads.map((h) => h.seq).reduce((x, y) => x + y, 0)).toBe(written);
    } finally {
      await c.end();
    }
    const v = await verifyAll(apps[0]!, id);
    expect(v.ok).toBe(true);
    expect(v.eventsVerified).toBe(written);
    expect(v.months).toHaveLength(2);
  });

  it('negative control: writers that read the head without locking it break the chain', async () => {
    const id = parseTenantId(newTenant('nolock'));
    tenants.push(id);
    const app = apps[0]!.app;
    await app.services.tenants.ensure(id, true);
    const schema = tenantSchema(id);
    const partitions = new PartitionManager(app.db, app.log);
    const writers = Array.from({ length: 4 }, (_, i) => {
      const w = new BatchWriter(app.db, partitions, app.log, `nolock-${i}`);
      // The broken variant: the same head read, but as a plain SELECT (no row lock), and a
      // moment before the insert, as a busy database would give.
      (w as unknown as { lockHeads: unknown }).lockHeads = async (
        tx: { query: (s: string, p?: unknown[]) => Promise<any[]> },
        _schema: string,
        dates: Date[],
      ) => {
        const heads = new Map<number, { seq: number; hash: Buffer | null }>();
        const month = utcMonth(dates[0]!).toISOString();
        await tx.query(
          `insert into "${schema}".chain_heads (month, seq) values ($1, 0) on conflict do nothing`,
          [month],
        );
        const [h] = await tx.query(
          `select seq, hash from "${schema}".chain_heads where month = $1`,
          [month],
        );
        await new Promise((r) => setTimeout(r, 5));
        heads.set(new Date(month).getTime(), {
          seq: Number(h.seq),
          hash: h.hash ? Buffer.from(h.hash) : null,
        });
        return heads;
      };
      return w;
    });
    const now = Date.now();
    const record = (n: number): AuditEventRecord => ({
      id: randomUUID(),
      occurredAt: new Date(now - n),
      receivedAt: new Date(now),
      eventType: 'x.y',
      category: 'c',
      action: 'a',
      outcome: 'SUCCESS',
      correlationId: 'nolock',
      actorType: 'user',
      actorId: 'u',
      actorIp: null,
      resourceType: 'r',
      resourceId: 'r1',
      resourceName: null,
      parentEventId: null,
      severity: null,
      durationMs: null,
      errorCode: null,
      errorMessage: null,
      namespace: null,
      clusterId: null,
      traceId: null,
      spanId: null,
      dataJson: JSON.stringify({ n }),
    });
    let n = 0;
    await Promise.all(
      writers.map(async (w) => {
        for (let b = 0; b < 5; b++) {
          const records = Array.from({ length: 10 }, () => record(n++));
          expect(canonicalEvent(chainedFieldsOf(records[0]!)).length).toBeGreaterThan(0);
          await w.write(schema, randomUUID(), records);
        }
      }),
    );
    const v = await app.services.chainAuditor.verify(id, new Date(FROM), new Date(TO));
    expect(v.ok).toBe(false);
    expect(['SEQUENCE_GAP', 'PREVIOUS_HASH_MISMATCH']).toContain(v.firstBreak?.kind);
  });
});
