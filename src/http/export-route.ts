import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { authenticateRequest, grantedScopes } from '../auth/caller.js';
import {
  ERROR_STATUS,
  ForbiddenError,
  ShuttingDownError,
  ValidationError,
} from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import { type AuditExporter, filterJson } from '../export/exporter.js';
import { type ExportFormat, errorLine } from '../export/format.js';
import {
  acceptsGzip,
  type ExportParams,
  MAX_EXPORT_URL_BYTES,
  parseExportParams,
} from '../export/params.js';
import {
  type GraphQLContext,
  recordRead,
  requireTenant,
  type Services,
} from '../graphql/context.js';
import { auditErrorOf, extensionsOf, withoutHttp } from '../graphql/error-mapping.js';
import { asError, type Logger } from '../logger.js';
import { fetchHeaders } from './auth-gate.js';
import { sendJson as sendJsonResponse } from './json-response.js';

/**
 * `GET /export`: the HTTP side of the export (src/export/ does the reading and formatting). It
 * authenticates exactly as the GraphQL endpoint does (graphql/auth.ts) — the same caller, the
 * same tenant rule (the key's tenant; `x-tenant-id` only in AUTH_MODE=dev), the
 * `events:read` scope — and records the read in the tenant's access log like `auditEvents`.
 *
 * Refusals answer before anything is streamed, as JSON: `{ "error": { "type": "ValidationError",
 * "code": "BAD_USER_INPUT", "message": …, "retryable": false, "issues": [...] } }` (every bad
 * parameter is a 400 naming it): the same codes and fields as GraphQL errors' extensions, with
 * the status of each code from the one table (domain/errors.ts ERROR_STATUS); a tenant's full
 * access-record share, say, is a 429: the export is refused, not sent unrecorded. The status is sent with the first chunk, once the first page was
 * read, so a failure before that is still a 500 with a JSON reason. A failure after it can no
 * longer change the status: the body then ends with an error line (`{"error": …}`, CSV
 * `#error,…`) instead of the trailer, and the verifier reports the file as failed.
 */

/** Sends one export request's answer; never throws (every failure is answered or logged). */
export type ExportRoute = (req: IncomingMessage, res: ServerResponse, requestId: string) => void;

/** JSON answers of this route are never cached: they are about one caller's request. */
function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  extra: Record<string, string> = {},
): void {
  sendJsonResponse(res, status, body, { 'cache-control': 'no-store', ...extra });
}

/** `20260104T134109Z`: a file-name-safe timestamp. */
const stamp = (d: Date) =>
  d
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');

/** Builds the `/export` handler over the service's auth, tenants, access log and an exporter. */
export function createExportRoute(
  services: Services,
  exporter: AuditExporter,
  log: Logger,
): ExportRoute {
  const { config } = services;

  /** One request from its checks to its last byte; refusals and early failures are thrown. */
  async function serve(req: IncomingMessage, res: ServerResponse, requestId: string) {
    const abort = new AbortController();
    // A client that goes away (even before the first byte) stops the reading between two pages.
    res.once('close', () => {
      if (!res.writableFinished) abort.abort(new Error('the client closed the connection'));
    });
    if (req.method !== 'GET') {
      sendJson(
        res,
        405,
        { error: { type: 'MethodNotAllowed', message: 'use GET', retryable: false } },
        { allow: 'GET' },
      );
      return;
    }
    const { ctx, tenant, params } = await authorise(req, services, log, requestId);
    if (services.ingest.isStopping) throw new ShuttingDownError();
    await services.tenants.ensure(tenant, false);
    const gzip = params.gzip ?? acceptsGzip(req.headers['accept-encoding']);
    const snap = await exporter.snapshot(tenant, params.filter);
    await recordRead(ctx, tenant, 'export', {
      format: params.format,
      gzip,
      filter: filterJson(params.filter),
      months: snap.months.map((m) => ({ month: m.month.toISOString(), throughSeq: m.throughSeq })),
    });

    const lines = exporter.lines(snap, params.format, abort.signal);
    // The first chunk is read before the status is sent: a failure of the first read is still
    // answered with a status and a reason, not a 200 cut short.
    const first = await lines.next();
    if (abort.signal.aborted) {
      await lines.return();
      log.info({ requestId, tenant }, 'export abandoned: the client closed the connection');
      return;
    }
    await sendExport(res, {
      requestId,
      tenant,
      format: params.format,
      gzip,
      exportedAt: snap.exportedAt,
      first,
      lines,
      signal: abort.signal,
      log,
    });
  }

  return (req, res, requestId) => {
    serve(req, res, requestId).catch((err: unknown) =>
      answerFailure(res, err, requestId, config.authMode, log),
    );
  };
}

/**
 * The request's caller, tenant and parameters, checked in the order their refusals are answered
 * (request target, headers, caller, scope, tenant, parameters). Throws the refusal.
 */
