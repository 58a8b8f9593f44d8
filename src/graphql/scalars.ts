import { GraphQLError, Kind, type ValueNode } from 'graphql';
import { parseInstant } from '../domain/instant.js';
import { builder } from './builder.js';

/**
 * DateTime input: the rule of domain/instant.ts (a real date and time, years 0001–9999, at most
 * millisecond precision, with a zone). A bad value is the client's mistake: BAD_USER_INPUT, and
 * graphql-js prefixes the message with the argument or variable path it came from.
 */
function parseDateTime(value: unknown): Date {
  const parsed = parseInstant(value);
  if (parsed instanceof Date) return parsed;
  const shown = typeof value === 'string' ? ` ${JSON.stringify(value.slice(0, 40))}` : '';
  throw new GraphQLError(`DateTime${shown} ${parsed.problem}`, {
    extensions: { code: 'BAD_USER_INPUT' },
  });
}

builder.scalarType('DateTime', {
  description: 'An instant, as ISO 8601 with a time zone and millisecond precision.',
  serialize: (d) => d.toISOString(),
  parseValue: parseDateTime,
  parseLiteral: (ast) => parseDateTime(ast.kind === Kind.STRING ? ast.value : undefined),
});

/** Deepest literal nesting accepted before a JSON value is rejected (input limits run later). */
const MAX_LITERAL_DEPTH = 32;

function literalToJson(
  ast: ValueNode,
  variables: Record<string, unknown> | null | undefined,
  depth: number,
): unknown {
  if (depth > MAX_LITERAL_DEPTH)
    throw new GraphQLError(`JSON nested deeper than ${MAX_LITERAL_DEPTH} levels`);
  switch (ast.kind) {
    case Kind.STRING:
    case Kind.BOOLEAN:
      return ast.value;
    case Kind.INT:
    case Kind.FLOAT:
      return Number(ast.value);
    case Kind.NULL:
      return null;
    case Kind.LIST:
      return ast.values.map((v) => literalToJson(v, variables, depth + 1));
    case Kind.OBJECT:
      return Object.fromEntries(
        ast.fields.map((f) => [f.name.value, literalToJson(f.value, variables, depth + 1)]),
      );
    case Kind.VARIABLE:
      return variables?.[ast.name.value];
    default:
      throw new GraphQLError('not a JSON value');
  }
}

function parseJsonObject(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new GraphQLError('JSONObject must be a JSON object');
  }
  return value as Record<string, unknown>;
}

builder.scalarType('JSONObject', {
  description: 'A JSON object.',
  serialize: (v) => v,
  parseValue: parseJsonObject,
  parseLiteral: (ast, variables) => parseJsonObject(literalToJson(ast, variables, 0)),
});
