import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, validate } from 'graphql';
import { describe, expect, it } from 'vitest';
import { buildSchema } from '../src/graphql/schema.js';
import { exampleOperations } from '../src/graphql/yoga.js';

/**
 * The printed SDL is committed at schema/schema.graphql and this test fails when it drifts from
 * the code; the GraphQL names are the contract.
 *
 * Under vitest the code under test and its dependencies load two different copies of `graphql`
 * (vite resolves `graphql` to its ESM build for src/, Node resolves it to the CJS build for
 * @pothos/core and graphql-yoga), and graphql's realm check then refuses to print or inspect a
 * schema built by the other copy. So `printedSchema()` is run the way `npm run schema:print`
 * runs it — in Node, through tsx — and the structure is read with plain property access
 * (no `isObjectType`/`getNamedType` from either copy).
 */

const root = fileURLToPath(new URL('..', import.meta.url));
const committed = readFileSync(new URL('../schema/schema.graphql', import.meta.url), 'utf8');

/** `printedSchema()` from src/graphql/print-schema.ts, evaluated by Node (tsx) in the repo. */
function printedSchemaFromNode(): string {
  return execFileSync(
    fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url)),
    [
      '-e',
      "import('./src/graphql/print-schema.ts').then((m) => process.stdout.write(m.printedSchema()))",
    ],
    { cwd: root, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
  );
}

/** The parts of graphql-js's type objects this test reads. */
interface TypeRef {
  name?: string;
  ofType?: TypeRef;
  toString(): string;
}
interface Field {
  name: string;
  type: TypeRef;
  args: { name: string }[];
  defaultValue?: unknown;
}
interface NamedType {
  name: string;
  constructor: { name: string };
  getFields?: () => Record<string, Field>;
  getInterfaces?: () => NamedType[];
  getTypes?: () => NamedType[];
}

const schema = buildSchema();
const types = Object.values(schema.getTypeMap() as unknown as Record<string, NamedType>).filter(
  (t) => !t.name.startsWith('__'),
);
const kind = (t: NamedType) => t.constructor.name;
const typeNamed = (name: string) => schema.getType(name) as unknown as NamedType | undefined;
const fieldsOf = (name: string) => typeNamed(name)?.getFields?.() ?? {};

function namedTypeOf(ref: TypeRef): string {
  let r = ref;
  while (r.ofType) r = r.ofType;
  return r.name!;
}

function field(typeName: 'Query' | 'Mutation', name: string): Field {
  const f = fieldsOf(typeName)[name];
  if (!f) throw new Error(`${typeName}.${name} is missing`);
  return f;
}

/** Names of the members of the union a root field returns. */
function resultMembers(typeName: 'Query' | 'Mutation', name: string): string[] {
  const t = typeNamed(namedTypeOf(field(typeName, name).type))!;
  expect(kind(t), `${typeName}.${name} returns a union of payload and errors`).toBe(
    'GraphQLUnionType',
  );
  return t.getTypes!()
    .map((m) => m.name)
    .sort();
}

const implementsAuditError = (t: NamedType) =>
  (t.getInterfaces?.() ?? []).some((i) => i.name === 'AuditError');