async function authorise(
  req: IncomingMessage,
  services: Services,
  log: Logger,
  requestId: string,
): Promise<{ ctx: GraphQLContext; tenant: TenantId; params: ExportParams }> {
  if (Buffer.byteLength(req.url ?? '', 'utf8') > MAX_EXPORT_URL_BYTES) {
    throw ValidationError.single('url', `longer than ${MAX_EXPORT_URL_BYTES} bytes`);
  }
  let headers: Headers;
  try {
    headers = fetchHeaders(req);
  } catch {
    throw ValidationError.single('headers', 'a header value is not valid');
  }
  // Who is calling comes first: nobody learns how their parameters would be judged before that.
  const caller = await authenticateRequest(services, headers);
  if (caller.kind === 'refused') throw caller.error;
  if (!grantedScopes(caller).has('events:read')) {
    throw new ForbiddenError('this API key lacks the scope events:read');
  }
  const ctx: GraphQLContext = { requestId, log, services, caller, transport: 'http' };
  const tenant = requireTenant(ctx);
  let search: URLSearchParams;
  try {
    search = new URL(req.url ?? '/', 'http://localhost').searchParams;
  } catch {
    throw ValidationError.single('url', 'is not a valid request target');
  }
  return { ctx, tenant, params: parseExportParams(search) };
}

/** An export past its checks whose first chunk has been read: what `sendExport` sends. */
interface ExportStream {
  requestId: string;
  tenant: string;
  format: ExportFormat;
  gzip: boolean;
  /** The snapshot's time, in the file name. */
  exportedAt: Date;
  /** The first chunk, read before the status is sent. */
  first: IteratorResult<string, void>;
  /** The chunks after the first. */
  lines: AsyncGenerator<string, void, undefined>;
  /** Aborted when the client closes the connection. */
  signal: AbortSignal;
  log: Logger;
}

/**
 * Sends the status, the headers and the body (gzipped when asked), with backpressure. Never
 * throws: a failure after the status cuts the connection and is logged.
 */
async function sendExport(res: ServerResponse, e: ExportStream): Promise<void> {
  const { requestId, tenant, format, gzip } = e;
  const ext = format === 'jsonl' ? 'jsonl' : 'csv';
  res.writeHead(200, {
    'content-type':
      format === 'jsonl'
        ? 'application/x-ndjson; charset=utf-8'
        : 'text/csv; charset=utf-8; header=present',
    'content-disposition': `attachment; filename="auditgraph-${tenant}-${stamp(e.exportedAt)}.${ext}"`,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    vary: 'accept-encoding',
    ...(gzip ? { 'content-encoding': 'gzip' } : {}),
  });
  // Chunks of at most ~64 KiB, and at most one waiting in the readable: with pipeline's
  // backpressure, a slow client holds the reading back instead of filling memory.
  const body = Readable.from(bodyText(e), {
    objectMode: true,
    highWaterMark: 1,
  });
  const started = Date.now();
  try {
    // Level 1: within 2 % of level 4's size on exports, and the cheapest CPU for a service.
    if (gzip) await pipeline(body, createGzip({ level: 1 }), res);
    else await pipeline(body, res);
    e.log.info({ requestId, tenant, format, gzip, ms: Date.now() - started }, 'export sent');
  } catch (err) {
    // The client left (or the socket failed): there is no one left to tell.
    if (e.signal.aborted) {
      e.log.info({ requestId, tenant }, 'export abandoned: the client closed the connection');
    } else {
      e.log.error(
        { err: asError(err), requestId, tenant },
        'export could not be sent; connection cut',
      );
    }
    res.destroy();
  }
}

/**
 * The body's text: the first chunk, then the rest. A read that fails once the status is sent
 * ends the body with an error line instead of the trailer (the verifier then reports the file as
 * failed); a failure because the client left is passed on.
 */
async function* bodyText(e: ExportStream): AsyncGenerator<string, void, undefined> {
  if (e.first.done) return;
  yield e.first.value;
  let sent = 0;
  try {
    for await (const chunk of e.lines) {
      sent++;
      yield chunk;
    }
  } catch (err) {
    if (e.signal.aborted) throw err;
    e.log.error(
      { err: asError(err), requestId: e.requestId, tenant: e.tenant, chunks: sent },
      'export failed while streaming',
    );
    yield errorLine(e.format, {
      type: 'InternalError',
      message:
        'the export failed while it was sent and is incomplete; the service log has the ' +
        'details under this request id',
      retryable: true,
      requestId: e.requestId,
    });
  }
}

/**
 * A request that failed before or while it was sent: after the status the connection is cut;
 * before it a refusal (a 4xx, or ShuttingDownError's 503) is answered with its code and fields,
 * anything else with a 500 that names the request id.
 */
function answerFailure(
  res: ServerResponse,
  err: unknown,
  requestId: string,
  authMode: Services['config']['authMode'],
  log: Logger,
): void {
  if (res.headersSent) {
    log.error({ err: asError(err), requestId }, 'export failed');
    res.destroy();
    return;
  }
  const refusal = auditErrorOf(err);
  if (refusal) {
    const status = ERROR_STATUS[refusal.code];
    if (status < 500 || refusal instanceof ShuttingDownError) {
      const extensions = withoutHttp(extensionsOf(refusal, authMode));
      sendJson(
        res,
        status,
        { error: { message: refusal.message, ...extensions } },
        status === 401 && authMode !== 'dev' ? { 'www-authenticate': 'Bearer' } : {},
      );
      return;
    }
  }
  log.error({ err: asError(err), requestId }, 'export could not start');
  sendJson(res, 500, {
    error: {
      type: 'InternalError',
      code: 'INTERNAL',
      message: 'the export could not start; the service log has the details',
      retryable: true,
      requestId,
    },
  });
}
