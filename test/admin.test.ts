import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import {
  CREATE,
  databaseUrl,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  PAGE,
  STATS,
  sqlClient,
  type TestApp,
} from './support/harness.js';
import { createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';

/**
 * Tenant administration with a platform key, the CLI that
 * does the same for operators, and access auditing: key creation and revocation, provisioning,
 * dead-letter replay and discard, and reads are recorded in the affected tenant's own log with
 * the key's label as the actor — accepted and counted like any other event, never lost.
 */

let t: TestApp;
let sql: pg.Client;
let admin: TestKey;
const created: string[] = [];

beforeAll(async () => {
  t = await startKeysApp();
  sql = await sqlClient();
  admin = await createKey(t, null, ['tenants:admin'], { label: 'ops-admin' });
});

afterAll(async () => {
  await t?.stop();
  await sql?.end();
  await dropTenants(...created);
});

function tenant(prefix: string): string {
  const id = newTenant(prefix);
  created.push(id);
  return id;
}

const PROVISION = `mutation($id: String!) { provisionTenant(input: { tenantId: $id }) {
  __typename
  ... on ProvisionTenantPayload { created tenant { id: tenantId schemaName eventCount eventCountExact partitions { count from until } } }
  ... on AuditError { message }
  ... on ValidationError { issues { field message } }
} }`;

const CREATE_KEY = `mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
  __typename
  ... on CreateApiKeyPayload { key apiKey { id: keyId tenantId scopes label prefix createdAt expiresAt revokedAt } }
  ... on AuditError { message }
  ... on ValidationError { issues { field message } }
} }`;

const REVOKE_KEY = `mutation($id: ID!) { revokeApiKey(input: { id: $id }) {
  __typename ... on ApiKey { id: keyId revokedAt } ... on AuditError { message }
} }`;

const API_KEYS = `query($tenantId: String) { apiKeys(tenantId: $tenantId) {
  __typename ... on ApiKeyList { keys { id: keyId tenantId scopes label prefix lastUsedAt revokedAt } } 
} }`;

const TENANTS = `query($first: Int, $after: String) { tenants(first: $first, after: $after) {
  __typename
  ... on TenantConnection { edges { cursor node { id: tenantId eventCount eventCountExact partitions { count from until } } } pageInfo { hasNextPage endCursor } }
  
} }`;

/** The access records in a tenant's table, oldest first. */
async function accessRecords(id: string): Promise<Record<string, any>[]> {
  const { rows } = await sql.query(
    `select event_type, action, actor_type, actor_id, resource_type, resource_id, data
     from "t_${id}".audit_events where category = 'access' order by received_at, id`,
  );
  return rows;
}

/** Flushes the tenant (access records are written BUFFERED) with a key of its own. */
async function flush(secret: string): Promise<void> {
  const r = await keyClient(t, secret).gql(FLUSH, { timeoutMs: 10_000 });
  expect(r.flushAudit.__typename).toBe('FlushAuditPayload');
}

describe('tenant administration with a platform key', () => {
  it('provisions a tenant (idempotent) and records it in the tenant’s own log', async () => {
    const id = tenant('adm');
    const c = keyClient(t, admin.secret);
    const first = await c.gql(PROVISION, { id });
    expect(first.provisionTenant).toMatchObject({
      __typename: 'ProvisionTenantPayload',
      created: true,
      tenant: { id, schemaName: `t_${id}`, eventCount: 0, eventCountExact: true },
    });
    expect(first.provisionTenant.tenant.partitions.count).toBeGreaterThanOrEqual(1);
    const again = await c.gql(PROVISION, { id });
    expect(again.provisionTenant.created).toBe(false);

    const k = await createKey(t, id, ['events:write']);
    await flush(k.secret);
    const records = await accessRecords(id);
    expect(records.filter((r) => r.event_type === 'auditgraph.tenant.provisioned')).toEqual([
      expect.objectContaining({ actor_type: 'api_key', actor_id: 'ops-admin', resource_id: id }),
      expect.objectContaining({ actor_type: 'api_key', actor_id: 'ops-admin', resource_id: id }),
    ]);
  });

  it.each(['public', 'pg_x', 'auditgraph', 'a;drop schema x', 'A', ''])(
    'refuses to provision %j before any SQL is built',
    async (id) => {
      const r = await keyClient(t, admin.secret).gql(PROVISION, { id });
      expect(r.provisionTenant.__typename).toBe('ValidationError');
      const { rows } = await sql.query('select 1 from auditgraph.tenants where tenant_id = $1', [
        id,
      ]);
      expect(rows).toEqual([]);
    },
  );

  it('creates a key shown once, that works for its tenant only, and lists keys without them', async () => {
    const id = tenant('keys');
    const c = keyClient(t, admin.secret);
    await c.gql(PROVISION, { id });
    const r = await c.gql(CREATE_KEY, {
      input: { tenantId: id, scopes: ['EVENTS_WRITE', 'EVENTS_READ'], label: 'ci' },
    });
    const payload = r.createApiKey;
    expect(payload.__typename).toBe('CreateApiKeyPayload');
    expect(payload.key).toMatch(/^agk_/);
    expect(payload.apiKey).toMatchObject({
      tenantId: id,
      scopes: ['EVENTS_WRITE', 'EVENTS_READ'],
      label: 'ci',
      prefix: payload.key.slice(0, 12),
      revokedAt: null,
    });
    const w = await keyClient(t, payload.key).gql(CREATE, { input: { events: [event()] } });
    expect(w.createAuditEvents.stored).toBe(1);

    const listed = await c.gql(API_KEYS, { tenantId: id });
    expect(listed.apiKeys.keys).toEqual([expect.objectContaining({ id: payload.apiKey.id })]);
    expect(JSON.stringify(listed)).not.toContain(payload.key.slice(12));

    await flush(payload.key);
    const created = (await accessRecords(id)).filter(
      (x) => x.event_type === 'auditgraph.apikey.created',
    );
    expect(created).toEqual([
      expect.objectContaining({
        actor_id: 'ops-admin',
        resource_type: 'api_key',
        resource_id: payload.apiKey.id,
      }),
    ]);
    expect(JSON.stringify(created)).not.toContain(payload.key.slice(12));
  });

  it('refuses keys that break the rules, and keys for unknown tenants', async () => {
    const c = keyClient(t, admin.secret);
    const id = tenant('rules');
    await c.gql(PROVISION, { id });
    const cases: [Record<string, unknown>, string][] = [
      [{ tenantId: id, scopes: ['TENANTS_ADMIN'], label: 'x' }, 'ValidationError'],
      [{ scopes: ['EVENTS_READ'], label: 'x' }, 'ValidationError'],
      [{ tenantId: id, scopes: [], label: 'x' }, 'ValidationError'],
      [{ tenantId: id, scopes: ['EVENTS_READ'], label: '' }, 'ValidationError'],
      [
        { tenantId: id, scopes: ['EVENTS_READ'], label: 'x', expiresAt: '2020-01-01T00:00:00Z' },
        'ValidationError',
      ],
      [{ tenantId: 'pg_catalog', scopes: ['EVENTS_READ'], label: 'x' }, 'ValidationError'],
    ];
    for (const [input, expected] of cases) {
      const r = await c.gql(CREATE_KEY, { input });
      expect(r.createApiKey.__typename, JSON.stringify(input)).toBe(expected);
    }
    const ghost = newTenant('ghost');
    const unknown = await c.refused(CREATE_KEY, {
      input: { tenantId: ghost, scopes: ['EVENTS_READ'], label: 'x' },
    });
    expect(unknown.extensions).toMatchObject({ code: 'UNKNOWN_TENANT', tenantId: ghost });
    const platform = await c.gql(CREATE_KEY, {
      input: { scopes: ['TENANTS_ADMIN'], label: 'rotated-admin' },
    });
    expect(platform.createApiKey.apiKey).toMatchObject({
      tenantId: null,
      scopes: ['TENANTS_ADMIN'],
    });
  });

  it('revokes a key: refused on its next request, recorded in its tenant’s log', async () => {
    const id = tenant('rev');
    const c = keyClient(t, admin.secret);
    await c.gql(PROVISION, { id });
    const k = await createKey(t, id, ['events:write', 'events:read'], { label: 'doomed' });
    expect((await keyClient(t, k.secret).gql(STATS)).auditStats.__typename).toBe('AuditStats');
    const r = await c.gql(REVOKE_KEY, { id: k.id });
    expect(r.revokeApiKey).toMatchObject({ __typename: 'ApiKey', id: k.id });
    expect(r.revokeApiKey.revokedAt).not.toBeNull();
    const after = await keyClient(t, k.secret).raw(
      { query: STATS },
      { accept: 'application/graphql-response+json' },
    );
    expect(after.status).toBe(401);
    expect(after.body.errors[0].extensions.code).toBe('UNAUTHENTICATED');
    const unknown = await c.gql(REVOKE_KEY, { id: randomUUID() });
    expect(unknown.revokeApiKey.__typename).toBe('ValidationError');

    const other = await createKey(t, id, ['events:write']);
    await flush(other.secret);
    expect(
      (await accessRecords(id)).filter((x) => x.event_type === 'auditgraph.apikey.revoked'),
    ).toEqual([expect.objectContaining({ actor_id: 'ops-admin', resource_id: k.id })]);
  });

  it('pages through tenants with event counts and partition ranges', async () => {
    const ids = [tenant('page'), tenant('page'), tenant('page')].sort();
    const c = keyClient(t, admin.secret);
    for (const id of ids) await c.gql(PROVISION, { id });
    const k = await createKey(t, ids[1]!, ['events:write']);
    await keyClient(t, k.secret).gql(CREATE, { input: { events: [event(), event(), event()] } });

    const seen: Record<string, any>[] = [];
    let after: string | null = null;
    for (let i = 0; i < 1000; i++) {
      const r: Record<string, any> = await c.gql(TENANTS, { first: 2, after });
      expect(r.tenants.__typename).toBe('TenantConnection');
      seen.push(...r.tenants.edges.map((e: any) => e.node));
      if (!r.tenants.pageInfo.hasNextPage) break;
      after = r.tenants.pageInfo.endCursor;
    }
    const mine = seen.filter((n) => ids.includes(n.id));
    expect(mine.map((n) => n.id)).toEqual(ids);
    // Three events and the provisioning's access record (written at once? BUFFERED: flush first).
    const withEvents = mine[1]!;
    expect(withEvents.eventCount).toBeGreaterThanOrEqual(3);
    expect(withEvents.eventCountExact).toBe(true);
    expect(withEvents.partitions.count).toBeGreaterThanOrEqual(1);
    expect(new Date(withEvents.partitions.from).getTime()).toBeLessThan(Date.now());
    expect(new Date(withEvents.partitions.until).getTime()).toBeGreaterThan(Date.now());
    const bad = await c.refused(TENANTS, { first: 2, after: 'not-a-cursor' });
    expect(bad.extensions.code).toBe('BAD_USER_INPUT');
  });

  it('is usable only on administration fields, and tenant keys never on them', async () => {
    const id = tenant('split');
    const k = await createKey(t, id, ['events:write', 'events:read', 'deadletters:admin']);
    const platform = keyClient(t, admin.secret);
    for (const [field, query, vars] of [
      ['createAuditEvents', CREATE, { input: { events: [event()] } }],
      ['auditEvents', PAGE, {}],
      ['auditStats', STATS, {}],
      ['flushAudit', FLUSH, {}],
    ] as const) {
      const r = await platform.refused(query, vars);
      expect(r, field).toMatchObject({ path: [field], extensions: { code: 'FORBIDDEN' } });
    }
    const tenantKey = keyClient(t, k.secret);
    expect((await tenantKey.refused(TENANTS, {})).extensions.code).toBe('FORBIDDEN');
    expect((await tenantKey.refused(API_KEYS, { tenantId: id })).extensions.code).toBe('FORBIDDEN');
    expect((await tenantKey.refused(PROVISION, { id: newTenant('no') })).extensions.code).toBe(
      'FORBIDDEN',
    );
  });
});

describe('access is audited', () => {
  it('records reads in the tenant’s log and counts them as accepted events', async () => {
    const id = tenant('reads');
    const k = await createKey(t, id, ['events:write', 'events:read'], { label: 'reader-bot' });
    const c = keyClient(t, k.secret);
    await c.gql(CREATE, { input: { events: [event({ correlationId: 'r' })] } });
    await c.gql(PAGE, { first: 5, filter: { correlationId: 'r' } });
    const one = await c.gql(`query($id: String!) { auditEvent(eventId: $id) { __typename } }`, {
      id: randomUUID(),
    });
    expect(one.auditEvent).toBeNull();
    await flush(k.secret);
    const reads = (await accessRecords(id)).filter(
      (x) => x.event_type === 'auditgraph.access.read',
    );
    expect(reads.map((r) => r.resource_id)).toEqual(['auditEvents', 'auditEvent']);
    expect(reads[0]).toMatchObject({
      actor_type: 'api_key',
      actor_id: 'reader-bot',
      action: 'read',
    });
    expect(reads[0]!.data).toMatchObject({ keyId: k.id, filter: { correlationId: 'r' } });

    const s = (await c.gql(STATS)).auditStats;
    expect(s.pending).toBe(0);
    expect(s.accepted).toBe(s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded);
    const { rows } = await sql.query(`select count(*)::int as n from "t_${id}".audit_events`);
    // The stats read itself is recorded after the count was taken: it is pending or stored now.
    expect(rows[0].n).toBeGreaterThanOrEqual(s.stored);
  });

  it('records replaying and discarding a dead letter', async () => {
    const id = tenant('dlq');
    const k = await createKey(t, id, ['events:write', 'deadletters:admin'], { label: 'dlq-ops' });
    const store = t.app.services.deadLetters;
    const parked = (n: number) => ({
      id: randomUUID(),
      tenant: id as TenantId,
      state: 'PARKED' as const,
      records: [],
      errorCode: '22P02',
      error: `test dead letter ${n}`,
      attempts: 5,
      replays: 3,
      firstFailedAt: new Date(),
      lastFailedAt: new Date(),
      nextAttemptAt: null,
    });
    const a = parked(1);
    const b = parked(2);
    await store.add(a);
    await store.add(b);
    const c = keyClient(t, k.secret);
    const replay = await c.gql(
      `mutation($ids: [ID!]) { replayDeadLetters(input: { ids: $ids }) { __typename ... on ReplayDeadLettersPayload { replayed { id: deadLetterId } } } }`,
      { ids: [a.id] },
    );
    expect(replay.replayDeadLetters.replayed).toEqual([{ id: a.id }]);
    const discard = await c.gql(
      `mutation($id: ID!) { discardDeadLetter(input: { id: $id, reason: "test" }) { __typename } }`,
      { id: b.id },
    );
    expect(discard.discardDeadLetter.__typename).toBe('DeadLetter');
    await flush(k.secret);
    const records = await accessRecords(id);
    expect(records.map((r) => [r.event_type, r.resource_id, r.actor_id])).toEqual(
      expect.arrayContaining([
        ['auditgraph.deadletter.replayed', a.id, 'dlq-ops'],
        ['auditgraph.deadletter.discarded', b.id, 'dlq-ops'],
      ]),
    );
  });
});

describe('the operator CLI', () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const tsx = fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url));
  const run = async (script: string, args: string[]) => {
    try {
      const { stdout } = await promisify(execFile)(tsx, [`src/cli/${script}.ts`, ...args], {
        cwd: root,
        env: { ...process.env, DATABASE_URL: databaseUrl(), AUTH_MODE: 'keys', LOG_LEVEL: 'error' },
      });
      return { code: 0, stdout };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  it('bootstraps an admin key, provisions a tenant, creates, lists and revokes a tenant key', async () => {
    const id = tenant('cli');
    const boot = await run('keys', ['create', '--admin', '--label', 'bootstrap', '--json']);
    expect(boot.code).toBe(0);
    const adminKey = JSON.parse(boot.stdout);
    expect(adminKey.apiKey).toMatchObject({ tenantId: null, scopes: ['tenants:admin'] });
    // The bootstrap key works on the running service at once.
    const listed = await keyClient(t, adminKey.key).gql(API_KEYS, {});
    expect(listed.apiKeys.keys.map((k: any) => k.id)).toContain(adminKey.apiKey.id);

    expect((await run('tenants', ['provision', id])).code).toBe(0);
    const made = await run('keys', [
      'create',
      '--tenant',
      id,
      '--scopes',
      'events:write,events:read',
      '--label',
      'ci',
      '--json',
    ]);
    expect(made.code).toBe(0);
    const ci = JSON.parse(made.stdout);
    const w = await keyClient(t, ci.key).gql(CREATE, { input: { events: [event()] } });
    expect(w.createAuditEvents.stored).toBe(1);

    const list = await run('keys', ['list', '--tenant', id, '--json']);
    expect(JSON.parse(list.stdout)).toEqual([
      expect.objectContaining({ id: ci.apiKey.id, label: 'ci' }),
    ]);
    expect(list.stdout).not.toContain(ci.key.slice(12));
    const tenants = await run('tenants', ['list', '--json']);
    expect(JSON.parse(tenants.stdout)).toEqual(
      expect.arrayContaining([expect.objectContaining({ tenantId: id })]),
    );

    expect((await run('keys', ['revoke', ci.apiKey.id])).code).toBe(0);
    // Another process revoked it: this instance sees it once its cached look-up expires.
    let status = 0;
    for (let i = 0; i < 100 && status !== 401; i++) {
      status = (
        await keyClient(t, ci.key).raw(
          { query: STATS },
          { accept: 'application/graphql-response+json' },
        )
      ).status;
      if (status !== 401) await new Promise((r) => setTimeout(r, 100));
    }
    expect(status).toBe(401);

    const records = await accessRecords(id);
    expect(records.map((r) => [r.event_type, r.actor_type])).toEqual(
      expect.arrayContaining([
        ['auditgraph.tenant.provisioned', 'operator'],
        ['auditgraph.apikey.created', 'operator'],
        ['auditgraph.apikey.revoked', 'operator'],
      ]),
    );
    const bad = await run('keys', [
      'create',
      '--tenant',
      id,
      '--scopes',
      'tenants:admin',
      '--label',
      'x',
    ]);
    expect(bad.code).toBe(2);
    expect((await run('tenants', ['provision', 'pg_evil'])).code).toBe(2);
  }, 120_000);
});
