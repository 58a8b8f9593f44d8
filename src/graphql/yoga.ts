import { AsyncLocalStorage } from 'node:async_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createYoga, maskError, type YogaServerInstance } from 'graphql-yoga';
import { authenticateRequest, type Caller, TENANT_HEADER } from '../auth/caller.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { useCompiledQueries } from './compiled-queries.js';
import type { GraphQLContext, Services } from './context.js';
import { refusalAsGraphQLError, useRefusalStatus } from './error-mapping.js';
import { useRequestLimits } from './limits.js';
import { buildSchema } from './schema.js';
import { useWriteShedding } from './write-shedding.js';

export interface RequestScope {
  requestId: string;
}

/** The request id of the request being served, wherever in its async call tree we are. */
export const requestScope = new AsyncLocalStorage<RequestScope>();

/**
 * What a transport hands to yoga: the node request (and response, for HTTP and SSE). A WebSocket
 * operation has no response and brings the caller its connection was authenticated as, and its
 * own request id. An HTTP request brings the caller it was authenticated as before its body was
 * read (AUTH_MODE=keys); without one (dev mode, in-process `fetch`) the headers are read here.
 */
export type ServerContext = {
  req: IncomingMessage;
  res?: ServerResponse;
  connectionCaller?: Caller;
  /** A WebSocket operation's end: aborted when the client completes it or the socket closes. */
  operationSignal?: AbortSignal;
  httpCaller?: Caller;
  requestId?: string;
};

const DEV_INTRO = `# auditgraph — every request is scoped to the tenant in the x-tenant-id header
# (see the Headers tab below; AUTH_MODE=dev). Run "Create", then "Flush", then "Page";
# "Sign" and "Verify" check the tenant's hash chain. Export: GET /export (see the README).
`;

const KEYS_INTRO = `# auditgraph — every request carries an API key: put yours in the Headers tab below
# ("Authorization": "Bearer agk_…"; create one with \`npm run keys -- create --tenant <id>
# --scopes events:write,events:read --label me\`). The tenant is the key's.
# Run "Create", then "Flush", then "Page".
`;

const TOKEN_INTRO = `# auditgraph — every request carries a token from your identity provider (or an API key,
# with AUTH_MODE=keys+jwt): put it in the Headers tab below ("Authorization": "Bearer <token>").
# The tenant is the token's tenant claim.
# Run "Create", then "Flush", then "Page".
`;

/**
 * The operations GraphiQL opens with, written for the day the page is loaded (a fixed date would
 * fall out of retention, and be refused, a few months after it was written).
 */
export function exampleOperations(now = new Date()): string {
  const occurredAt = new Date(Math.floor(now.getTime() / 1000) * 1000 - 60_000).toISOString();
  const year = now.getUTCFullYear();
  return `
mutation Create {
  createAuditEvents(input: {
    ack: BUFFERED
    events: [{
      occurredAt: "${occurredAt}"
      eventType: "workflow.execution.started"
      category: "workflow"
      action: "start"
      outcome: SUCCESS
      correlationId: "run-42"
      actor: { type: "user", id: "alice", ip: "10.0.0.7" }
      resource: { type: "workflow", id: "wf-1", name: "nightly build" }
      data: { attempt: 1 }
    }]
  }) {
    __typename
    ... on CreateAuditEventsPayload { accepted buffered stored duplicates events { eventId status } }
    ... on AuditError { code message retryable }
    ... on ValidationError { issues { index field message } }
  }
}

# BUFFERED answers before the events are written; this barrier waits until they are.
mutation Flush {
  flushAudit(input: { timeoutMs: 5000 }) {
    __typename
    ... on FlushAuditPayload { waitedFor stored duplicates deadLettered durationMs }
    ... on AuditError { code message retryable }
  }
}

query Page($after: String) {
  auditEvents(first: 20, after: $after, filter: { correlationId: "run-42" }) {
    edges { cursor node { id eventId occurredAt eventType outcome actor { actorId } resource { resourceId } data } }
    pageInfo { hasNextPage endCursor }
  }
}

query Stats {
  auditStats { accepted stored duplicates pending deadLettered discarded identityHolds }
}

# Tamper evidence: sign the chain heads now, then re-compute every link (audit:admin to sign).
mutation Sign {
  signAuditCheckpoints { data { month seq hash signedAt keyId } }
}

query Verify {
  verifyAuditChain(from: "${year - 1}-01-01T00:00:00Z", to: "${year + 1}-01-01T00:00:00Z") {
    ok eventsVerified elapsedMs
    months { month status eventsVerified lastSeq checkpoints }
    firstBreak { kind eventId seq expectedHash actualHash message }
  }
}

# Live: open /graphql in a second browser window (GraphiQL ends a tab's subscription when you
# switch to another tab). It opens on a new empty tab: select the tab with these examples, run
# this there and wait for SubscriptionReady, then run "Create" and "Flush" here.
subscription Settled {
  flushCompleted(filter: { correlationId: "run-42" }) {
    __typename
    ... on FlushCompleted { batchId trigger correlations { correlationId stored duplicates deadLettered } }
    ... on SubscriptionInterruptedError { reason message }
  }
}
`;
}

