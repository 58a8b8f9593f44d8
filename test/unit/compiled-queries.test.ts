import type { DocumentNode } from 'graphql';
import { createSchema, createYoga } from 'graphql-yoga';
import { describe, expect, it } from 'vitest';
import { useCompiledQueries } from '../../src/graphql/compiled-queries.js';

/**
 * When a document is compiled: on its second execution as a query, once; never as a mutation;
 * never for a query text seen once. And a compiled execution answers exactly as graphql-js did,
 * errors included.
 */
function server() {
  const compiled: DocumentNode[] = [];
  let counter = 0;
  const yoga = createYoga({
    schema: createSchema({
      typeDefs: /* GraphQL */ `
        type Item { id: ID! n: Int! tags: [String!]! broken: String }
        type Box { item: Item! }
        type Query { items(first: Int!): [Item!]! item(id: ID!): Item box: Box }
        type Mutation { bump: Int! }
      `,
      resolvers: {
        Query: {
          items: (_: unknown, { first }: { first: number }) =>
            Array.from({ length: first }, (_, i) => ({ id: `i${i}`, n: i, tags: ['a', `t${i}`] })),
          item: (_: unknown, { id }: { id: string }) => (id === 'none' ? null : { id, n: 0 }),
          box: () => ({ item: null }),
        },
        Item: {
          tags: (item: { tags?: string[] }) => item.tags ?? [],
          broken: () => {
            throw new Error('no such thing');
          },
        },
        Mutation: { bump: () => ++counter },
      },
    }),
    logging: false,
    plugins: [useCompiledQueries({ onCompile: (d) => compiled.push(d) })],
  });
  const run = async (query: string, variables?: Record<string, unknown>) => {
    const res = await yoga.fetch('http://unit/graphql', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query, variables }),
    });
    return { status: res.status, body: await res.json() };
  };
  return { run, compiled };
}

const ITEMS = 'query($first: Int!) { items(first: $first) { id n tags broken } }';

describe('useCompiledQueries', () => {
  it('compiles a query on its second execution, once, and it answers as before', async () => {
    const { run, compiled } = server();
    const first = await run(ITEMS, { first: 3 });
    expect(compiled).toHaveLength(0);
    const second = await run(ITEMS, { first: 3 });
    expect(compiled).toHaveLength(1);
    const third = await run(ITEMS, { first: 3 });
    expect(compiled).toHaveLength(1);
    // The resolver error nulls the nullable field and is reported with its path, either way.
    expect(first.body.errors).toHaveLength(3);
    expect(first.body.errors[0]).toMatchObject({ path: ['items', 0, 'broken'] });
    expect(second).toEqual(first);
    expect(third).toEqual(first);
  });

  it('answers variable and argument errors as graphql-js does, compiled or not', async () => {
    const { run, compiled } = server();
    const cases: [string, Record<string, unknown>][] = [
      [ITEMS, { first: 'three' }],
      [ITEMS, {}],
      ['query($id: ID!) { item(id: $id) { id } }', { id: 'none' }],
      ['query($id: ID!) { item(id: $id) { id } }', { id: { not: 'an id' } }],
      // A non-null field resolved to null: the error, and null in the nearest nullable parent.
      ['{ box { item { id } } }', {}],
      // An error under fragments: located at the field inside them.
      ['{ items(first: 1) { ...F } } fragment F on Item { ... on Item { broken } }', {}],
    ];
    for (const [query, variables] of cases) {
      const once = await run(query, variables);
      const twice = await run(query, variables);
      expect(twice).toEqual(once);
    }
    expect(compiled.length).toBeGreaterThan(0);
  });

  it('never compiles a mutation, nor a query text sent once', async () => {
    const { run, compiled } = server();
    for (let i = 0; i < 3; i++) await run('mutation { bump }');
    for (let i = 1; i <= 3; i++) await run(`{ items(first: ${i}) { id } }`);
    expect(compiled).toHaveLength(0);
    // Negative control: the same text twice is compiled.
    await run('{ items(first: 1) { id } }');
    expect(compiled).toHaveLength(1);
  });
});
