import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate } from '@graphql-codegen/cli';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, schemaFileText, unionShaped, type Written, writeEvents } from './support/clients.js';
import { dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * graphql-codegen (typescript-operations) types the dashboard query of test/clients/codegen/
 * from schema/schema.graphql, and a reader that takes `data.auditEvents.edges[0].node.eventType`
 * with no `__typename` narrowing type-checks against those types with the project's TypeScript
 * and compiler options; the same query sent to the running service gives that reader what it
 * expects. The negative control generates the types from the same schema with auditEvents
 * returning a union: the same reader does not compile.
 */

const FIXTURE = new URL('./clients/codegen/', import.meta.url).pathname;
const PROJECT_TSCONFIG = new URL('../tsconfig.json', import.meta.url).pathname;

const dirs: string[] = [];

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');

/**
 * Type-checks `dir`/reader.ts with the project's TypeScript and compiler options, in a child
 * process (a type-check blocks its process for seconds; the service under test runs in this one).
 */
async function typeCheck(dir: string): Promise<{ code: number; text: string }[]> {
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      extends: PROJECT_TSCONFIG,
      // The temp directory has no node_modules to find @types/node in; the reader needs none.
      compilerOptions: { types: [], noEmit: true },
      files: ['reader.ts'],
      include: [],
    }),
  );
  const exit = await run(process.execPath, [
    tsc,
    '-p',
    join(dir, 'tsconfig.json'),
    '--pretty',
    'false',
  ]);
  const diagnostics = [...exit.stdout.matchAll(/^\S+\(\d+,\d+\): error TS(\d+): (.*)$/gm)].map(
    (m) => ({ code: Number(m[1]), text: m[2]! }),
  );
  // Exit 0 exactly when there is nothing to report; anything else unparsed is a broken run.
  if ((exit.code === 0) !== (diagnostics.length === 0)) {
    throw new Error(`tsc exited ${exit.code}: ${exit.stdout}${exit.stderr}`);
  }
  return diagnostics;
}

interface Checked {
  generated: string;
  diagnostics: { code: number; text: string }[];
}

/** Generates the query's types from `schema` into a temp dir and type-checks the reader there. */
async function generateAndCheck(schema: string, document: string): Promise<Checked> {
  const dir = mkdtempSync(join(tmpdir(), 'auditgraph-codegen-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'schema.graphql'), schema);
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
  copyFileSync(join(FIXTURE, 'reader.ts'), join(dir, 'reader.ts'));
  const generated = join(dir, 'types.ts');
  await generate(
    {
      schema: join(dir, 'schema.graphql'),
      documents: join(FIXTURE, document),
      silent: true,
      generates: {
        [generated]: {
          plugins: ['typescript-operations'],
          config: {
            scalars: { DateTime: 'string', JSONObject: 'Record<string, unknown>' },
            // Apollo and urql add __typename to every selection set they send, so the types say
            // so too. Without it, a union's other members are typed Record<PropertyKey, never>,
            // on which any property read type-checks (and fails at run time).
            nonOptionalTypename: true,
          },
        },
      },
    },
    true,
  );
  return { generated: readFileSync(generated, 'utf8'), diagnostics: await typeCheck(dir) };
}

describe('graphql-codegen typescript-operations: the dashboard query', () => {
  let t: TestApp;
  const tenant = newTenant('codegen');
  const correlationId = 'codegen-dashboard';
  let written: Written[] = [];

  beforeAll(async () => {
    t = await startApp();
    written = await writeEvents(t, tenant, 3, correlationId);
  });
  afterAll(async () => {
    await t?.stop();
    await dropTenants(tenant);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('types it so that edges[0].node.eventType needs no __typename narrowing', async () => {
    const { generated, diagnostics } = await generateAndCheck(
      schemaFileText(),
      'dashboard.graphql',
    );
    expect(generated).toMatch(
      /export type DashboardQuery = \{ __typename: 'Query', auditEvents: \{ __typename: 'AuditEventConnection', edges: Array</,
    );
    expect(diagnostics).toEqual([]);
  });

  it('the query, sent to the service, gives the reader the newest event', async () => {
    const query = readFileSync(join(FIXTURE, 'dashboard.graphql'), 'utf8');
    const data = await t.gql(tenant, query, { first: 2, filter: { correlationId } });
    const reader = join(FIXTURE, 'reader.ts');
    const { firstEventType } = await import(/* @vite-ignore */ reader);
    expect(firstEventType(data)).toBe(`dashboard.event.${written.length - 1}`);
    expect(data.auditEvents.edges).toHaveLength(2);
  });

  it('negative control: the same reader against types from a union-returning schema fails', async () => {
    const { generated, diagnostics } = await generateAndCheck(
      unionShaped(schemaFileText()),
      'dashboard-union.graphql',
    );
    expect(generated).toContain('export type DashboardQuery =');
    // TS2339: property `edges` does not exist on the union's other member.
    expect(diagnostics.map((d) => d.code)).toContain(2339);
    expect(diagnostics.find((d) => d.code === 2339)?.text).toContain("'edges'");
  });
});
