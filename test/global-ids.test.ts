import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CREATE, dropTenants, event, newTenant, type TestApp } from './support/harness.js';
import { createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';

/**
 * Global object identification: every Node has an opaque `id` unique across types (Relay keys
 * its store by it alone), `node(id:)` / `nodes(ids:)` find it again within the caller's tenant
 * and scopes, and the objects' own ids stay readable under their own names.
 */

let t: TestApp;
const A = newTenant('gida');
const B = newTenant('gidb');
let writerA: TestKey;
let readerA: TestKey;
let readerB: TestKey;
let admin: TestKey;
const written: { eventId: string; occurredAt: string }[] = [];

const PAGE = `query { auditEvents(first: 10, order: OCCURRED_AT_ASC) {
  edges { node { id eventId occurredAt eventType } } } }`;
const NODE = `query($id: ID!) { node(id: $id) { __typename id ... on AuditEvent { eventId occurredAt } } }`;
const NODES = `query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }`;

beforeAll(async () => {
  t = await startKeysApp();
  writerA = await createKey(t, A, ['events:write']);
  readerA = await createKey(t, A, ['events:read']);
  readerB = await createKey(t, B, ['events:read']);
  admin = await createKey(t, null, ['tenants:admin']);
  const base = Date.now() - 60_000;
  const events = Array.from({ length: 3 }, (_, i) =>
    event({ id: randomUUID(), occurredAt: new Date(base + i * 1_000).toISOString() }),
  );
  const r = await keyClient(t, writerA.secret).gql(CREATE, { input: { events } });
  expect(r.createAuditEvents.stored).toBe(3);
  for (const e of events) {
    written.push({ eventId: e.id as string, occurredAt: e.occurredAt as string });
  }
}, 120_000);

afterAll(async () => {
  await t?.stop();
  await dropTenants(A, B);
});

describe('events', () => {
  it('carry an opaque global id beside their own UUID, and node(id:) finds them again', async () => {
    const reader = keyClient(t, readerA.secret);
    const edges = (await reader.gql(PAGE)).auditEvents.edges as {
      node: { id: string; eventId: string; occurredAt: string };
    }[];
    expect(edges.map((e) => e.node.eventId)).toEqual(written.map((w) => w.eventId));
    const ids = edges.map((e) => e.node.id);
    expect(new Set(ids).size).toBe(3);
    for (const e of edges) {
      expect(e.node.id).not.toBe(e.node.eventId);
      expect(e.node.id).not.toContain(e.node.eventId); // opaque, not the UUID with a prefix
      const found = (await reader.gql(NODE, { id: e.node.id })).node;
      expect(found).toEqual({
        __typename: 'AuditEvent',
        id: e.node.id,
        eventId: e.node.eventId,
        occurredAt: e.node.occurredAt,
      });
    }
    const many = (await reader.gql(NODES, { ids: [ids[2], ids[0]] })).nodes;
    expect(many.map((n: { id: string }) => n.id)).toEqual([ids[2], ids[0]]);
  });

  it('are never found through another tenant, nor without events:read', async () => {
    const id = (await keyClient(t, readerA.secret).gql(PAGE)).auditEvents.edges[0].node.id;
    // B's reader: the id names A's event, but look-ups happen in B's tenant only.
    expect((await keyClient(t, readerB.secret).gql(NODE, { id })).node).toBeNull();
    const refused = await keyClient(t, writerA.secret).refused(NODE, { id });
    expect(refused).toMatchObject({ path: ['node'], extensions: { code: 'FORBIDDEN' } });
    expect(refused.message).toMatch(/events:read/);
  });

  it('answers a malformed id as BAD_USER_INPUT and an unknown one as null', async () => {
    const reader = keyClient(t, readerA.secret);
    const bad = await reader.refused(NODE, { id: 'not a global id' });
    expect(bad.extensions).toMatchObject({ code: 'BAD_USER_INPUT', retryable: false });
    const unknown = Buffer.from(
      `AuditEvent:${randomUUID()}@${new Date().toISOString()}`,
      'utf8',
    ).toString('base64');
    expect((await reader.gql(NODE, { id: unknown })).node).toBeNull();
  });
});

describe('API keys and tenants', () => {
  const KEYS = `query($t: String) { apiKeys(tenantId: $t) { keys { id keyId label } } }`;
  const TENANTS = `query { tenants(first: 100) { edges { node { id tenantId } } } }`;

  it('have global ids unique across types, found again by node(id:)', async () => {
    const c = keyClient(t, admin.secret);
    const keys = (await c.gql(KEYS, { t: A })).apiKeys.keys as {
      id: string;
      keyId: string;
    }[];
    expect(keys.map((k) => k.keyId).sort()).toEqual([writerA.id, readerA.id].sort());
    const tenants = (await c.gql(TENANTS)).tenants.edges.map(
      (e: { node: { id: string; tenantId: string } }) => e.node,
    );
    const tenantA = tenants.find((n: { tenantId: string }) => n.tenantId === A);
    expect(tenantA).toBeDefined();
    const all = [...keys.map((k) => k.id), tenantA.id];
    expect(new Set(all).size).toBe(all.length);
    const nodes = (await c.gql(NODES, { ids: all })).nodes as { __typename: string; id: string }[];
    expect(nodes.map((n) => n.__typename)).toEqual(['ApiKey', 'ApiKey', 'Tenant']);
    expect(nodes.map((n) => n.id)).toEqual(all);
  });

  it('take the global id or the own id where a mutation names one', async () => {
    const c = keyClient(t, admin.secret);
    const REVOKE = `mutation($id: ID!) { revokeApiKey(input: { id: $id }) {
      __typename ... on ApiKey { keyId revokedAt } ... on ValidationError { issues { field message } } } }`;
    const doomed = await createKey(t, A, ['events:read'], { label: 'doomed' });
    const doomed2 = await createKey(t, A, ['events:read'], { label: 'doomed2' });
    const keys = (await c.gql(KEYS, { t: A })).apiKeys.keys as { id: string; keyId: string }[];
    const global = keys.find((k) => k.keyId === doomed.id)!.id;
    const byGlobal = (await c.gql(REVOKE, { id: global })).revokeApiKey;
    expect(byGlobal).toMatchObject({ __typename: 'ApiKey', keyId: doomed.id });
    expect(byGlobal.revokedAt).not.toBeNull();
    const byOwn = (await c.gql(REVOKE, { id: doomed2.id })).revokeApiKey;
    expect(byOwn).toMatchObject({ __typename: 'ApiKey', keyId: doomed2.id });
    // Negative control: the global id of another type is refused, naming the field.
    const tenantId = (await c.gql(TENANTS)).tenants.edges.find(
      (e: { node: { tenantId: string } }) => e.node.tenantId === A,
    ).node.id;
    const wrong = (await c.gql(REVOKE, { id: tenantId })).revokeApiKey;
    expect(wrong.__typename).toBe('ValidationError');
    expect(wrong.issues[0]).toMatchObject({ field: 'input.id' });
    expect(wrong.issues[0].message).toMatch(/Tenant/);
  });
});
