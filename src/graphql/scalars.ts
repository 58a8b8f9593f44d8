import { GraphQLError, Kind, type ValueNode } from 'graphql';
import { builder } from './builder.js';

// ISO 8601 with a time zone; at most millisecond precision (what is stored, and what cursors hold).
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})$/;

function parseDateTime(value: unknown): Date {
  if (typeof value !== 'string' || !DATE_TIME.test(value)) {
    throw new GraphQLError(
      'DateTime must be an ISO 8601 string with a time zone and at most millisecond precision, e.g. 2026-01-04T13:41:09.005Z',
    );
  }
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) throw new GraphQLError(`DateTime "${value}" is not a real date`);
  return d;
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
