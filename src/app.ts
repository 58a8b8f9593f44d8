import { hostname } from 'node:os';
import type { Config } from './config.js';
import { type Database, databaseRefusal } from './db/client.js';
import type { Services } from './graphql/context.js';
import { createGraphQLServer } from './graphql/yoga.js';
import { createExplorerRoute } from './http/explorer-route.js';
import { createExportRoute } from './http/export-route.js';
import { createMetricsRoute } from './http/metrics-route.js';
import { Readiness } from './http/readiness.js';
import {
  createHttpServer,
  createMetricsServer,
  type HttpServer,
  type Listening,
} from './http/server.js';
import { createLogger, type Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import { type Step, startSteps, stopSteps } from './steps.js';
import { type ServiceGraph, wireService } from './wiring.js';

export interface App {
  /** Migrates, then listens. Resolves with the bound port. */
  start(): Promise<{ port: number }>;
  /** Graceful stop: readiness false, refuse writes, flush, close. Idempotent. */
  stop(): Promise<void>;
  readonly services: Services;
  /** Every part of the service as wiring.ts built it (tests reach the parts resolvers don't). */
  readonly graph: ServiceGraph;
  readonly db: Database;
  readonly log: Logger;
  /** The yoga instance, for in-process requests (`app.graphql.fetch`). */
  readonly graphql: ReturnType<typeof createGraphQLServer>;
  /** Prometheus metrics of this app (its own registry), served at /metrics. */
  readonly metrics: Metrics;
  /** The bound port of the METRICS_PORT listener, once started (undefined without one). */
  readonly metricsPort: number | undefined;
}

/** Builds the service (wiring.ts) and its doors (http/); nothing runs until start(). */
export function buildApp(config: Config, opts: { log?: Logger } = {}): App {
  const instanceId = config.instanceId ?? `${hostname()}-${process.pid}`;
  const log = opts.log ?? createLogger(config, { instance: instanceId });
  const graph = wireService(config, log, instanceId);
  const { services } = graph;
  const graphql = createGraphQLServer(services, log, graph.metrics);
  const metricsRoute = createMetricsRoute(config, graph.metrics, log);
  const readiness = new Readiness({ ...graph, log });
  const http = createHttpServer({
    config,
    log,
    services,
    graphql,
    exportRoute: createExportRoute(services, graph.exporter, log.child({ component: 'export' })),
    explorerRoute: createExplorerRoute(config, log.child({ component: 'explorer' })),
    readiness,
    metricsRoute,
    corsOrigins: new Set(config.corsOrigins),
  });
  const metricsServer =
    config.metricsPort === undefined
      ? undefined
      : createMetricsServer(config, metricsRoute, config.metricsPort);
  const outcome = { pendingLost: 0 };
  const steps = lifecycleSteps(graph, { readiness, http, metricsServer }, outcome);
  let stopping: Promise<void> | undefined;

  return {
    services,
    graph,
    db: graph.db,
    log,
    graphql,
    metrics: graph.metrics,
    get metricsPort() {
      return metricsServer?.port;
    },
    async start() {
      await startSteps(steps, log);
      const port = http.port!;
      log.info(
        { port, graphiql: config.graphiql ? `http://localhost:${port}/graphql` : false },
        'listening',
      );
      return { port };
    },
    stop() {
      stopping ??= stopSteps(steps, Date.now() + config.shutdownTimeoutMs, log).then(() =>
        log.info(outcome, 'stopped'),
      );
      return stopping;
    },
  };
}

/**
 * Start and stop, as one list: started top to bottom, stopped bottom to top. Stopping therefore
 * first refuses new writes and writes the buffers (while the HTTP server still answers, so callers
 * get SHUTTING_DOWN and /readyz 503 rather than a refused connection), then signs the last chain
 * heads, leaves the cluster, ends the subscriptions, and closes the listeners, the dead-letter
 * queue and the database last.
 */
function lifecycleSteps(
  g: ServiceGraph,
  doors: { readiness: Readiness; http: HttpServer; metricsServer: Listening | undefined },
  outcome: { pendingLost: number },
): Step[] {
  const { config, log } = g;
  const { http, metricsServer } = doors;
  return [
    {
      name: 'database',
      start: async () => {
        // The first statement: a database that cannot be used at all is refused in one line.
        const controlRan = await g.migrator.migrateControl().catch((err: unknown) => {
          throw databaseRefusal(err, config.database) ?? err;
        });
        if (controlRan) log.info({ migrations: controlRan }, 'control schema migrated');
        const cursorKey = config.cursorSecret ?? (await g.secrets.getOrCreate('cursor'));
        if (!config.cursorSecret) g.cursors.useSecret(cursorKey);
        // What every instance must hold alike, before anything is written with it.
        await g.sharedSettings.check(config.chainHmacSecret, cursorKey, !!config.cursorSecret);
        const { key } = g.checkpoints;
        if ((await g.checkpoints.keyring.adopt(key)) === 'registered') {
          log.info({ keyId: key.keyId }, "checkpoint key registered as the deployment's");
          if (key.createdNow) {
            log.warn(
              { file: config.checkpointKeyFile },
              'created a new checkpoint signing key: back it up, and give every instance the same file',
            );
          }
        }
        const known = await g.tenants.migrateAll();
        log.info(
          { tenants: known, database: g.db.kind, authMode: config.authMode },
          'tenants migrated',
        );
      },
      stop: () => g.db.close(),
    },
    {
      name: 'dead-letter queue',
      start: async () => {
        await g.deadLetters.start();
        await g.spool.start();
        await doors.readiness.reportRedisPersistence();
      },
      stop: async () => {
        try {
          await g.deadLetters.stop();
          await g.spool.stop();
        } finally {
          if (g.redis) await g.redis.quit().catch(() => g.redis?.disconnect());
          g.redis?.disconnect();
        }
      },
    },
    { name: 'HTTP server', stop: () => http.close() },
    ...(metricsServer ? [metricsListenerStep(metricsServer)] : []),
    {
      // After the last batch settled: deliver its messages, end every subscription, then close
      // the WebSocket connections (they would hold the HTTP server open).
      name: 'subscriptions',
      start: () => g.realtime.start(),
      stop: async () => {
        try {
          await g.realtime.stop();
          await http.ws.close();
        } finally {
          g.keyWatcher.stop();
        }
      },
    },
    {
      name: 'revocation channel',
      start: () => g.revocations.start(),
      stop: () => g.revocations.stop(),
    },
    { name: 'cluster membership', start: () => g.cluster.start(), stop: () => g.cluster.stop() },
    {
      // The last heads this instance moved are signed before it goes.
      name: 'checkpoints',
      start: () => g.checkpoints.start(),
      stop: async () => {
        await g.checkpoints.stop();
        if (config.checkpointIntervalMs > 0) await g.checkpoints.checkpointAll();
      },
    },
    { name: 'retry worker', start: () => g.retryWorker.start(), stop: () => g.retryWorker.stop() },
    maintenanceStep(g),
    journalStep(g),
    {
      name: 'refusing new writes, writing buffers',
      // It stops at 85 % of SHUTDOWN_TIMEOUT_MS on its own, then puts every batch still held
      // aside (dead-letter queue, else the spool) and counts what it could not: cutting it
      // short would lose those batches without that count.
      ownDeadline: true,
      stop: async () => {
        outcome.pendingLost = await g.ingest.stop(Math.floor(config.shutdownTimeoutMs * 0.85));
      },
    },
    {
      name: 'listening',
      start: async () => {
        announceAuthMode(config, log);
        await http.listen();
        // The metrics port opens once the service answers, as its last step of start-up.
        if (metricsServer) {
          const port = await metricsServer.listen();
          log.info({ port, host: config.metricsHost }, 'metrics listening');
        }
      },
    },
  ];
}

/** No new maintenance run once stopping begins; one in progress ends after its current month. */
function maintenanceStep(g: ServiceGraph): Step {
  let stopped: Promise<void> | undefined;
  return {
    name: 'maintenance',
    start: () => g.maintenance.start(),
    quiesce: () => {
      stopped = g.maintenance.stop();
    },
    stop: () => stopped ?? g.maintenance.stop(),
  };
}

/**
 * The write-ahead journal: opened once the writer and the heartbeat run, then what it holds that
 * no live process will write is taken back — this instance's leftovers now, and (with Redis)
 * the journals of instances silent for JOURNAL_LEASE_MS, looked for every quarter lease. It is
 * closed after the buffers are written, so the releases of their entries are written too.
 */
function journalStep(g: ServiceGraph): Step {
  const journal = g.ingest.journal;
  let timer: NodeJS.Timeout | undefined;
  const recover = async () => {
    try {
      await g.ingest.recoverJournal();
    } catch (err) {
      g.log.warn({ err }, 'journal recovery failed; tried again');
    }
  };
  return {
    name: 'journal',
    start: async () => {
      if (!journal) return;
      await journal.start();
      await g.ingest.recoverJournal();
      if (journal.kind === 'redis') {
        timer = setInterval(() => void recover(), Math.max(250, g.config.journalLeaseMs / 4));
        timer.unref();
      }
    },
    quiesce: () => clearInterval(timer),
    stop: async () => {
      clearInterval(timer);
      await journal?.stop();
    },
  };
}

/** Closes the metrics port with the HTTP server; a scrape in flight is cut at once. */
function metricsListenerStep(server: Listening): Step {
  return { name: 'metrics listener', stop: () => server.close(0) };
}

function announceAuthMode(config: Config, log: Logger): void {
  if (config.authMode === 'dev') {
    log.warn(
      'AUTH_MODE=dev: NOTHING IS AUTHENTICATED — the tenant is taken from the x-tenant-id header ' +
        'and every caller has every scope. Never expose this instance to untrusted clients.',
    );
  } else if (config.authMode === 'keys') {
    log.info(
      'AUTH_MODE=keys: every request needs "Authorization: Bearer <key>"; create keys with `npm run keys`',
    );
  } else {
    log.info(
      { issuer: config.jwt?.issuer, audience: config.jwt?.audience, keys: config.jwt?.jwksUrl },
      `AUTH_MODE=${config.authMode}: every request needs "Authorization: Bearer <token>"` +
        (config.authMode === 'keys+jwt' ? ' (a token, or an API key)' : ''),
    );
  }
}
