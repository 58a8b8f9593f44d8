import type { IncomingMessage, ServerResponse } from 'node:http';
import { authenticateRequest, type Caller, type CallerRefusal } from '../auth/caller.js';
import { ERROR_STATUS, UnauthenticatedError } from '../domain/errors.js';
import type { Services } from '../graphql/context.js';
import { answersAs, extensionsOf, withoutHttp } from '../graphql/error-mapping.js';

/**
 * Who is calling POST/GET /graphql, decided from the headers alone, before a byte of the body is
 * read: with AUTH_MODE=keys a request without a valid key is answered here, so that nobody
 * without a key can make the service read, buffer and parse a body (up to MAX_REQUEST_BYTES).
 *
 * - `pass`: nothing to decide before the body — AUTH_MODE=dev (which authenticates nothing, so
 *   any check of its claim would stop nobody), a CORS preflight, and the GraphiQL page (a
 *   browser navigation carries no Authorization header; the page executes nothing).
 * - `caller`: the authenticated caller, handed to yoga so the key is not looked up twice.
 * - `refused`: answer with `refuse()` and never read the body.
 */
export type Gate =
  | { kind: 'pass' }
  | { kind: 'caller'; caller: Caller }
  | { kind: 'refused'; error: CallerRefusal };

export async function gateBeforeBody(services: Services, req: IncomingMessage): Promise<Gate> {
  if (services.config.authMode === 'dev') return { kind: 'pass' };
  if (req.method === 'OPTIONS') return { kind: 'pass' };
  if (
    services.config.graphiql &&
    req.method === 'GET' &&
    (req.headers.accept ?? '').includes('text/html')
  ) {
    return { kind: 'pass' };
  }
  let headers: Headers;
  try {
    headers = fetchHeaders(req);
  } catch {
    return { kind: 'refused', error: new UnauthenticatedError('a header value is not valid') };
  }
  const caller = await authenticateRequest(services, headers);
  return caller.kind === 'refused' ? caller : { kind: 'caller', caller };
}

/**
 * A refusal as a GraphQL-over-HTTP response: a GraphQL response with one error and no `data`,
 * whose `extensions` carry the code (error-mapping.ts). Its status follows that spec: 401 (with
 * `WWW-Authenticate: Bearer`) for a missing or invalid key and 403 for a request that names a
 * tenant itself — for `application/graphql-response+json` and for streams (SSE) — and 200 for
 * `application/json`, which that spec requires. The connection is closed after it, so the
 * unread body is never drained either.
 */
export function refuse(req: IncomingMessage, res: ServerResponse, error: CallerRefusal): void {
  const unauthenticated = error instanceof UnauthenticatedError;
  const extensions = withoutHttp(extensionsOf(error, 'keys'));
  const text = JSON.stringify({ errors: [{ message: error.message, extensions }] });
  const as = answersAs(req.headers.accept);
  // 401 and 403 as that spec says; a token's tenant that does not exist is UNKNOWN_TENANT's 404.
  const status = as === 'json' ? 200 : ERROR_STATUS[error.code];
  res.writeHead(status, {
    'content-type': `application/${as === 'graphql-response+json' ? 'graphql-response+json' : 'json'}; charset=utf-8`,
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    connection: 'close',
    ...(unauthenticated ? { 'www-authenticate': 'Bearer' } : {}),
  });
  res.end(text);
}

/** The fetch-style headers `authenticateRequest` reads, from a node request. */
export function fetchHeaders(req: IncomingMessage): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    headers.set(name, Array.isArray(value) ? value.join(', ') : value);
  }
  return headers;
}
