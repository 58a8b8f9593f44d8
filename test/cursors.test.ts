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
import { page } from './support/paging.js';

/**
 * Page cursors are opaque and signed over tenant, order, filter and position: an
 * altered cursor, one replayed by another tenant, or one used with another filter or order is
 * an INVALID_CURSOR error (retryable: false) that reveals nothing of whoever minted it.
 *
 * Cursor layout today: `<epoch ms>.<uuid>.<base64url HMAC>` — the first two parts are called
 * the position part, the last the signature part. Every test also uses the unaltered cursor
 * as a control, so a service that rejected everything would fail.
 */

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const HEX = '0123456789abcdef';

function split(cursor: string): { position: string; signature: string } {
  const i = cursor.lastIndexOf('.');
  return { position: cursor.slice(0, i), signature: cursor.slice(i + 1) };
}

/** The same string with the character at `i` replaced. */
function replaceAt(s: string, i: number, c: string): string {
  return s.slice(0, i) + c + s.slice(i + 1);
}

/** Another base64url character differing from `c` in the lowest bit of its 6-bit value. */
function flipB64(c: string): string {
  return B64URL[B64URL.indexOf(c) ^ 1]!;
}

describe('page cursors', () => {
  let t: TestApp;
  const alice = newTenant('cura');
  const bob = newTenant('curb');
  // Events both tenants hold with the very same (id, occurredAt): a cursor at one of them has
  // the same position part in both tenants, only the signature tells them apart.
  const shared = Array.from({ length: 6 }, (_, i) =>
    event({
      id: randomUUID(),
      occurredAt: new Date(Date.now() - 600_000 + i * 1000).toISOString(),
      correlationId: 'shared',
      eventType: 'doc.viewed',
    }),
  );
  // Alice's own events, whose ids and correlation id must never reach Bob.
  const aliceCorrelation = `alice-secret-${randomUUID()}`;
  const aliceOnly = Array.from({ length: 6 }, (_, i) =>
    event({
      id: randomUUID(),
      occurredAt: new Date(Date.now() - 300_000 + i * 1000).toISOString(),
      correlationId: aliceCorrelation,
      eventType: 'doc.viewed',
    }),
  );
  const aliceIds = aliceOnly.map((e) => e.id as string);

  async function create(tenant: string, events: Record<string, unknown>[]) {
    const r = await t.gql(tenant, CREATE, { input: { events } });
    expect(r.createAuditEvents.stored, JSON.stringify(r)).toBe(events.length);
  }

  /** Asserts the answer is an INVALID_CURSOR error and returns the raw HTTP body for more checks. */
  async function expectInvalid(tenant: string, vars: Record<string, unknown>) {
    const { status, body } = await t.raw(tenant, { query: PAGE, variables: vars });
    expect(status).toBe(200);
    expect(body.data).toBeNull();
    expect(body.errors).toEqual([
      expect.objectContaining({
        path: ['auditEvents'],
        extensions: expect.objectContaining({ code: 'INVALID_CURSOR', retryable: false }),
      }),
    ]);
    return body;
  }

  /** What the service answers `vars` as `tenant` with: the data's typename, or the error code. */
  async function typename(tenant: string, vars: Record<string, unknown>): Promise<string> {
    const { body } = await t.raw(tenant, { query: PAGE, variables: vars });
    return body.errors?.[0]?.extensions?.code ?? body.data.auditEvents.__typename;
  }

  beforeAll(async () => {
    t = await startApp();
    await create(alice, [...shared, ...aliceOnly]);
    await create(
      bob,
      shared.map((e) => ({ ...e, data: { owner: 'bob' } })),
    );
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(alice, bob);
  });

  it('accepts its own unaltered cursor and continues after it (control)', async () => {
    const p1 = await page(t, alice, { first: 3 });
    const p2 = await page(t, alice, { first: 3, after: p1.pageInfo.endCursor });
    expect(p2.edges).toHaveLength(3);
    const p12 = await page(t, alice, { first: 6 });
    expect([...p1.edges, ...p2.edges].map((e) => e.node.id)).toEqual(
      p12.edges.map((e) => e.node.id),
    );
  });

  it('accepts a cursor with an equal filter written differently (field and list order)', async () => {
    const filter = { eventTypes: ['doc.viewed', 'x.y'], outcome: 'SUCCESS' };
    const p1 = await page(t, alice, { first: 2, filter });
    const same = { outcome: 'SUCCESS', eventTypes: ['x.y', 'doc.viewed', 'x.y'] };
    const p2 = await page(t, alice, { first: 2, after: p1.pageInfo.endCursor, filter: same });
    expect(p2.edges).toHaveLength(2);
  });

  it('rejects a cursor with its first signature character changed', async () => {
    const cursor = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    const { position, signature } = split(cursor);
    await expectInvalid(alice, {
      first: 2,
      after: `${position}.${replaceAt(signature, 0, flipB64(signature[0]!))}`,
    });
  });

  it('rejects a cursor with any single signature character changed', async () => {
    const cursor = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    const { position, signature } = split(cursor);
    expect(signature.length).toBeGreaterThan(0);
    const accepted: string[] = [];
    for (let i = 0; i < signature.length; i++) {
      const altered = `${position}.${replaceAt(signature, i, flipB64(signature[i]!))}`;
      expect(altered).not.toBe(cursor);
      const name = await typename(alice, { first: 2, after: altered });
      if (name !== 'INVALID_CURSOR') accepted.push(`position ${i}: ${altered} -> ${name}`);
    }
    expect(accepted).toEqual([]);
  });

  it('rejects a cursor whose signature carries extra characters (padding, junk)', async () => {
    const cursor = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    const { position, signature } = split(cursor);
    const variants = [
      `${cursor}=`,
      `${cursor}==`,
      `${position}.${signature.slice(0, 5)}!${signature.slice(5)}`,
      `${position}.${signature.slice(0, 5)} ${signature.slice(5)}`,
      `${position}.${signature}A`,
    ];
    const accepted: string[] = [];
    for (const v of variants) {
      const name = await typename(alice, { first: 2, after: v });
      if (name !== 'INVALID_CURSOR') accepted.push(`${v} -> ${name}`);
    }
    expect(accepted).toEqual([]);
  });

  it('rejects a cursor with any single character of its position changed', async () => {
    const cursor = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    const { position, signature } = split(cursor);
    const accepted: string[] = [];
    for (let i = 0; i < position.length; i++) {
      const c = position[i]!;
      if (c === '.' || c === '-') continue;
      // Stay in the character class so the cursor keeps its shape and reaches the signature check.
      const pool = /\d/.test(c) && i < position.indexOf('.') ? '0123456789' : HEX;
      const other = pool[(pool.indexOf(c) + 1) % pool.length]!;
      const altered = `${replaceAt(position, i, other)}.${signature}`;
      const name = await typename(alice, { first: 2, after: altered });
      if (name !== 'INVALID_CURSOR') accepted.push(`position ${i}: ${altered} -> ${name}`);
    }
    expect(accepted).toEqual([]);
    // And shape-breaking changes: an upper-case id, a non-digit time.
    await expectInvalid(alice, { first: 2, after: `${position.toUpperCase()}.${signature}` });
    await expectInvalid(alice, { first: 2, after: `x${position.slice(1)}.${signature}` });
  });

  it("rejects another tenant's cursor at a position both tenants hold, revealing nothing", async () => {
    const filter = { correlationId: 'shared' };
    const mine = await page(t, alice, { first: 2, filter });
    const theirs = await page(t, bob, { first: 2, filter });
    // Same events, same positions, different tenants: only the signature differs.
    expect(theirs.edges.map((e) => e.node.id)).toEqual(mine.edges.map((e) => e.node.id));
    const aliceCursor = mine.pageInfo.endCursor!;
    const bobCursor = theirs.pageInfo.endCursor!;
    expect(split(aliceCursor).position).toBe(split(bobCursor).position);
    expect(aliceCursor).not.toBe(bobCursor);

    for (const arg of ['after', 'before'] as const) {
      const body = await expectInvalid(bob, { first: 2, [arg]: aliceCursor, filter });
      expect(JSON.stringify(body)).not.toContain(alice);
    }
    // Control: Bob's own cursor at that position works for Bob.
    expect((await page(t, bob, { first: 2, after: bobCursor, filter })).edges).toHaveLength(2);
  });

  it("rejects another tenant's cursor at a position only that tenant holds, revealing nothing", async () => {
    for (const filter of [undefined, { correlationId: aliceCorrelation }]) {
      const aliceCursor = (await page(t, alice, { first: 2, filter })).pageInfo.endCursor!;
      expect(aliceIds).toContain(split(aliceCursor).position.split('.')[1]);
      const body = await expectInvalid(bob, { first: 2, after: aliceCursor, filter });
      const text = JSON.stringify(body);
      expect(text).not.toContain(alice);
      expect(text).not.toContain(aliceCorrelation);
      expect(text).not.toContain(split(aliceCursor).position);
      for (const id of aliceIds) expect(text).not.toContain(id);
      expect(Object.keys(body.errors[0].extensions).sort()).toEqual(['code', 'retryable', 'type']);
    }
  });

  it('rejects a cursor used with another filter', async () => {
    const filter = { correlationId: 'shared' };
    const cursor = (await page(t, alice, { first: 2, filter })).pageInfo.endCursor!;
    expect((await page(t, alice, { first: 2, after: cursor, filter })).edges).toHaveLength(2);
    for (const other of [
      undefined,
      { correlationId: aliceCorrelation },
      { correlationId: 'shared', outcome: 'SUCCESS' },
      { correlationId: 'shared', eventTypes: ['doc.viewed'] },
      { correlationId: 'shared', occurredAfter: '2020-01-01T00:00:00.000Z' },
    ]) {
      await expectInvalid(alice, { first: 2, after: cursor, filter: other });
    }
    // And a cursor minted without a filter, used with one.
    const unfiltered = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    await expectInvalid(alice, { first: 2, after: unfiltered, filter });
  });

  it('rejects a cursor used with another order', async () => {
    const asc = (await page(t, alice, { first: 2, order: 'OCCURRED_AT_ASC' })).pageInfo.endCursor!;
    expect(
      (await page(t, alice, { first: 2, after: asc, order: 'OCCURRED_AT_ASC' })).edges,
    ).toHaveLength(2);
    await expectInvalid(alice, { first: 2, after: asc, order: 'OCCURRED_AT_DESC' });
    await expectInvalid(alice, { first: 2, after: asc }); // the default order is DESC
    await expectInvalid(alice, { last: 2, before: asc, order: 'OCCURRED_AT_DESC' });
    const desc = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    await expectInvalid(alice, { first: 2, after: desc, order: 'OCCURRED_AT_ASC' });
  });

  it.each([
    ['a word', 'garbage'],
    ['dots only', '...'],
    ['three empty-looking parts', 'a.b.c'],
    ['a bare uuid', randomUUID()],
    ['a time and uuid without signature', `${Date.now()}.${randomUUID()}`],
    ['an unsigned-looking cursor', `${Date.now()}.${randomUUID()}.AAAAAAAAAAAAAAAAAAAAAA`],
    ['base64 of JSON', Buffer.from('{"id":1}').toString('base64')],
    ['emoji', '🙂🙂🙂'],
    ['control characters', '\u0000\u0001\n'],
    ['a 1 MB string', 'x'.repeat(1024 * 1024)],
    ['a long string of valid-looking parts', `${Date.now()}.${randomUUID()}.${'A'.repeat(5000)}`],
  ])('rejects a garbage cursor: %s', async (_name, cursor) => {
    const body = await expectInvalid(alice, { first: 2, after: cursor });
    expect(body.errors[0].message.length).toBeLessThan(200);
    await expectInvalid(alice, { last: 2, before: cursor });
  });

  it('rejects a valid cursor made very long', async () => {
    const cursor = (await page(t, alice, { first: 2 })).pageInfo.endCursor!;
    await expectInvalid(alice, { first: 2, after: cursor + '.'.repeat(10_000) });
    await expectInvalid(alice, { first: 2, after: cursor + 'A'.repeat(10_000) });
  });
});
