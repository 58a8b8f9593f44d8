import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  buildClientSchema,
  buildSchema,
  getIntrospectionQuery,
  type IntrospectionQuery,
  Kind,
  lexicographicSortSchema,
  type NamedTypeNode,
  type ObjectTypeDefinitionNode,
  parse,
  print,
  printSchema,
  type TypeNode,
  visit,
} from 'graphql';
import { event, type TestApp } from './harness.js';

/** What the client tools compile against: the printed schema the repository keeps. */
export const SCHEMA_FILE = new URL('../../schema/schema.graphql', import.meta.url).pathname;

export function schemaFileText(): string {
  return readFileSync(SCHEMA_FILE, 'utf8');
}

/** The schema a running service answers introspection with. */
export async function introspect(t: TestApp, tenant: string): Promise<IntrospectionQuery> {
  return t.gql<IntrospectionQuery>(tenant, getIntrospectionQuery({ descriptions: true }));
}

/** A schema printed in one canonical form, so two sources of the same schema compare equal. */
export function canonical(sdlOrIntrospection: string | IntrospectionQuery): string {
  const schema =
    typeof sdlOrIntrospection === 'string'
      ? buildSchema(sdlOrIntrospection)
      : buildClientSchema(sdlOrIntrospection);
  return printSchema(lexicographicSortSchema(schema));
}

function namedType(type: TypeNode): NamedTypeNode {
  return type.kind === Kind.NAMED_TYPE ? type : namedType(type.type);
}

/** The name of the union the schema of `unionShaped` gives `Query.auditEvents`. */
export const UNION_RESULT = 'AuditEventsOutcome';

/**
 * The same schema, except that `Query.auditEvents` returns a union of its connection and a
 * refusal type, the way results were shaped before query fields returned their own types. The
 * negative controls compile the same documents against it.
 */
export function unionShaped(sdl: string): string {
  const doc = parse(sdl);
  let connection: string | undefined;
  const edited = visit(doc, {
    ObjectTypeDefinition(node: ObjectTypeDefinitionNode) {
      if (node.name.value !== 'Query') return undefined;
      return {
        ...node,
        fields: node.fields?.map((field) => {
          if (field.name.value !== 'auditEvents') return field;
          connection = namedType(field.type).name.value;
          return {
            ...field,
            type: {
              kind: Kind.NON_NULL_TYPE,
              type: { kind: Kind.NAMED_TYPE, name: { kind: Kind.NAME, value: UNION_RESULT } },
            },
          };
        }),
      };
    },
  });
  if (!connection) throw new Error('the schema has no Query.auditEvents');
  const kind = doc.definitions.find((d) => 'name' in d && d.name?.value === connection)?.kind;
  if (kind !== Kind.OBJECT_TYPE_DEFINITION) {
    throw new Error(`Query.auditEvents returns ${connection}, not an object type`);
  }
  const sdlOut = `${print(edited)}

type AuditEventsRefusal {
  message: String!
}

union ${UNION_RESULT} = ${connection} | AuditEventsRefusal
`;
  buildSchema(sdlOut); // it must be a valid schema, or a failure against it proves nothing
  return sdlOut;
}

const WRITE = `mutation Write($input: CreateAuditEventsInput!) {
  createAuditEvents(input: $input) {
    __typename
    ... on CreateAuditEventsPayload { accepted stored }
  }
}`;

/** What `writeEvents` wrote, oldest first. */
export interface Written {
  eventId: string;
  occurredAt: string;
}

/**
 * Stores `count` events of one correlation id, committed before it returns, in batches of at
 * most 500. Their occurredAt values are one millisecond apart, oldest first and ending a minute
 * ago, so every order of them is known in advance.
 */
export async function writeEvents(
  t: TestApp,
  tenant: string,
  count: number,
  correlationId: string,
  overrides: (i: number) => Record<string, unknown> = () => ({}),
): Promise<Written[]> {
  const start = Date.now() - 60_000 - count;
  const all = Array.from({ length: count }, (_, i) => ({
    eventId: randomUUID(),
    occurredAt: new Date(start + i).toISOString(),
  }));
  for (let offset = 0; offset < count; offset += 500) {
    const batch = all.slice(offset, offset + 500);
    const events = batch.map((w, j) =>
      event({
        id: w.eventId,
        occurredAt: w.occurredAt,
        correlationId,
        eventType: `dashboard.event.${offset + j}`,
        ...overrides(offset + j),
      }),
    );
    const r = await t.gql(tenant, WRITE, { input: { ack: 'COMMITTED', events } });
    const payload = r.createAuditEvents;
    if (payload.__typename !== 'CreateAuditEventsPayload' || payload.stored !== batch.length) {
      throw new Error(`write refused: ${JSON.stringify(payload)}`);
    }
  }
  return all;
}

/** A cursor with one character in its middle changed: a page cursor the service never issued. */
export function tampered(cursor: string): string {
  const i = Math.floor(cursor.length / 2);
  const c = cursor[i];
  const swapped = c === '0' ? '1' : /[0-9]/.test(c ?? '') ? '0' : c === 'a' ? 'b' : 'a';
  return `${cursor.slice(0, i)}${swapped}${cursor.slice(i + 1)}`;
}

export interface Exit {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end and reports how it ended (never throws on a non-zero exit). */
export function run(
  file: string,
  args: string[],
  options: { cwd?: string; timeoutMs?: number } = {},
): Promise<Exit> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { cwd: options.cwd, timeout: options.timeoutMs ?? 30_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number') return reject(error);
        resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
      },
    );
  });
}

/** The page the Apollo and urql tests walk: what a client's paginated list asks for. */
export const EVENTS_PAGE = `query Events(
  $first: Int
  $after: String
  $last: Int
  $before: String
  $filter: AuditEventFilter
  $order: AuditEventOrder
) {
  auditEvents(first: $first, after: $after, last: $last, before: $before, filter: $filter, order: $order) {
    edges {
      cursor
      node {
        id
        eventId
        occurredAt
        eventType
      }
    }
    pageInfo {
      hasNextPage
      hasPreviousPage
      startCursor
      endCursor
    }
  }
}`;

/** One `EVENTS_PAGE` answer (or a client's merged list of them). */
export interface EventsPage {
  auditEvents: {
    edges: {
      cursor: string;
      node: { id: string; eventId: string; occurredAt: string; eventType: string };
    }[];
    pageInfo: {
      hasNextPage: boolean;
      hasPreviousPage: boolean;
      startCursor: string | null;
      endCursor: string | null;
    };
  };
}

/** The event ids of a page or merged list, in its order. */
export function eventIds(page: EventsPage | null | undefined): string[] {
  return page?.auditEvents.edges.map((e) => e.node.eventId) ?? [];
}
