import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  databaseUrl,
  dropTenants,
  event,
  newTenant,
  PAGE,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/** No CURSOR_SECRET: the key must come from the control schema. */
const NO_SECRET = { CURSOR_SECRET: '' };

describe('page cursors without CURSOR_SECRET', () => {
  const tenant = newTenant('curkey');
  const running: TestApp[] = [];
  const start = async (env: Record<string, string> = NO_SECRET) => {
    const app = await startApp(env);
    running.push(app);
    return app;
  };

  afterAll(async () => {
    await Promise.all(running.map((a) => a.stop()));
    await dropTenants(tenant);
  });

  it('work on every instance and after both restart: page 1 from A, 2 from B, 3 from A again', async () => {
    let a = await start();
    let b = await start();
    const base = Date.now() - 60_000;
    const events = Array.from({ length: 30 }, (_, i) =>
      event({ correlationId: 'curkey', occurredAt: new Date(base + i * 1000).toISOString() }),
    );
    const created = await a.gql(tenant, CREATE, { input: { events } });
    expect(created.createAuditEvents.stored).toBe(30);
    const filter = { correlationId: 'curkey' };
    const page = async (app: TestApp, after?: string) => {
      const r = await app.raw(tenant, {
        query: PAGE,
        variables: { first: 10, after, filter, order: 'OCCURRED_AT_ASC' },
      });
      expect(r.body.errors).toBeUndefined();
      expect(r.body.data.auditEvents.__typename).toBe('AuditEventConnection');
      return r.body.data.auditEvents;
    };
    const p1 = await page(a);
    const p2 = await page(b, p1.pageInfo.endCursor);
    await Promise.all([a.stop(), b.stop()]);
    a = await start();
    b = await start();
    const p3 = await page(a, p2.pageInfo.endCursor);
    const ids = [...p1.edges, ...p2.edges, ...p3.edges].map((e: any) => e.node.id);
    expect(ids).toEqual(created.createAuditEvents.events.map((e: any) => e.id));
    expect(p3.pageInfo.hasNextPage).toBe(false);

    // One key for the deployment, created once.
    const c = await sqlClient();
    try {
      const { rows } = await c.query(
        `select count(*)::int as n from auditgraph.service_secrets where name = 'cursor'`,
      );
      expect(rows[0].n).toBe(1);
    } finally {
      await c.end();
    }

    // An instance with another key would refuse every other instance's cursors: it refuses to
    // start instead, saying which setting differs.
    const another = { CURSOR_SECRET: 'another-secret-another-secret-0123456789' };
    await expect(start(another)).rejects.toThrow(
      expect.objectContaining({ name: 'Refusal', message: expect.stringMatching(/CURSOR_SECRET/) }),
    );
    // Adopted on purpose (the operator's command), it starts; and then it refuses the cursors
    // made with the deployment's own key (the negative control of the sharing above).
    const adopt = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'src/cli/deployment.ts', 'adopt-cursor-key'],
      {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        env: { PATH: process.env.PATH, DATABASE_URL: databaseUrl(), ...another },
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(adopt.stderr).toBe('');
    expect(adopt.status).toBe(0);
    const other = await start(another);
    const r = await other.raw(tenant, {
      query: PAGE,
      variables: { first: 10, after: p2.pageInfo.endCursor, filter, order: 'OCCURRED_AT_ASC' },
    });
    expect(r.body.errors?.[0]?.extensions?.code).toBe('INVALID_CURSOR');
  });
});
