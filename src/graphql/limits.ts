import {
  type ASTVisitor,
  type DocumentNode,
  type FragmentDefinitionNode,
  Kind,
  NoSchemaIntrospectionCustomRule,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type ValidationContext,
  type ValidationRule,
  type ValueNode,
} from 'graphql';
import { createGraphQLError, type Plugin } from 'graphql-yoga';
import type { Config } from '../config.js';

/**
 * Limits on the shape of a request, each a setting that 0 switches off, each refused with a
 * GraphQL error whose `extensions` name it: `code` (e.g. `QUERY_TOO_DEEP`), `limit` (the
 * setting) and `max`. They act before any resolver runs, so such a request reads and writes
 * nothing; over HTTP they are answered with status 400 (413 for too many operations).
 *
 * - MAX_QUERY_TOKENS: lexical tokens in a document (the parser stops counting there);
 * - MAX_QUERY_DEPTH: nesting of fields, through fragments (introspection fields are not counted:
 *   INTROSPECTION governs those);
 * - MAX_ALIASES: aliased fields in a document (alias bombs);
 * - MAX_QUERY_COMPLEXITY: one per field, a connection's fields counted once per item of its page
 *   (`first`/`last`, with variables; else the default page size);
 * - MAX_OPERATIONS_PER_REQUEST: operations in one HTTP request (batching);
 * - INTROSPECTION=false: `__schema` and `__type` are refused.
 */

type LimitConfig = Pick<
  Config,
  | 'maxQueryDepth'
  | 'maxQueryComplexity'
  | 'maxAliases'
  | 'maxQueryTokens'
  | 'maxOperationsPerRequest'
  | 'introspection'
>;

/** Page size counted for a connection field called without `first`/`last`. */
const DEFAULT_PAGE = 50;

function limitError(
  message: string,
  code: string,
  limit: string,
  max: number,
  status = 400,
): Error {
  return createGraphQLError(message, { extensions: { code, limit, max, http: { status } } });
}

