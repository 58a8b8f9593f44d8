import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, type ServiceProcess, spawnService } from './support/faults.js';
import {
  CREATE,
  databaseUrl,
  dropTenants,
  event,
  graphqlClient,
  newTenant,
  PAGE,
} from './support/harness.js';

/**
 * `npm start` runs compiled JavaScript: `npm run build` (its `prestart`) compiles src/ into
 * dist/, and `node dist/main.js` serves — migrations, the GraphQL schema and a write and a read
 * included — without a TypeScript loader in the process.
 */

const ROOT = new URL('..', import.meta.url).pathname;

describe('the compiled service (npm start)', () => {
  const tenant = newTenant('compiled');
  let svc: ServiceProcess | undefined;

  afterAll(async () => {
    await svc?.kill();
    await dropTenants(tenant);
  });

  it('builds, starts from dist/, and writes and reads', async () => {
    await promisify(execFile)('npm', ['run', 'build'], { cwd: ROOT, timeout: 120_000 });
    svc = await spawnService({}, { compiled: true });
    await svc.ready();
    const client = graphqlClient(`${svc.base}/graphql`);
    const id = randomUUID();
    const r = await client.gql(tenant, CREATE, { input: { events: [event({ id })] } });
    expect(r.createAuditEvents).toMatchObject({
      __typename: 'CreateAuditEventsPayload',
      stored: 1,
    });
    const page = (await client.gql(tenant, PAGE, { first: 5 })).auditEvents;
    expect(page.edges.map((e: { node: { id: string } }) => e.node.id)).toContain(id);
    // No TypeScript loader: the process was started on dist/main.js alone.
    expect(svc.child.spawnargs.join(' ')).toMatch(/dist\/main\.js$/);
    expect(svc.child.spawnargs.join(' ')).not.toMatch(/tsx/);
  }, 150_000);

  it('refuses, in one line and with exit status 1, a database it cannot use: missing, or not answering', async () => {
    const missing = new URL(databaseUrl());
    missing.pathname = `/no_such_database_${randomUUID().slice(0, 8).replace(/-/g, '')}`;
    missing.password = 'not-shown';
    const refused = new URL(`postgres://root@127.0.0.1:${await freePort()}/auditgraph`);
    for (const [url, why] of [
      [missing, /does not exist: create it first \(createdb\)$/],
      [refused, /ECONNREFUSED .*: is PostgreSQL running, and reachable from here\?$/],
    ] as const) {
      const run = await promisify(execFile)(process.execPath, ['dist/main.js'], {
        cwd: ROOT,
        env: { PATH: process.env.PATH, DATABASE_URL: url.toString(), AUTH_MODE: 'dev', PORT: '0' },
        timeout: 60_000,
      }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code: number; stderr: string }) => err,
      );
      expect(run.code, url.toString()).toBe(1);
      const lines = run.stderr.trim().split('\n');
      expect(lines, run.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(why);
      expect(lines[0]).not.toContain('not-shown');
    }
  }, 120_000);
});
