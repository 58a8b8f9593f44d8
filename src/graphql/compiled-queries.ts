import {
  type DocumentNode,
  type ExecutionResult,
  type FieldNode,
  type FragmentDefinitionNode,
  GraphQLError,
  getOperationAST,
  Kind,
  type OperationDefinitionNode,
  type SelectionSetNode,
} from 'graphql';
import { type CompiledQuery, compileQuery, isCompiledQuery } from 'graphql-jit';
import type { Plugin } from 'graphql-yoga';

/**
 * Queries and mutations a client sends again are executed compiled (graphql-jit). A page of 50
 * events with every field is some 1,250 field resolutions, and a call of 100 events some 2,500
 * input values to coerce, each a trip through graphql-js's generic executor (argument and type
 * checks, paths, promise handling), which cost more CPU than the SQL they lead to. graphql-jit
 * turns an operation into one function that coerces exactly its variables and resolves exactly
 * its selection. Parsing and validation stay graphql-js's (and the request limits' rules), so
 * what is refused does not change; only execution does, and it answers as graphql-js would:
 *
 * - variables a compiled operation refuses are handed back to graphql-js, which refuses them
 *   in its words (naming the path of the bad value) and with the status yoga gives them; no
 *   resolver has run by then, so nothing happens twice;
 * - an error of a compiled execution is reported as graphql-js reports it: with the locations
 *   of its fields in the document, and wrapping what went wrong (a resolver's throw, a null in
 *   a non-null field) as its original error, so masking treats it alike (an unexpected one is
 *   logged and masked as INTERNAL; graphql-jit would send a null violation's message as is).
 *
 * Subscriptions keep graphql-js's execution. A document is compiled on its second execution,
 * not its first: compiling costs several executions' worth, so a caller sending a new text
 * each time (the parse cache holds one document per text) is served by the ordinary executor
 * rather than making the service compile for each request. This plugin comes before write
 * shedding (write-shedding.ts), which wraps whichever executor is in place.
 *
 * (envelop's graphql-jit plugin does the compiling and caching too, but neither the threshold nor
 * the error reporting above; what it adds over graphql-jit itself is a few lines.)
 */
export function useCompiledQueries(
  opts: {
    /** Executions of a document by graphql-js before it is compiled. */
    compileAfter?: number;
    /** Called when a document is compiled (once per document and operation). */
    onCompile?: (document: DocumentNode) => void;
  } = {},
): Plugin {
  const compileAfter = opts.compileAfter ?? 1;
  // Executions so far per document, counted up to compileAfter.
  const runs = new WeakMap<DocumentNode, number>();
  // Per document, by operation name ('' for the only one): null where compiling failed.
  const compiled = new WeakMap<DocumentNode, Map<string, CompiledQuery | null>>();

  const compiledFor = (
    args: { schema: Parameters<typeof compileQuery>[0]; document: DocumentNode },
    operationName: string,
  ): CompiledQuery | null => {
    let byName = compiled.get(args.document);
    if (!byName) {
      byName = new Map();
      compiled.set(args.document, byName);
    }
    let query = byName.get(operationName);
    if (query === undefined) {
      const result = compileQuery(args.schema, args.document, operationName || undefined);
      query = isCompiledQuery(result) ? result : null;
      byName.set(operationName, query);
      if (query) opts.onCompile?.(args.document);
    }
    return query;
  };

  return {
    onExecute({ args, setExecuteFn, executeFn }) {
      const { document, operationName } = args;
      const operation = getOperationAST(document, operationName);
      if (operation?.operation !== 'query' && operation?.operation !== 'mutation') return;
      const n = runs.get(document) ?? 0;
      if (n < compileAfter) {
        runs.set(document, n + 1);
        return;
      }
      const compiledQuery = compiledFor(args, operationName ?? '');
      if (!compiledQuery) return;
      setExecuteFn(async (a) => {
        const result = await compiledQuery.query(a.rootValue, a.contextValue, a.variableValues);
        // Only refused variables end a compiled run without data: graphql-js says why.
        if (result.data === undefined) return executeFn(a);
        return asGraphQLJsReports(result, document, operation);
      });
    },
  };
}

/** A compiled execution's result with its errors as graphql-js would have made them. */
function asGraphQLJsReports(
  result: ExecutionResult,
  document: DocumentNode,
  operation: OperationDefinitionNode,
): ExecutionResult {
  if (!result.errors?.length) return result;
  const errors = result.errors.map((e) => {
    const path = e.path ?? [];
    return new GraphQLError(e.message, {
      nodes: fieldNodesAt(document, operation, path),
      path,
      originalError: e.originalError ?? new Error(e.message),
      extensions: e.extensions,
    });
  });
  return { ...result, errors };
}

/** The field nodes a response path leads to, through fragments (what graphql-js locates). */
function fieldNodesAt(
  document: DocumentNode,
  operation: OperationDefinitionNode,
  path: readonly (string | number)[],
): FieldNode[] {
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) {
    if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
  }
  const collect = (set: SelectionSetNode, key: string, out: FieldNode[], seen: Set<string>) => {
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) {
        if ((s.alias ?? s.name).value === key) out.push(s);
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        collect(s.selectionSet, key, out, seen);
      } else if (!seen.has(s.name.value)) {
        seen.add(s.name.value);
        const fragment = fragments.get(s.name.value);
        if (fragment) collect(fragment.selectionSet, key, out, seen);
      }
    }
  };
  let sets: SelectionSetNode[] = [operation.selectionSet];
  let nodes: FieldNode[] = [];
  for (const key of path) {
    if (typeof key === 'number') continue;
    nodes = [];
    for (const set of sets) collect(set, key, nodes, new Set());
    sets = nodes.flatMap((n) => (n.selectionSet ? [n.selectionSet] : []));
  }
  return nodes;
}