export function useRequestLimits(cfg: LimitConfig): Plugin {
  const rules: ValidationRule[] = [];
  if (cfg.maxQueryDepth > 0) rules.push(depthRule(cfg.maxQueryDepth));
  if (cfg.maxAliases > 0) rules.push(aliasRule(cfg.maxAliases));
  if (!cfg.introspection) rules.push(NoSchemaIntrospectionCustomRule);

  const checkComplexity = (args: {
    document: DocumentNode;
    operationName?: string | null;
    variableValues?: Record<string, unknown> | null;
  }): Error | null => {
    if (cfg.maxQueryComplexity <= 0) return null;
    const cost = complexity(args.document, args.operationName, args.variableValues ?? {});
    if (cost <= cfg.maxQueryComplexity) return null;
    return limitError(
      `the operation costs ${Number.isFinite(cost) ? cost : 'more than 2^53'}, more than ` +
        `MAX_QUERY_COMPLEXITY (${cfg.maxQueryComplexity}); ask for smaller pages or fewer fields`,
      'QUERY_TOO_COMPLEX',
      'MAX_QUERY_COMPLEXITY',
      cfg.maxQueryComplexity,
    );
  };

  return {
    onRequestParse() {
      return {
        onRequestParseDone({ requestParserResult }) {
          if (!Array.isArray(requestParserResult)) return;
          const max = cfg.maxOperationsPerRequest;
          if (max === 0 || requestParserResult.length <= max) return;
          throw limitError(
            max === 1
              ? 'batched operations are switched off (MAX_OPERATIONS_PER_REQUEST=1): send one operation per request'
              : `at most ${max} operations per request (MAX_OPERATIONS_PER_REQUEST)`,
            'TOO_MANY_OPERATIONS',
            'MAX_OPERATIONS_PER_REQUEST',
            max,
            413,
          );
        },
      };
    },
    onParse({ parseFn, setParseFn }) {
      setParseFn((source, options) => {
        try {
          return parseFn(source, {
            ...options,
            ...(cfg.maxQueryTokens > 0 ? { maxTokens: cfg.maxQueryTokens } : {}),
          });
        } catch (err) {
          const message = (err as Error).message ?? '';
          // graphql 16 says "more that N tokens"; later versions may fix the typo.
          if (/more tha[nt] \d+ tokens/.test(message)) {
            throw limitError(
              `the document has more than MAX_QUERY_TOKENS (${cfg.maxQueryTokens}) tokens`,
              'QUERY_TOO_LARGE',
              'MAX_QUERY_TOKENS',
              cfg.maxQueryTokens,
            );
          }
          if (err instanceof RangeError) {
            // A document nested deeper than the parser's stack: refused like a deep query.
            throw limitError(
              'the document is nested too deeply to parse',
              'QUERY_TOO_DEEP',
              'MAX_QUERY_DEPTH',
              cfg.maxQueryDepth,
            );
          }
          throw err;
        }
      });
    },
    onValidate({ addValidationRule }) {
      for (const rule of rules) addValidationRule(rule);
    },
    onExecute({ args, setResultAndStopExecution }) {
      const error = checkComplexity(args);
      if (error) setResultAndStopExecution({ errors: [error as never] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = checkComplexity(args);
      if (error) setResultAndStopExecution({ errors: [error as never] });
    },
  };
}

function fragmentsOf(document: DocumentNode): Map<string, FragmentDefinitionNode> {
  const map = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) {
    if (d.kind === Kind.FRAGMENT_DEFINITION) map.set(d.name.value, d);
  }
  return map;
}

/** Field nesting of every operation, through fragments, at most `max`. */
function depthRule(max: number): ValidationRule {
  return (context: ValidationContext): ASTVisitor => {
    const document = context.getDocument();
    const fragments = fragmentsOf(document);
    // Depth of each fragment's own selection (memoised: a fragment used a thousand times is
    // measured once); `null` while being measured, which cuts cycles (another rule reports them).
    const memo = new Map<string, number | null>();
    const depthOf = (set: SelectionSetNode | undefined, budget: number): number => {
      if (!set || budget < 0) return 0;
      let deepest = 0;
      for (const s of set.selections) {
        let d = 0;
        if (s.kind === Kind.FIELD) {
          if (s.name.value.startsWith('__')) continue;
          d = 1 + depthOf(s.selectionSet, budget - 1);
        } else if (s.kind === Kind.INLINE_FRAGMENT) {
          d = depthOf(s.selectionSet, budget);
        } else {
          const name = s.name.value;
          if (!memo.has(name)) {
            memo.set(name, null);
            memo.set(name, depthOf(fragments.get(name)?.selectionSet, max + 1));
          }
          d = memo.get(name) ?? 0;
        }
        if (d > deepest) deepest = d;
        if (deepest > max) return deepest;
      }
      return deepest;
    };
    return {
      OperationDefinition(node: OperationDefinitionNode) {
        const depth = depthOf(node.selectionSet, max + 1);
        if (depth > max) {
          context.reportError(
            limitError(
              `the operation ${node.name ? `${node.name.value} ` : ''}nests fields more than ` +
                `MAX_QUERY_DEPTH (${max}) deep`,
              'QUERY_TOO_DEEP',
              'MAX_QUERY_DEPTH',
              max,
            ) as never,
          );
        }
      },
    };
  };
}

/** Aliased fields in the whole document, at most `max`. */
function aliasRule(max: number): ValidationRule {
  return (context: ValidationContext): ASTVisitor => {
    let count = 0;
    let reported = false;
    return {
      Field(node) {
        if (!node.alias || reported) return;
        count++;
        if (count > max) {
          reported = true;
          context.reportError(
            limitError(
              `the document has more than MAX_ALIASES (${max}) aliased fields`,
              'TOO_MANY_ALIASES',
              'MAX_ALIASES',
              max,
            ) as never,
          );
        }
      },
    };
  };
}

function intArgument(
  value: ValueNode | undefined,
  variables: Record<string, unknown>,
): number | null {
  if (!value) return null;
  if (value.kind === Kind.INT) return Number(value.value);
  if (value.kind === Kind.VARIABLE) {
    const v = variables[value.name.value];
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  }
  return null;
}

/**
 * The cost of the operation that will run: one per field; the fields under a paginated field
 * (one taking `first` or `last`) once per item of its page. Fragments are costed once each.
 */
function complexity(
  document: DocumentNode,
  operationName: string | null | undefined,
  variables: Record<string, unknown>,
): number {
  const operations = document.definitions.filter(
    (d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION,
  );
  const operation = operationName
    ? operations.find((o) => o.name?.value === operationName)
    : operations.length === 1
      ? operations[0]
      : undefined;
  if (!operation) return 0; // graphql-js answers the missing operation itself
  const fragments = fragmentsOf(document);
  const memo = new Map<string, number>();
  const costOf = (set: SelectionSetNode | undefined, seen: Set<string>): number => {
    if (!set) return 0;
    let total = 0;
    for (const s of set.selections) {
      if (s.kind === Kind.FIELD) {
        if (s.name.value.startsWith('__')) continue;
        const page = s.arguments?.find((a) => a.name.value === 'first' || a.name.value === 'last');
        const size = page ? (intArgument(page.value, variables) ?? DEFAULT_PAGE) : DEFAULT_PAGE;
        const factor = page || isConnectionField(s.name.value) ? Math.max(1, size) : 1;
        total += 1 + factor * costOf(s.selectionSet, seen);
      } else if (s.kind === Kind.INLINE_FRAGMENT) {
        total += costOf(s.selectionSet, seen);
      } else {
        const name = s.name.value;
        if (seen.has(name)) continue; // a cycle: invalid, reported by validation
        let c = memo.get(name);
        if (c === undefined) {
          c = costOf(fragments.get(name)?.selectionSet, new Set([...seen, name]));
          memo.set(name, c);
        }
        total += c;
      }
      if (!Number.isFinite(total)) return Number.POSITIVE_INFINITY;
    }
    return total;
  };
  return costOf(operation.selectionSet, new Set());
}

/** Fields that return a page of items even when no `first`/`last` is given. */
function isConnectionField(name: string): boolean {
  return name === 'auditEvents' || name === 'deadLetters' || name === 'tenants';
}
