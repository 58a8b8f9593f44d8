import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendJson } from './json-response.js';

/** Headers a browser may send across origins: the credentials, the tenant, the media types. */
const ALLOWED_HEADERS = 'authorization, content-type, accept, x-tenant-id, x-request-id';
/** Headers a page on another origin may read. */
const EXPOSED_HEADERS = 'x-request-id, retry-after, content-disposition, www-authenticate';
const METHODS = 'GET, POST, OPTIONS';

/**
 * CORS by exact allow-list (CORS_ORIGINS), for every route a page calls: `/graphql` (queries,
 * SSE), and `/export`. Written here rather than taken from yoga: yoga's CORS answers any origin,
 * reflected, with `allow-credentials: true` when no list is given, and covers only its own
 * endpoint. The service reads no cookies — credentials travel in `authorization` — so a listed
 * origin is never told `allow-credentials`, and an origin not listed gets no CORS header at all
 * (its page cannot read the answer; same-origin pages such as GraphiQL need none).
 *
 * Returns true when it answered the request itself (a preflight).
 */
export function applyCors(
  origins: ReadonlySet<string>,
  req: IncomingMessage,
  res: ServerResponse,
): boolean {
  const origin = req.headers.origin;
  const allowed = typeof origin === 'string' && origins.has(origin);
  res.setHeader('vary', 'Origin');
  if (allowed) {
    res.setHeader('access-control-allow-origin', origin);
    res.setHeader('access-control-expose-headers', EXPOSED_HEADERS);
  }
  const preflight = req.method === 'OPTIONS' && req.headers['access-control-request-method'];
  if (!preflight) return false;
  if (!allowed) {
    sendJson(res, 403, { error: 'origin not allowed (CORS_ORIGINS)' });
    return true;
  }
  res.setHeader('access-control-allow-methods', METHODS);
  res.setHeader('access-control-allow-headers', ALLOWED_HEADERS);
  res.setHeader('access-control-max-age', '600');
  res.setHeader('content-length', '0');
  res.writeHead(204).end();
  return true;
}
