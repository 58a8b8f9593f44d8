import {
  BREAK,
  type DocumentNode,
  type ExecutionResult,
  type FieldNode,
  type FragmentDefinitionNode,
  GraphQLError,
  getOperationAST,
  Kind,
  type OperationDefinitionNode,
  type SelectionSetNode,
  visit,
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
 * Only documents of the shape clients send for the hot paths are compiled: every argument a
 * variable or a number, boolean, enum or null (no string literal anywhere, no variable inside a
 * literal, no default values, no directives), a mutation with one root field, at most
 * COMPILABLE_MAX_CHARS of text, and nothing resembling graphql-jit's internal markers. Anything
 * else runs through graphql-js. graphql-jit writes argument literals into the code it generates
 * and rewrites string markers in them into expressions, so a string literal would let a caller
 * put code of its own into the service; it also fixes a variable inside a custom scalar's literal
 * at compile time, turns a DateTime default into a string, mishandles @skip/@include in shared
 * fragments, and can leave a mutation of several root fields waiting forever when one of them
 * has bad arguments. A document is kept compiled in a bounded cache (COMPILED_MAX documents).
 *
 * Subscriptions keep graphql-js's execution. A document is compiled on its second execution,
 * not its first: compiling costs several executions' worth, so a caller sending a new text
 * each time (the parse cache holds one document per text) is served by the ordinary executor
 * rather than making the service compile for each request. This plugin comes before write
 * shedding (write-shedding.ts), which wraps whichever executor is in place.
 *
 * (envelop's graphql-jit plugin does the compiling and caching too, but not the shape guard, the
 * bounded cache or the error reporting above; what it adds over graphql-jit itself is a few
 * lines.)
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
  // Documents found not to be of a compilable shape (decided once per document).
  const refused = new WeakSet<DocumentNode>();
  // Compiled operations, most recently used last, by document and operation name; null where
  // compiling failed. A Map in insertion order is the LRU: at most COMPILED_MAX entries.
  const compiled = new Map<DocumentNode, Map<string, CompiledQuery | null>>();

  const compiledFor = (
    args: { schema: Parameters<typeof compileQuery>[0]; document: DocumentNode },
    operation: OperationDefinitionNode,
    operationName: string,
  ): CompiledQuery | null => {
    const { document } = args;
    if (refused.has(document)) return null;
    let byName = compiled.get(document);
    if (byName) {
      compiled.delete(document);
      compiled.set(document, byName);
    } else {
      if (!compilable(document, operation)) {
        refused.add(document);
        return null;
      }
      byName = new Map();
      compiled.set(document, byName);
      if (compiled.size > COMPILED_MAX) compiled.delete(compiled.keys().next().value!);
    }
    let query = byName.get(operationName);
    if (query === undefined) {
      const result = compileQuery(args.schema, document, operationName || undefined);
      query = isCompiledQuery(result) ? result : null;
      byName.set(operationName, query);
      if (query) opts.onCompile?.(document);
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
      const compiledQuery = compiledFor(args, operation, operationName ?? '');
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

/** Longest document text compiled: the hot operations are a few hundred characters. */
export const COMPILABLE_MAX_CHARS = 4_096;
/** Compiled documents kept (least recently used dropped first). */
export const COMPILED_MAX = 256;

/** Whether a document is of the shape compiled here (see useCompiledQueries). */
export function compilable(document: DocumentNode, operation: OperationDefinitionNode): boolean {
  const text = document.loc?.source.body;
  if (text === undefined || text.length > COMPILABLE_MAX_CHARS || text.includes('__MAGIC')) {
    return false;
  }
  if (operation.operation === 'mutation') {
    const root = operation.selectionSet.selections;
    if (root.length !== 1 || root[0]!.kind !== Kind.FIELD) return false;
  }
  let ok = true;
  // Depth inside a literal value (list or object): a variable there is fixed at compile time.
  let inLiteral = 0;
  visit(document, {
    StringValue() {
      ok = false;
      return BREAK;
    },
    Directive() {
      ok = false;
      return BREAK;
    },
    VariableDefinition(node) {
      if (node.defaultValue) {
        ok = false;
        return BREAK;
      }
      return false; // its type and name need no look
    },
    ListValue: {
      enter: () => {
        inLiteral++;
      },
      leave: () => {
        inLiteral--;
      },
    },
    ObjectValue: {
      enter: () => {
        inLiteral++;
      },
      leave: () => {
        inLiteral--;
      },
    },
    Variable() {
      if (inLiteral > 0) {
        ok = false;
        return BREAK;
      }
      return undefined;
    },
  });
  return ok;
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
