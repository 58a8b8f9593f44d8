import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  canonical,
  type Exit,
  introspect,
  run,
  schemaFileText,
  UNION_RESULT,
  unionShaped,
  type Written,
  writeEvents,
} from './support/clients.js';
import { dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * Relay: the dashboard fixture in test/clients/relay/ (a @refetchable fragment on Query holding
 * a @connection over auditEvents, and a @refetchable fragment on AuditEvent, which Relay can
 * only refetch through Node) compiles against schema/schema.graphql, the schema file is the one
 * the running service serves, and the queries Relay generates run against that service. The
 * negative control compiles the same fixture against the same schema with auditEvents
 * returning a union, which Relay refuses.
 */

const FIXTURE = new URL('./clients/relay/', import.meta.url).pathname;
const relayCli = createRequire(import.meta.url).resolve('relay-compiler/cli.js');
const CONNECTION_KEY = 'DashboardEvents_auditEvents';

const dirs: string[] = [];

/** Compiles the fixture against `schema` in a fresh directory under the system's temp dir. */
async function compile(schema: string): Promise<{ exit: Exit; artifacts: string }> {
  const root = mkdtempSync(join(tmpdir(), 'auditgraph-relay-'));
  dirs.push(root);
  cpSync(FIXTURE, join(root, 'src'), { recursive: true });
  writeFileSync(join(root, 'schema.graphql'), schema);
  const artifacts = join(root, '__generated__');
  mkdirSync(artifacts); // relay-compiler refuses an artifactDirectory that does not exist
  writeFileSync(
    join(root, 'relay.config.json'),
    JSON.stringify({
      src: './src',
      schema: './schema.graphql',
      artifactDirectory: './__generated__',
      language: 'typescript',
    }),
  );
  const exit = await run(process.execPath, [relayCli], { cwd: root });
  return { exit, artifacts };
}

/** The operation text of a generated query artifact (what a Relay app sends). */
function operationText(artifactFile: string): string {
  const source = readFileSync(artifactFile, 'utf8');
  const m = source.match(/"text": ("(?:[^"\\]|\\.)*")/);
  if (!m?.[1]) throw new Error(`no operation text in ${artifactFile}`);
  return JSON.parse(m[1]);
}

describe('relay-compiler: the dashboard fixture against the printed schema', () => {
  let t: TestApp;
  const tenant = newTenant('relay');
  const correlationId = 'relay-dashboard';
  let written: Written[] = [];

  beforeAll(async () => {
    t = await startApp();
    written = await writeEvents(t, tenant, 5, correlationId);
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('compiles against the schema the running service serves', async () => {
    // What Relay checks is the printed file; it must be the service's schema, not a stale copy.
    expect(canonical(schemaFileText())).toBe(canonical(await introspect(t, tenant)));
  });

  it('compiles the fixture; the artifacts exist and carry the connection', async () => {
    const { exit, artifacts } = await compile(schemaFileText());
    expect(exit.code, exit.stdout + exit.stderr).toBe(0);
    for (const name of [
      'DashboardPageQuery',
      'DashboardEvents_query',
      'DashboardEventsPaginationQuery',
      'DashboardEventRow_event',
      'DashboardEventRowRefetchQuery',
    ]) {
      expect(existsSync(join(artifacts, `${name}.graphql.ts`)), name).toBe(true);
    }
    const fragment = readFileSync(join(artifacts, 'DashboardEvents_query.graphql.ts'), 'utf8');
    expect(fragment).toContain(`"name": "__${CONNECTION_KEY}_connection"`);
    expect(fragment).toContain('"direction": "forward"');
    expect(fragment).toMatch(/\[\s*"auditEvents"\s*\]/); // the connection's path
    const pagination = readFileSync(
      join(artifacts, 'DashboardEventsPaginationQuery.graphql.ts'),
      'utf8',
    );
    expect(pagination).toContain(`"key": "${CONNECTION_KEY}"`);
    expect(pagination).toMatch(/"filters": \[\s*"filter"\s*\]/);
  });

  it('runs the generated pagination and refetch queries against the service', async () => {
    const { exit, artifacts } = await compile(schemaFileText());
    expect(exit.code, exit.stderr).toBe(0);
    const filter = { correlationId };
    const pageQuery = operationText(join(artifacts, 'DashboardEventsPaginationQuery.graphql.ts'));
    const first = await t.gql(tenant, pageQuery, { count: 3, filter });
    const newestFirst = written.map((w) => w.eventId).reverse();
    const ids = (p: any) => p.auditEvents.edges.map((e: any) => e.node.eventId);
    expect(ids(first)).toEqual(newestFirst.slice(0, 3));
    expect(first.auditEvents.pageInfo.hasNextPage).toBe(true);
    const second = await t.gql(tenant, pageQuery, {
      count: 3,
      cursor: first.auditEvents.pageInfo.endCursor,
      filter,
    });
    expect(ids(second)).toEqual(newestFirst.slice(3));
    expect(second.auditEvents.pageInfo.hasNextPage).toBe(false);

    // Refetching one row goes through Query.node with the row's global id.
    const row = first.auditEvents.edges[1].node;
    expect(row.id).not.toBe(row.eventId);
    const refetch = operationText(join(artifacts, 'DashboardEventRowRefetchQuery.graphql.ts'));
    const again = await t.gql(tenant, refetch, { id: row.id });
    expect(again.node).toMatchObject({
      __typename: 'AuditEvent',
      id: row.id,
      eventId: row.eventId,
      eventType: row.eventType,
    });
  });

  it('negative control: the same fixture against auditEvents returning a union fails', async () => {
    const { exit, artifacts } = await compile(unionShaped(schemaFileText()));
    expect(exit.code).not.toBe(0);
    expect(exit.stdout + exit.stderr).toContain(UNION_RESULT);
    expect(existsSync(join(artifacts, 'DashboardEvents_query.graphql.ts'))).toBe(false);
  });
});
