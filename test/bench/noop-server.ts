/**
 * The GraphQL layer's own ceiling: a Yoga server over the service's printed schema (so the very
 * same `CreateAuditEventsInput` / `AuditEventInput` types, scalars parsed the same way) whose
 * `createAuditEvents` does nothing but count. No validation, no buffer, no database. Run as its
 * own process by run.ts; logs `{"msg":"listening","port":…}` like the service.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GraphQLError, GraphQLScalarType, Kind } from 'graphql';
import { createSchema, createYoga } from 'graphql-yoga';

const sdl = readFileSync(new URL('../../schema/schema.graphql', import.meta.url), 'utf8');

// The service's DateTime rule: ISO 8601 with a zone and at most millisecond precision.
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})$/;
function parseDateTime(value: unknown): Date {
  if (typeof value !== 'string' || !DATE_TIME.test(value)) throw new GraphQLError('bad DateTime');
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new GraphQLError('bad DateTime');
  return d;
}
function parseObject(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new GraphQLError('JSONObject must be a JSON object');
  }
  return value as Record<string, unknown>;
}

const schema = createSchema({
  typeDefs: sdl,
  resolvers: {
    DateTime: new GraphQLScalarType({
      name: 'DateTime',
      serialize: (d) => (d as Date).toISOString(),
      parseValue: parseDateTime,
      parseLiteral: (ast) => parseDateTime(ast.kind === Kind.STRING ? ast.value : undefined),
    }),
    JSONObject: new GraphQLScalarType({
      name: 'JSONObject',
      serialize: (v) => v,
      parseValue: parseObject,
    }),
    CreateAuditEventsResult: { __resolveType: (v: { __typename: string }) => v.__typename },
    Mutation: {
      createAuditEvents: (_root: unknown, args: { input: { events: unknown[] } }) => ({
        __typename: 'CreateAuditEventsPayload',
        events: [],
        accepted: args.input.events.length,
        stored: 0,
        duplicates: 0,
        buffered: args.input.events.length,
      }),
    },
  },
});

const yoga = createYoga({
  schema,
  graphqlEndpoint: '/graphql',
  landingPage: false,
  logging: false,
});
const server = createServer(yoga);
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  console.log(JSON.stringify({ level: 30, msg: 'listening', port }));
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
