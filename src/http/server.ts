import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Config } from '../config.js';
import type { Services } from '../graphql/context.js';
import { type createGraphQLServer, requestScope } from '../graphql/yoga.js';
import type { Logger } from '../logger.js';
import { type Gate, gateBeforeBody, refuse } from './auth-gate.js';
import { applyCors } from './cors.js';
import type { createExplorerRoute } from './explorer-route.js';
import type { ExportRoute } from './export-route.js';
import { sendJson } from './json-response.js';
import type { createMetricsRoute } from './metrics-route.js';
import type { Readiness } from './readiness.js';
import { attachWebSocket, type WebSocketTransport } from './websocket.js';

type GraphQLServer = ReturnType<typeof createGraphQLServer>;
type MetricsRoute = ReturnType<typeof createMetricsRoute>;

/** What the routes serve: GraphQL over HTTP, SSE and WebSocket, /export, health and metrics. */
export interface Routes {
  config: Config;
  log: Logger;
  services: Services;
  graphql: GraphQLServer;
  exportRoute: ExportRoute;
  /** `/explorer` and its script. */
  explorerRoute: ReturnType<typeof createExplorerRoute>;
  readiness: Readiness;
  metricsRoute: MetricsRoute;
  /** CORS_ORIGINS, for looking up. */
  corsOrigins: ReadonlySet<string>;
}

/** A listener and what it serves; nothing listens until `listen`. */
export interface Listening {
  listen(): Promise<number>;
  /** The bound port once listening. */
  readonly port: number | undefined;
  /**
   * Stops accepting, lets requests in flight finish for `graceMs` (a second by default), then
   * cuts the rest; 0 cuts them at once.
   */
  close(graceMs?: number): Promise<void>;
}

export interface HttpServer extends Listening {
  /** The WebSocket transport on /graphql; `close` ends its connections. */
  readonly ws: WebSocketTransport;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{1,100}$/;

/**
 * The service's HTTP server: `/graphql` (and its WebSocket upgrade), `/export`, `/healthz`,
 * `/readyz`, `/metrics`; anything else is 404.
 */
export function createHttpServer(routes: Routes): HttpServer {
  const { config, log } = routes;
  const server = createServer(
    {
      // Slow senders are cut: the headers within HTTP_HEADERS_TIMEOUT_MS, the whole request
      // within HTTP_REQUEST_TIMEOUT_MS (node checks both every connectionsCheckingInterval).
      headersTimeout: config.httpHeadersTimeoutMs,
      requestTimeout: config.httpRequestTimeoutMs,
      keepAliveTimeout: config.httpKeepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(
        1_000,
        Math.max(50, Math.floor(config.httpHeadersTimeoutMs / 4)),
      ),
    },
    (req, res) => route(routes, req, res),
  );
  // Past the cap node drops new sockets at once; WebSocket connections count too.
  if (config.maxHttpConnections > 0) server.maxConnections = config.maxHttpConnections;
  reportDroppedConnections(server, config, log);
  const ws = attachWebSocket(server, routes.graphql, {
    path: '/graphql',
    maxOperationsPerConnection: config.maxSubscriptionsPerConnection,
    maxPayload: config.maxRequestBytes,
    maxInitBytes: config.wsMaxInitBytes,
    log: log.child({ component: 'ws' }),
    services: routes.services,
  });
  // Not a spread: it would copy the port getter's value (undefined) instead of the getter.
  return Object.assign(listening(server, config.port, config.host), { ws });
}

/** The METRICS_PORT listener: nothing but GET /metrics, on METRICS_HOST (loopback by default). */
export function createMetricsServer(
  config: Config,
  metricsRoute: MetricsRoute,
  port: number,
): Listening {
  const server = createServer(
    {
      headersTimeout: config.httpHeadersTimeoutMs,
      requestTimeout: config.httpRequestTimeoutMs,
      keepAliveTimeout: config.httpKeepAliveTimeoutMs,
    },
    (req, res) => {
      if ((req.url ?? '/').split('?')[0] === '/metrics') metricsRoute(req, res, 'metrics');
      else sendJson(res, 404, { error: 'not found; metrics are at /metrics' });
    },
  );
  return listening(server, port, config.metricsHost);
}

function listening(server: Server, port: number, host: string): Listening {
  return {
    get port() {
      return server.listening ? (server.address() as AddressInfo).port : undefined;
    },
    async listen() {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => resolve());
      });
      return (server.address() as AddressInfo).port;
    },
    close(graceMs = 1_000) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (graceMs <= 0) server.closeAllConnections();
      else setTimeout(() => server.closeAllConnections(), graceMs).unref();
      return closed;
    },
  };
}

