import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { countEvents } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  STATS,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp } from './support/keys.js';

/**
 * GET /metrics: Prometheus text that a scraper can parse, whose per-tenant counters are the same
 * numbers as auditStats and count(*), with the accounting identity, batch histograms and the
 * dead-letter queue's gauges.
 */

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Exposition {
  types: Map<string, string>;
  samples: Sample[];
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})?\\s+(\\S+)(?:\\s+-?\\d+)?$`);
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/gy;

/** A small parser of the Prometheus text format (0.0.4); throws on any line it cannot read. */
function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) types.set(type[1]!, type[2]!);
      else if (!/^# HELP \S+ /.test(line)) throw new Error(`bad comment line: ${line}`);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? '';
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const l = LABEL.exec(body);
      if (!l) throw new Error(`bad labels: ${line}`);
      labels[l[1]!] = l[2]!.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    const raw = m[3]!;
    const value =
      raw === '+Inf' ? Number.POSITIVE_INFINITY : raw === '-Inf' ? -Infinity : Number(raw);
    // prom-client writes NaN as "Nan" (e.g. an event-loop lag not yet sampled); Prometheus
    // parses it case-insensitively, as Go's ParseFloat does.
    if (Number.isNaN(value) && raw.toLowerCase() !== 'nan') throw new Error(`bad value: ${line}`);
    samples.push({ name: m[1]!, labels, value });
  }
  // Every sample belongs to a declared family (histograms add _bucket, _sum, _count).
  for (const s of samples) {
    const family = s.name.replace(/_(bucket|sum|count)$/, '');
    if (!types.has(s.name) && !types.has(family)) throw new Error(`no TYPE for ${s.name}`);
  }
  return { types, samples };
}

/** The one sample named `name` whose labels include `labels`; throws when absent or ambiguous. */
function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = e.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length !== 1) {
    throw new Error(`${found.length} samples for ${name} ${JSON.stringify(labels)}`);
  }
  return found[0]!.value;
}

/** Sum over every sample named `name` (e.g. a histogram's _count across its label values). */
function total(e: Exposition, name: string): number {
  return e.samples.filter((s) => s.name === name).reduce((n, s) => n + s.value, 0);
}

async function scrape(t: TestApp): Promise<{ contentType: string | null; e: Exposition }> {
  const res = await fetch(new URL('/metrics', t.url));
  expect(res.status).toBe(200);
  return { contentType: res.headers.get('content-type'), e: parseExposition(await res.text()) };
}

describe('GET /metrics', () => {
  let t: TestApp;
  let c: pg.Client;
  const tenants: string[] = [];
  const tenant = () => {
    const id = newTenant('metrics');
    tenants.push(id);
    return id;
  };

  beforeAll(async () => {
    // BUFFERED events stay pending until flushAudit: the scrape before it sees them pending.
    t = await startApp({ FLUSH_INTERVAL_MS: '60000' });
    c = await sqlClient();
  });
  afterAll(async () => {
    await t?.stop();
    await c?.end();
    await dropTenants(...tenants);
  });

  it('reports the tenant’s counters exactly as auditStats and count(*) do', async () => {
    const id = tenant();
    const committed = await t.gql(id, CREATE, {
      input: { events: [event(), event(), event()], ack: 'COMMITTED' },
    });
    expect(committed.createAuditEvents.stored).toBe(3);
    const buffered = await t.gql(id, CREATE, {
      input: {
        events: Array.from({ length: 4 }, () => event({ id: randomUUID() })),
        ack: 'BUFFERED',
      },
    });
    expect(buffered.createAuditEvents.buffered).toBe(4);

    const before = await scrape(t);
    expect(before.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(value(before.e, 'auditgraph_events_accepted_total', { tenant: id })).toBe(7);
    expect(value(before.e, 'auditgraph_events_stored_total', { tenant: id })).toBe(3);
    expect(value(before.e, 'auditgraph_events_pending', { tenant: id })).toBe(4);
    expect(value(before.e, 'auditgraph_buffer_events')).toBeGreaterThanOrEqual(4);
    expect(value(before.e, 'auditgraph_buffer_bytes')).toBeGreaterThan(0);
    expect(value(before.e, 'auditgraph_accounting_identity_holds', { tenant: id })).toBe(1);

    const f = await t.gql(id, FLUSH, { timeoutMs: 10_000 });
    expect(f.flushAudit).toMatchObject({ __typename: 'FlushAuditPayload', stored: 4 });

    const { e } = await scrape(t);
    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({ accepted: 7, stored: 7, pending: 0, identityHolds: true });
    const series = {
      accepted: value(e, 'auditgraph_events_accepted_total', { tenant: id }),
      stored: value(e, 'auditgraph_events_stored_total', { tenant: id }),
      duplicates: value(e, 'auditgraph_events_duplicate_total', { tenant: id }),
      pending: value(e, 'auditgraph_events_pending', { tenant: id }),
      deadLettered: value(e, 'auditgraph_events_dead_lettered', { tenant: id }),
      discarded: value(e, 'auditgraph_events_discarded_total', { tenant: id }),
    };
    expect(series).toEqual({
      accepted: s.accepted,
      stored: s.stored,
      duplicates: s.duplicates,
      pending: s.pending,
      deadLettered: s.deadLettered,
      discarded: s.discarded,
    });
    expect(series.stored).toBe(await countEvents(c, id));
    // The identity from the scraped series themselves, not only the gauge.
    expect(series.accepted).toBe(
      series.stored + series.duplicates + series.pending + series.deadLettered + series.discarded,
    );
    expect(value(e, 'auditgraph_accounting_identity_holds', { tenant: id })).toBe(1);

    expect(e.types.get('auditgraph_events_accepted_total')).toBe('counter');
    expect(e.types.get('auditgraph_events_pending')).toBe('gauge');
    expect(e.types.get('auditgraph_batch_size_events')).toBe('histogram');
    expect(total(e, 'auditgraph_batch_size_events_count')).toBeGreaterThanOrEqual(2);
    expect(total(e, 'auditgraph_batch_size_events_sum')).toBeGreaterThanOrEqual(7);
    expect(total(e, 'auditgraph_batch_write_seconds_count')).toBeGreaterThanOrEqual(2);
    expect(
      value(e, 'auditgraph_commit_wait_seconds_count', { outcome: 'settled' }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      value(e, 'auditgraph_batch_size_events_bucket', { trigger: 'flush', le: '+Inf' }),
    ).toBeGreaterThanOrEqual(1);
    expect(value(e, 'auditgraph_instance_info', { instance_id: t.app.services.instanceId })).toBe(
      1,
    );
    // Node.js process metrics come from the app's own registry too.
    expect(e.types.has('process_cpu_user_seconds_total')).toBe(true);
  });

  it('shows a dead-lettered row in the tenant’s series and the queue’s gauges', async () => {
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } }); // provisions the schema
    await c.query(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const r = await t.gql(id, CREATE, {
      input: { events: [event({ eventType: 'ok' }), event({ eventType: 'poison' })] },
    });
    expect(r.createAuditEvents.events.map((x: { status: string }) => x.status)).toEqual([
      'STORED',
      'DEAD_LETTERED',
    ]);
    // The depth gauges are the retry worker's last observation: take one now.
    await t.app.graph.retryWorker.runOnce();

    const { e } = await scrape(t);
    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({ accepted: 3, stored: 2, deadLettered: 1, identityHolds: true });
    expect(value(e, 'auditgraph_events_dead_lettered', { tenant: id })).toBe(1);
    expect(value(e, 'auditgraph_events_stored_total', { tenant: id })).toBe(2);
    expect(value(e, 'auditgraph_accounting_identity_holds', { tenant: id })).toBe(1);
    expect(value(e, 'auditgraph_dead_letter_queue_up')).toBe(1);
    expect(value(e, 'auditgraph_dead_letter_entries')).toBeGreaterThanOrEqual(1);
    expect(value(e, 'auditgraph_dead_letter_events')).toBeGreaterThanOrEqual(1);
    expect(value(e, 'auditgraph_dead_letter_parked_events')).toBe(0);
    expect(value(e, 'auditgraph_dead_letter_oldest_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(
      value(e, 'auditgraph_dead_letter_steps_total', { kind: 'ENQUEUED' }),
    ).toBeGreaterThanOrEqual(1);
    expect(value(e, 'auditgraph_dead_letter_steps_total', { kind: 'PARKED' })).toBe(0);
  });

  it('counts checkpoints signed, verifications by result and maintenance runs', async () => {
    const id = tenant();
    const r = await t.gql(id, CREATE, { input: { events: [event(), event(), event()] } });
    expect(r.createAuditEvents.stored).toBe(3);
    await t.gql(id, 'mutation { signAuditCheckpoints { __typename } }');
    const range = {
      from: new Date(Date.now() - 86_400_000 * 40).toISOString(),
      to: new Date(Date.now() + 60_000).toISOString(),
    };
    const verify = `query($from: DateTime!, $to: DateTime!) { verifyAuditChain(from: $from, to: $to) {
      ... on AuditChainVerification { ok } } }`;
    expect((await t.gql(id, verify, range)).verifyAuditChain.ok).toBe(true);
    await t.gql(id, 'mutation { runMaintenance { __typename } }');
    let { e } = await scrape(t);
    expect(value(e, 'auditgraph_chain_checkpoints_signed_total', { tenant: id })).toBe(1);
    expect(value(e, 'auditgraph_chain_verifications_total', { tenant: id, result: 'ok' })).toBe(1);
    expect(value(e, 'auditgraph_chain_events_verified_total', { tenant: id })).toBe(3);
    expect(value(e, 'auditgraph_maintenance_runs_total', { leader: 'true' })).toBeGreaterThan(0);
    expect(value(e, 'auditgraph_retention_months_held', { tenant: id })).toBe(0);
    expect(e.types.get('auditgraph_retention_months_dropped_total')).toBe('counter');
    // A broken chain is counted as such.
    await c.query(`set session_replication_role = replica`);
    await c.query(`update "t_${id}".audit_events set data = '{"x":1}' where chain_seq = 2`);
    await c.query(`set session_replication_role = origin`);
    expect((await t.gql(id, verify, range)).verifyAuditChain.ok).toBe(false);
    ({ e } = await scrape(t));
    expect(value(e, 'auditgraph_chain_verifications_total', { tenant: id, result: 'broken' })).toBe(
      1,
    );
  });

  it('keeps each app’s metrics in its own registry', async () => {
    const other = await startApp();
    try {
      const id = tenant();
      await other.gql(id, CREATE, { input: { events: [event()] } });
      const mine = await scrape(t);
      const theirs = await scrape(other);
      expect(value(theirs.e, 'auditgraph_events_accepted_total', { tenant: id })).toBe(1);
      expect(
        mine.e.samples.some((x) => x.labels.tenant === id),
        'a tenant of another app shows up in this app’s metrics',
      ).toBe(false);
      expect(other.app.metrics.registry).not.toBe(t.app.metrics.registry);
    } finally {
      await other.stop();
    }
  });
});

describe('who may read /metrics (it names every tenant and its volume)', () => {
  const apps: TestApp[] = [];
  const tenants: string[] = [];
  const TOKEN = 'metrics-token-metrics-token-0123456789';

  afterAll(async () => {
    await Promise.all(apps.map((a) => a.stop()));
    await dropTenants(...tenants);
  });

  /** A keys-mode app with one tenant that wrote one event, so /metrics would name it. */
  async function keysApp(env: Record<string, string>) {
    const a = await startKeysApp(env);
    apps.push(a);
    const id = newTenant('mx');
    tenants.push(id);
    const k = await createKey(a, id, ['events:write']);
    await keyClient(a, k.secret).gql(CREATE, { input: { events: [event()] } });
    return { a, id };
  }

  const get = async (url: string, headers: Record<string, string> = {}) => {
    const res = await fetch(url, { headers });
    return {
      status: res.status,
      auth: res.headers.get('www-authenticate'),
      text: await res.text(),
    };
  };

  it('is refused to anyone with AUTH_MODE=keys when neither METRICS_TOKEN nor METRICS_PORT is set', async () => {
    const { a, id } = await keysApp({});
    const r = await get(new URL('/metrics', a.url).href);
    expect(r.status).toBe(401);
    expect(r.auth).toBe('Bearer');
    expect(r.text).toMatch(/METRICS_TOKEN/);
    expect(r.text).not.toContain(id);
    // An API key is not a metrics credential, however many scopes it has.
    const admin = await createKey(a, null, ['tenants:admin']);
    expect((await get(new URL('/metrics', a.url).href, bearer(admin.secret))).status).toBe(401);
  });

  it('needs METRICS_TOKEN as a bearer token when it is set', async () => {
    const { a, id } = await keysApp({ METRICS_TOKEN: TOKEN });
    const url = new URL('/metrics', a.url).href;
    for (const headers of [
      {},
      bearer(`${TOKEN}x`),
      bearer(TOKEN.slice(1)),
      { authorization: TOKEN },
    ]) {
      const r = await get(url, headers);
      expect(r.status).toBe(401);
      expect(r.text).not.toContain(id);
    }
    const ok = await get(url, bearer(TOKEN));
    expect(ok.status).toBe(200);
    expect(ok.text).toContain(`auditgraph_events_accepted_total{tenant="${id}"} 1`);
  });

  it('is served only on METRICS_PORT (loopback) when that is set', async () => {
    const { a, id } = await keysApp({ METRICS_PORT: '0' });
    expect((await get(new URL('/metrics', a.url).href)).status).toBe(404);
    const port = a.app.metricsPort;
    expect(port).toBeGreaterThan(0);
    expect(port).not.toBe(Number(new URL(a.url).port));
    const r = await get(`http://127.0.0.1:${port}/metrics`);
    expect(r.status).toBe(200);
    expect(r.text).toContain(`auditgraph_events_accepted_total{tenant="${id}"} 1`);
    // Nothing else is served there.
    expect((await get(`http://127.0.0.1:${port}/graphql`)).status).toBe(404);
  });

  it('rejects a METRICS_TOKEN shorter than 32 characters and METRICS_PORT equal to PORT', () => {
    expect(() => loadConfig({ METRICS_TOKEN: 'short' })).toThrow(/METRICS_TOKEN/);
    expect(() => loadConfig({ PORT: '4000', METRICS_PORT: '4000' })).toThrow(/METRICS_PORT/);
  });
});