/** The GraphQL endpoint: schema, context from the request, masked unexpected errors, GraphiQL. */
export function createGraphQLServer(
  services: Services,
  log: Logger,
  metrics?: Pick<Metrics, 'observeQueryCompiled'>,
): YogaServerInstance<ServerContext, GraphQLContext> {
  const { config } = services;
  const keys = config.authMode !== 'dev';
  return createYoga<ServerContext, GraphQLContext>({
    schema: buildSchema(),
    graphqlEndpoint: '/graphql',
    landingPage: false,
    // CORS is the HTTP server's (http/cors.ts): an exact allow-list for every route. Yoga's own
    // would answer any origin, reflected, with credentials allowed.
    cors: false,
    logging: log.child({ component: 'yoga' }),
    // Loaded with the first page asked for: the bundled GraphiQL is ~47 MB of a process's memory,
    // which an instance nobody opens GraphiQL on (or one with GRAPHIQL=false) never needs.
    renderGraphiQL: async (options) =>
      (await import('@graphql-yoga/render-graphiql')).renderGraphiQL(options),
    graphiql: config.graphiql
      ? () => ({
          title: 'auditgraph',
          defaultQuery:
            (config.jwt ? TOKEN_INTRO : keys ? KEYS_INTRO : DEV_INTRO) + exampleOperations(),
          headers: JSON.stringify(
            keys
              ? { authorization: `Bearer <your ${config.jwt ? 'token' : 'API key'}>` }
              : { [TENANT_HEADER]: 'demo' },
            null,
            2,
          ),
          shouldPersistHeaders: true,
        })
      : false,
    // The limits plugin refuses batches over MAX_OPERATIONS_PER_REQUEST with an error naming it;
    // yoga's own check (which follows) is set to the same bound.
    batching:
      config.maxOperationsPerRequest === 1
        ? false
        : {
            limit:
              config.maxOperationsPerRequest === 0 ? 1_000_000 : config.maxOperationsPerRequest,
          },
    maxRequestBodySize: config.maxRequestBytes,
    plugins: [
      useRequestLimits(config),
      // Before write shedding, which wraps the executor in place.
      ...(config.queryCompileAfter >= 0
        ? [
            useCompiledQueries({
              compileAfter: config.queryCompileAfter,
              onCompile: () => metrics?.observeQueryCompiled(),
            }),
          ]
        : []),
      useWriteShedding(),
      useRefusalStatus(),
    ],
    maskedErrors: {
      maskError(error, message) {
        // An expected failure a resolver threw: the client's to see, with its code.
        const refusal = refusalAsGraphQLError(error, config.authMode);
        if (refusal) return refusal;
        // Never in "dev" form: that would put stack traces and SQL into responses.
        const masked = maskError(error, message, false);
        if (masked === error) return masked; // GraphQL's own (parse, validation, variables): the client's to see
        const requestId = requestScope.getStore()?.requestId;
        log.error(
          { err: (error as { originalError?: unknown }).originalError ?? error, requestId },
          'unexpected error',
        );
        const extensions = (masked as { extensions?: Record<string, unknown> }).extensions;
        if (extensions) {
          extensions.code = 'INTERNAL';
          extensions.requestId = requestId;
        }
        return masked;
      },
    },
    context: async ({ request, connectionCaller, operationSignal, httpCaller, requestId }) => ({
      requestId: requestId ?? requestScope.getStore()?.requestId ?? 'none',
      log,
      services,
      // A WebSocket operation's caller was re-checked as the operation arrived; HTTP and SSE
      // name theirs per request.
      caller:
        connectionCaller ?? httpCaller ?? (await authenticateRequest(services, request.headers)),
      transport: connectionCaller ? 'ws' : 'http',
      // Work a caller walks away from stops: the node response's close, as yoga's request
      // carries it, or the WebSocket operation's end.
      signal: connectionCaller ? operationSignal : request?.signal,
    }),
  });
}