/** Logs sockets dropped on arrival because MAX_HTTP_CONNECTIONS were open, at most every 10 s. */
function reportDroppedConnections(server: Server, config: Config, log: Logger): void {
  let dropped = 0;
  let loggedAt = 0;
  server.on('drop', () => {
    dropped++;
    if (Date.now() - loggedAt < 10_000) return;
    loggedAt = Date.now();
    log.warn(
      { dropped, max: config.maxHttpConnections },
      'connections dropped: MAX_HTTP_CONNECTIONS are open',
    );
  });
}

/** Routes one HTTP request; returns nothing, every branch answers on `res`. */
function route(routes: Routes, req: IncomingMessage, res: ServerResponse): void {
  const given = req.headers['x-request-id'];
  const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
  res.setHeader('x-request-id', requestId);
  const path = (req.url ?? '/').split('?')[0] ?? '/';
  if ((path === '/graphql' || path === '/export') && applyCors(routes.corsOrigins, req, res)) {
    return;
  }
  if (path === '/healthz') {
    sendJson(res, 200, { status: 'ok' });
  } else if (path === '/readyz') {
    void routes.readiness.check().then((r) => sendJson(res, r.ready ? 200 : 503, r));
  } else if (path === '/metrics') {
    routes.metricsRoute(req, res, 'main');
  } else if (path === '/export') {
    requestScope.run({ requestId }, () => routes.exportRoute(req, res, requestId));
  } else if (path === '/explorer' || path.startsWith('/explorer/')) {
    routes.explorerRoute(req, res, path);
  } else if (path !== '/graphql') {
    sendJson(res, 404, { error: 'not found; GraphQL is at /graphql, the explorer at /explorer' });
  } else {
    requestScope.run({ requestId }, () => void serveGraphQL(routes, req, res, requestId));
  }
}

/** /graphql: the caller first (from the headers), then the body's size, then yoga. */
async function serveGraphQL(
  routes: Routes,
  req: IncomingMessage,
  res: ServerResponse,
  requestId: string,
): Promise<void> {
  const { config } = routes;
  let gate: Gate;
  try {
    gate = await gateBeforeBody(routes.services, req);
  } catch (err) {
    // The key could not be looked up (the database is unreachable and the key unseen).
    routes.log.error({ err, requestId }, 'authentication failed');
    res.setHeader('connection', 'close');
    res.setHeader('retry-after', '1');
    sendJson(res, 503, {
      errors: [
        {
          message: 'the API key could not be checked; retry',
          extensions: { code: 'SERVICE_UNAVAILABLE', requestId },
        },
      ],
    });
    return;
  }
  if (gate.kind === 'refused') return refuse(req, res, gate.error);
  const length = req.headers['content-length'];
  if (req.headers['transfer-encoding'] && length === undefined) {
    sendJson(res, 411, { error: 'a Content-Length header is required' });
  } else if (length !== undefined && Number(length) > config.maxRequestBytes) {
    res.setHeader('connection', 'close');
    sendJson(res, 413, {
      error: `request body larger than ${config.maxRequestBytes} bytes (MAX_REQUEST_BYTES)`,
    });
  } else {
    await routes.graphql(req, res, {
      req,
      res,
      ...(gate.kind === 'caller' ? { httpCaller: gate.caller } : {}),
    });
  }
}
