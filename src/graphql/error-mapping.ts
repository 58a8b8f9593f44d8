import type { ExecutionResult, GraphQLError } from 'graphql';
import { createGraphQLError, isAsyncIterable, type Plugin } from 'graphql-yoga';
import type { AuthMode } from '../config.js';
import { AuditError, ERROR_STATUS, type ErrorCode } from '../domain/errors.js';

/**
 * How a refusal reaches a GraphQL client: an entry in `errors` whose `extensions` carry the code
 * (the error classes' table, domain/errors.ts), `retryable`, the class's name as `type`, and the
 * error's own fields (`retryAfterMs`, `limit`, `issues`, …).
 *
 * The HTTP status follows the GraphQL-over-HTTP spec: a request refused for who is calling
 * answers 401 (UNAUTHENTICATED, with `WWW-Authenticate: Bearer` when keys are what is asked for)
 * or 403 (FORBIDDEN) when the response is `application/graphql-response+json`, and 200 when it
 * is `application/json`, as that spec requires for JSON clients. (yoga skips the status of an
 * error marked `spec` for `application/json`.) Every other refusal is a 200 with `errors`: the
 * request was a valid GraphQL request whose field could not be answered.
 */
export function extensionsOf(
  err: AuditError,
  authMode: AuthMode,
): Record<string, unknown> & { code: ErrorCode } {
  const extensions: Record<string, unknown> & { code: ErrorCode } = {
    code: err.code,
    retryable: err.retryable,
    type: err.name,
    ...err.details(),
  };
  const http = httpOf(err.code, authMode);
  if (http) extensions.http = http;
  return extensions;
}

function httpOf(code: ErrorCode, authMode: AuthMode) {
  if (code === 'UNAUTHENTICATED') {
    return {
      status: 401,
      spec: true,
      ...(authMode !== 'dev' ? { headers: { 'WWW-Authenticate': 'Bearer' } } : {}),
    };
  }
  if (code === 'FORBIDDEN') return { status: 403, spec: true };
  return null;
}

/**
 * The media type yoga answers a request with, as yoga chooses it: the first entry of `Accept` it
 * can serve, where a wildcard (or no Accept at all) means `application/json`.
 */
export function answersAs(accept: string | undefined): 'graphql-response+json' | 'json' | 'other' {
  for (const entry of (accept || '*/*').toLowerCase().split(',')) {
    const type = entry.split(';')[0]!.trim();
    if (type === 'application/graphql-response+json') return 'graphql-response+json';
    if (type === 'application/json' || type === 'application/*' || type === '*/*') return 'json';
    if (type === 'text/event-stream' || type === 'multipart/mixed') return 'other';
  }
  return 'json';
}

/**
 * The GraphQL error for an expected failure a resolver threw (`error` is graphql-js's located
 * error around it); null for anything else, which stays masked.
 */
export function refusalAsGraphQLError(error: unknown, authMode: AuthMode): Error | null {
  const located = error as {
    originalError?: unknown;
    nodes?: never;
    source?: never;
    positions?: never;
    path?: readonly (string | number)[];
  };
  const original = auditErrorOf(error);
  if (!original) return null;
  return createGraphQLError(original.message, {
    nodes: located.nodes,
    source: located.source,
    positions: located.positions,
    path: located.path,
    extensions: extensionsOf(original, authMode),
  });
}

/**
 * The status of a refusal where the spec leaves it to the server. A request that was answered in
 * part (`data` is not null) is a 200 even with a FORBIDDEN field among its errors. A subscription
 * refused when it is opened over SSE (who is calling, its arguments, a limit) answers with its status (401, 403, 400, 429, … from ERROR_STATUS) and a JSON GraphQL response
 * before any event is streamed, rather than yoga's 200 stream whose only event is the error:
 * EventSource, proxies and client auth handlers act on the status. Anything but a refusal — a
 * stream, or an unexpected error — is left to yoga.
 */
export function useRefusalStatus(): Plugin {
  return {
    onResultProcess({ request, result, setResult, setResultProcessor }) {
      // Most answers have no errors: nothing to decide, not even the media type.
      if (isAsyncIterable(result) || Array.isArray(result)) return;
      const errors = (result as ExecutionResult).errors;
      if (!errors?.length) return;
      if ((result as ExecutionResult).data) {
        // Some fields were answered: the request as a whole was not refused, so it is a 200
        // whatever the media type (the spec asks for 2xx whenever `data` is not null).
        if (errors.some((e) => e.extensions?.http)) {
          setResult({ ...(result as ExecutionResult), errors: errors.map(withoutHttpStatus) });
        }
        return;
      }
      if (answersAs(request.headers.get('accept') ?? undefined) !== 'other') return;
      let status = 0;
      for (const error of errors) {
        const code = error.extensions?.code;
        if (typeof code !== 'string' || !(code in ERROR_STATUS)) return;
        status = Math.max(status, ERROR_STATUS[code as ErrorCode]);
      }
      const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8' };
      for (const error of errors) {
        const http = error.extensions?.http as { headers?: Record<string, string> } | undefined;
        Object.assign(headers, http?.headers);
      }
      setResultProcessor(
        (r, fetchAPI) =>
          new fetchAPI.Response(
            JSON.stringify({
              errors: (r as ExecutionResult).errors?.map((e) => ({
                ...e.toJSON(),
                extensions: withoutHttp(e.extensions),
              })),
            }),
            { status, headers },
          ),
        'application/json',
      );
    },
  };
}

/**
 * Extensions as a client sees them: `http` only tells yoga a status and headers (yoga drops it
 * from the responses it writes; the doors that write their own — SSE refusals, the auth gate,
 * /export, WebSocket messages — drop it here).
 */
export function withoutHttp<T extends Record<string, unknown>>(extensions: T): Omit<T, 'http'>;
export function withoutHttp<T extends Record<string, unknown>>(
  extensions: T | undefined,
): Omit<T, 'http'> | undefined;
export function withoutHttp<T extends Record<string, unknown>>(extensions: T | undefined) {
  if (!extensions || !('http' in extensions)) return extensions;
  const { http: _http, ...rest } = extensions;
  return rest;
}

function withoutHttpStatus(error: GraphQLError): GraphQLError {
  if (!error.extensions?.http) return error;
  return createGraphQLError(error.message, {
    nodes: error.nodes,
    source: error.source,
    positions: error.positions,
    path: error.path,
    extensions: withoutHttp(error.extensions),
  });
}

/**
 * A refusal of the request itself thrown as the GraphQL error it becomes, so that no field's
 * typed result can take it in: a malformed tenant header is a ValidationError, but not one of
 * a mutation's own results (the events it was given were not the problem).
 */
export function requestRefusal(err: AuditError, authMode: AuthMode): Error {
  return createGraphQLError(err.message, {
    extensions: extensionsOf(err, authMode),
    originalError: err,
  });
}

/** The expected failure behind an error, however many GraphQL errors wrap it; else null. */
export function auditErrorOf(error: unknown): AuditError | null {
  let e: unknown = error;
  for (let depth = 0; depth < 4 && e; depth++) {
    if (e instanceof AuditError) return e;
    e = (e as { originalError?: unknown }).originalError;
  }
  return null;
}
