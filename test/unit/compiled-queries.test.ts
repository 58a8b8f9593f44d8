import { type DocumentNode, getOperationAST, parse } from 'graphql';
import { compileQuery, isCompiledQuery } from 'graphql-jit';
import { createSchema, createYoga } from 'graphql-yoga';
import { describe, expect, it } from 'vitest';
import {
  COMPILABLE_MAX_CHARS,
  COMPILED_MAX,
  compilable,
  useCompiledQueries,
} from '../../src/graphql/compiled-queries.js';

/**
 * When a document is compiled: on its second execution, once; never as a subscription, never
 * for a text seen once. And a compiled execution answers exactly as graphql-js did, errors
 * included, and runs a mutation's resolver once per call, bad variables or not.
 */
function server() {
  const compiled: DocumentNode[] = [];
  let counter = 0;
  const yoga = createYoga({
    schema: createSchema({
      typeDefs: /* GraphQL */ `
        type Item { id: ID! n: Int! tags: [String!]! broken: String }
        type Box { item: Item! }
        type Query { items(first: Int!): [Item!]! item(id: ID!): Item box: Box echo(s: String, n: Int, l: [Int!]): String }
        type Mutation { bump: Int! add(n: Int!): Int! }
        type Subscription { ticks: Int! }
      `,
      resolvers: {
        Query: {
          items: (_: unknown, { first }: { first: number }) =>
            Array.from({ length: first }, (_, i) => ({ id: `i${i}`, n: i, tags: ['a', `t${i}`] })),
          item: (_: unknown, { id }: { id: string }) => (id === 'none' ? null : { id, n: 0 }),
          box: () => ({ item: null }),
          echo: (_: unknown, a: Record<string, unknown>) => JSON.stringify(a),
        },
        Item: {
          tags: (item: { tags?: string[] }) => item.tags ?? [],
          broken: () => {
            throw new Error('no such thing');
          },
        },
        Mutation: {
          bump: () => ++counter,
          add: (_: unknown, { n }: { n: number }) => {
            counter += n;
            return counter;
          },
        },
        Subscription: {
          ticks: {
            subscribe: async function* () {
              for (let i = 1; i <= 2; i++) yield { ticks: i };
            },
          },
        },
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
    const text = await res.text();
    // A subscription is answered as a stream of events, not one JSON document.
    return {
      status: res.status,
      body: res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text,
    };
  };
  return { run, compiled, counter: () => counter, schema: yoga.getEnveloped().schema };
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

  it('compiles a mutation too, running its resolver once per call, bad variables or not', async () => {
    const { run, compiled, counter } = server();
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push((await run('mutation { bump }')).body);
    expect(answers).toEqual([{ data: { bump: 1 } }, { data: { bump: 2 } }, { data: { bump: 3 } }]);
    expect(compiled).toHaveLength(1);
    const add = 'mutation($n: Int!) { add(n: $n) }';
    const refused = [];
    for (let i = 0; i < 3; i++) refused.push(await run(add, { n: 'ten' }));
    expect(refused[0]!.status).toBe(400);
    expect(refused[0]!.body.errors[0].message).toContain('Variable "$n" got invalid value "ten"');
    expect(refused[1]).toEqual(refused[0]);
    expect(refused[2]).toEqual(refused[0]);
    expect(counter()).toBe(3);
    expect((await run(add, { n: 10 })).body).toEqual({ data: { add: 13 } });
    expect(compiled).toHaveLength(2);
  });

  it('never compiles a subscription, nor a text sent once', async () => {
    const { run, compiled } = server();
    for (let i = 0; i < 3; i++) {
      const r = await run('subscription { ticks }');
      expect(r.body).toContain('"ticks":2');
    }
    for (let i = 1; i <= 3; i++) await run(`{ items(first: ${i}) { id } }`);
    expect(compiled).toHaveLength(0);
    // Negative control: the same text twice is compiled.
    await run('{ items(first: 1) { id } }');
    expect(compiled).toHaveLength(1);
  });
});

// A string literal that graphql-jit rewrites into an expression of the generated code.
const MARKER = '__MAGIC_DATE__33a9e76d_02e0_4128_8e92_3530ad3da74d';
const INJECTION = `{ echo(s: "${MARKER}0,(globalThis.__compiledQueriesPwned = 1)") }`;

describe('what is compiled', () => {
  it('never a document carrying text of the caller into generated code', async () => {
    const g = globalThis as { __compiledQueriesPwned?: number };
    const { run, compiled, schema } = server();
    for (let i = 0; i < 3; i++) expect((await run(INJECTION)).status).toBe(200);
    expect(compiled).toHaveLength(0);
    expect(g.__compiledQueriesPwned).toBeUndefined();
    // Negative control: compiled as graphql-jit compiles it, the caller's code runs.
    const jit = compileQuery(schema, parse(INJECTION));
    expect(isCompiledQuery(jit)).toBe(true);
    if (isCompiledQuery(jit)) await jit.query({}, {}, {});
    expect(g.__compiledQueriesPwned).toBe(1);
    delete g.__compiledQueriesPwned;
  });

  it('only documents of the hot paths’ shape', () => {
    const cases: [string, boolean][] = [
      ['query($first: Int!) { items(first: $first) { id n } }', true],
      ['{ items(first: 3) { id } echo(n: 1, l: [1, 2]) }', true],
      ['mutation($n: Int!) { add(n: $n) }', true],
      ['query { echo(s: "plain text") }', false],
      [INJECTION, false],
      [`query { ${MARKER}x: echo(n: 1) }`, false],
      ['query($s: String) { echo(s: $s) @include(if: true) }', false],
      ['query($n: Int = 3) { echo(n: $n) }', false],
      ['query($n: Int!) { echo(l: [1, $n]) }', false],
      ['mutation { bump add(n: 1) }', false],
      ['mutation { ...M } fragment M on Mutation { bump }', false],
      [`{ items(first: 1) { id ${' '.repeat(COMPILABLE_MAX_CHARS)} } }`, false],
    ];
    for (const [text, expected] of cases) {
      const document = parse(text);
      expect(compilable(document, getOperationAST(document)!), text.slice(0, 80)).toBe(expected);
    }
  });

  it(`keeps at most ${COMPILED_MAX} documents compiled, the least recently used dropped`, async () => {
    const { run, compiled } = server();
    const text = (i: number) => `{ items(first: ${i + 1}) { id } }`;
    for (let i = 0; i <= COMPILED_MAX; i++) {
      await run(text(i));
      await run(text(i));
    }
    expect(compiled).toHaveLength(COMPILED_MAX + 1);
    // The first was dropped to make room for the last: it is compiled again; the second is not.
    await run(text(1));
    await run(text(0));
    expect(compiled).toHaveLength(COMPILED_MAX + 2);
  });
});