describe('schema/schema.graphql', () => {
  it('equals the SDL printed from the code (run `npm run schema:print` when this fails)', () => {
    expect(printedSchemaFromNode()).toBe(committed);
  });

  it('has the contract root fields', () => {
    for (const name of ['auditEvents', 'auditEvent', 'auditStats']) field('Query', name);
    for (const name of ['createAuditEvents', 'flushAudit']) field('Mutation', name);
    const args = (f: Field) => f.args.map((a) => a.name).sort();
    expect(args(field('Query', 'auditEvents'))).toEqual(
      ['after', 'before', 'filter', 'first', 'last', 'order'].sort(),
    );
    expect(args(field('Mutation', 'createAuditEvents'))).toEqual(['input']);
    expect(args(field('Mutation', 'flushAudit'))).toEqual(['input']);
  });

  it('has the Relay connection shape on auditEvents: the field returns the connection itself', () => {
    expect(String(field('Query', 'auditEvents').type)).toBe('AuditEventConnection!');
    expect(Object.keys(fieldsOf('AuditEventConnection')).sort()).toEqual(['edges', 'pageInfo']);
    expect(Object.keys(fieldsOf('PageInfo'))).toEqual(
      expect.arrayContaining(['hasNextPage', 'hasPreviousPage', 'startCursor', 'endCursor']),
    );
    expect(Object.keys(fieldsOf('AuditEventEdge')).sort()).toEqual(['cursor', 'node']);
    expect(String(fieldsOf('AuditEventEdge').node!.type)).toBe('AuditEvent!');
    expect(String(fieldsOf('AuditEventConnection').edges!.type)).toBe('[AuditEventEdge!]!');
  });

  it('answers every query field with its own type, never a union of it and errors', () => {
    const offenders = Object.entries(fieldsOf('Query'))
      .filter(([, f]) => kind(typeNamed(namedTypeOf(f.type))!) === 'GraphQLUnionType')
      .map(([name]) => name);
    expect(offenders).toEqual([]);
  });

  it('has one PageInfo, on every connection', () => {
    const pageInfos = types.filter((t) => /PageInfo$/.test(t.name)).map((t) => t.name);
    expect(pageInfos).toEqual(['PageInfo']);
    const connections = types.filter((t) => t.name.endsWith('Connection'));
    expect(connections.map((t) => t.name).sort()).toEqual(
      ['AuditEventConnection', 'DeadLetterConnection', 'TenantConnection'].sort(),
    );
    for (const c of connections) {
      expect(String(c.getFields!().pageInfo?.type), c.name).toBe('PageInfo!');
    }
  });

  it('identifies objects globally: Node, node(id:), nodes(ids:), and no raw id under `id`', () => {
    expect(kind(typeNamed('Node')!)).toBe('GraphQLInterfaceType');
    expect(String(fieldsOf('Node').id?.type)).toBe('ID!');
    expect(String(field('Query', 'node').type)).toBe('Node');
    expect(String(field('Query', 'nodes').type)).toBe('[Node]!');
    const nodes = types.filter((t) => (t.getInterfaces?.() ?? []).some((i) => i.name === 'Node'));
    expect(nodes.map((t) => t.name).sort()).toEqual(
      ['ApiKey', 'AuditEvent', 'DeadLetter', 'LegalHold', 'Tenant'].sort(),
    );
    // Relay keys its store by `id` alone: a type other than a Node must not carry an event's,
    // a key's or a hold's own id under that name.
    for (const name of ['AcceptedEvent', 'DeadLetteredEvent', 'LifecycleAuditEvent']) {
      expect(Object.keys(fieldsOf(name)), name).not.toContain('id');
      expect(Object.keys(fieldsOf(name)), name).toContain('eventId');
    }
    // An actor and a resource of the same id would be one record in such a store.
    expect(Object.keys(fieldsOf('Actor'))).toEqual(expect.arrayContaining(['actorId']));
    expect(Object.keys(fieldsOf('Resource'))).toEqual(expect.arrayContaining(['resourceId']));
    const withId = types
      .filter((t) => kind(t) === 'GraphQLObjectType' && 'id' in (t.getFields?.() ?? {}))
      .filter((t) => !(t.getInterfaces?.() ?? []).some((i) => i.name === 'Node'))
      .map((t) => t.name);
    expect(withId).toEqual([]);
    expect(Object.keys(fieldsOf('AuditEvent'))).toContain('eventId');
  });

  it('has the AuditEventFilter fields of the contract', () => {
    expect(kind(typeNamed('AuditEventFilter')!)).toBe('GraphQLInputObjectType');
    expect(Object.keys(fieldsOf('AuditEventFilter')).sort()).toEqual(
      [
        'correlationId',
        'eventTypes',
        'category',
        'action',
        'outcome',
        'actorType',
        'actorId',
        'resourceType',
        'resourceId',
        'occurredAfter',
        'occurredBefore',
        'severity',
        'dataContains',
      ].sort(),
    );
  });

  it('defines the AuditError interface with a non-null message and retryable', () => {
    expect(kind(typeNamed('AuditError')!)).toBe('GraphQLInterfaceType');
    const fields = fieldsOf('AuditError');
    expect(String(fields.message?.type)).toBe('String!');
    expect(String(fields.retryable?.type)).toBe('Boolean!');
  });

  it('makes every error type end in "Error" and implement AuditError, and the reverse', () => {
    const objects = types.filter((t) => kind(t) === 'GraphQLObjectType');
    const named = objects.filter((t) => t.name.endsWith('Error')).map((t) => t.name);
    const implementing = objects.filter(implementsAuditError).map((t) => t.name);
    expect(named.length).toBeGreaterThan(0);
    expect(implementing.sort()).toEqual(named.sort());
    for (const t of objects.filter(implementsAuditError)) {
      const f = t.getFields!();
      expect(String(f.message?.type), t.name).toBe('String!');
      expect(String(f.retryable?.type), t.name).toBe('Boolean!');
    }
  });

  it('makes every error member of every result union an AuditError, next to a payload', () => {
    const unions = types.filter((t) => kind(t) === 'GraphQLUnionType');
    expect(unions.length).toBeGreaterThan(0);
    for (const u of unions) {
      const members = u.getTypes!();
      const errors = members.filter((m) => m.name.endsWith('Error'));
      expect(errors.length, u.name).toBeGreaterThan(0);
      for (const e of errors) expect(implementsAuditError(e), `${u.name} → ${e.name}`).toBe(true);
      expect(members.length - errors.length, `${u.name} has a non-error member`).toBeGreaterThan(0);
    }
  });

  it('lets createAuditEvents answer each rejection this release can produce', () => {
    expect(resultMembers('Mutation', 'createAuditEvents')).toEqual(
      expect.arrayContaining([
        'CreateAuditEventsPayload',
        'ValidationError',
        'BackpressureError',
        'RateLimitedError',
        'ShuttingDownError',
        'CommitTimeoutError',
      ]),
    );
  });

  it('lets flushAudit answer FlushTimeoutError; refusals of the request are no union member', () => {
    expect(resultMembers('Mutation', 'flushAudit')).toEqual(
      expect.arrayContaining(['FlushAuditPayload', 'FlushTimeoutError']),
    );
    for (const gone of ['UnauthenticatedError', 'ForbiddenError', 'UnknownTenantError']) {
      expect(typeNamed(gone), gone).toBeUndefined();
    }
  });

  it('carries retryAfterMs on BackpressureError and RateLimitedError, issues on ValidationError', () => {
    expect(Object.keys(fieldsOf('BackpressureError'))).toContain('retryAfterMs');
    expect(Object.keys(fieldsOf('RateLimitedError'))).toContain('retryAfterMs');
    expect(Object.keys(fieldsOf('ValidationError'))).toContain('issues');
    expect(Object.keys(fieldsOf('ValidationIssue')).sort()).toEqual(['field', 'index', 'message']);
  });

  it('offers the Ack values COMMITTED and BUFFERED, COMMITTED by default', () => {
    expect(fieldsOf('CreateAuditEventsInput').ack?.defaultValue).toBe('COMMITTED');
    expect(committed).toMatch(/enum Ack \{[^}]*BUFFERED[^}]*COMMITTED[^}]*\}/s);
  });
});

describe('GraphiQL example operations', () => {
  it('are valid against the schema (a renamed field breaks the first page a person sees)', () => {
    const errors = validate(buildSchema(), parse(exampleOperations()));
    expect(errors.map((e) => e.message)).toEqual([]);
  });

  it('write events dated the day the page is loaded, so retention never refuses them', () => {
    const now = new Date('2031-07-15T10:00:00Z');
    const at = /occurredAt: "([^"]+)"/.exec(exampleOperations(now))?.[1];
    expect(at).toBeDefined();
    const age = now.getTime() - new Date(at!).getTime();
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(5 * 60_000);
  });
});
