import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { KeyWatcher } from './auth/key-watcher.js';
import { type Cluster, LocalCluster, RedisCluster } from './cluster/cluster.js';
import {
  type KeyRevocations,
  LocalKeyRevocations,
  RedisKeyRevocations,
} from './cluster/key-revocations.js';
import type { Config } from './config.js';
import { ApiKeyStore } from './db/api-key-store.js';
import { createDatabase, type Database } from './db/client.js';
import { Migrator } from './db/migrations.js';
import { PartitionManager } from './db/partitions.js';
import { ServiceSecretStore } from './db/service-secret-store.js';
import { TenantDirectory } from './db/tenant-directory.js';
import { TenantProvisioner } from './db/tenant-provisioner.js';
import { ChainHasher } from './domain/chain.js';
import { KeysetCursorCodec } from './domain/keyset-cursor.js';
import { AuditExporter } from './export/exporter.js';
import type { Services } from './graphql/context.js';
import { createGraphQLServer, requestScope } from './graphql/yoga.js';
import { type Gate, gateBeforeBody, refuse } from './http/auth-gate.js';
import { createExportRoute } from './http/export-route.js';
import { sendJson } from './http/json-response.js';
import { createMetricsRoute } from './http/metrics-route.js';
import { attachWebSocket, type WebSocketTransport } from './http/websocket.js';
import { AccessLog } from './ingest/access-log.js';
import { BatchWriter } from './ingest/batch-writer.js';
import type { DeadLetterStore } from './ingest/dead-letter-queue.js';
import { IngestEvents } from './ingest/events.js';
import { FileDeadLetterStore } from './ingest/file-dead-letter-store.js';
import { IngestService } from './ingest/ingest-service.js';
import { RedisDeadLetterStore } from './ingest/redis-dead-letter-store.js';
import { RetryWorker } from './ingest/retry-worker.js';
import { WriteRateLimiter } from './ingest/write-rate-limiter.js';
import { ChainAuditor } from './integrity/chain-auditor.js';
import { CheckpointService } from './integrity/checkpoints.js';
import { loadSigningKey } from './integrity/signing-key.js';
import { LegalHoldStore } from './lifecycle/legal-holds.js';
import { LifecycleLog } from './lifecycle/lifecycle-events.js';
import { MaintenanceJob } from './lifecycle/maintenance.js';
import { TenantRetention } from './lifecycle/tenant-retention.js';
import { createLogger, type Logger } from './logger.js';
import { createMetrics, type Metrics } from './metrics.js';
import { AuditEventQueries } from './query/audit-event-queries.js';
import { AuditEventReader } from './query/audit-event-reader.js';
import { TenantConnectionLimiter } from './realtime/connection-limiter.js';
import { createRealtimeBus } from './realtime/pubsub.js';
import {
  auditEventsAddedMessage,
  deadLetterMessage,
  flushCompletedMessage,
} from './realtime/topics.js';
import { createRedis, RedisKeys } from './redis/client.js';

export interface App {
  /** Migrates, then listens. Resolves with the bound port. */
  start(): Promise<{ port: number }>;
  /** Graceful stop: readiness false, refuse writes, flush, close. Idempotent. */
  stop(): Promise<void>;
  readonly services: Services;
  readonly db: Database;
  readonly log: Logger;
  /** The yoga instance, for in-process requests (`app.graphql.fetch`). */
  readonly graphql: ReturnType<typeof createGraphQLServer>;
  /** Prometheus metrics of this app (its own registry), served at /metrics. */
  readonly metrics: Metrics;
  /** The bound port of the METRICS_PORT listener, once started (undefined without one). */
  readonly metricsPort: number | undefined;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{1,100}$/;

/** Wires the service together. Nothing runs until start(). */
export function buildApp(config: Config, opts: { log?: Logger } = {}): App {
  const instanceId = config.instanceId ?? `${hostname()}-${process.pid}`;
  const log = opts.log ?? createLogger(config, { instance: instanceId });
  const db = createDatabase(config.database, log.child({ component: 'db' }));
  const migrator = new Migrator(db);
  const partitions = new PartitionManager(db, log.child({ component: 'partitions' }), {
    limits: {
      maxPerTenant: config.maxPartitionsPerTenant,
      maxNewPerCall: config.maxNewPartitionsPerCall,
    },
  });
  const tenants = new TenantProvisioner(
    db,
    migrator,
    partitions,
    log.child({ component: 'tenants' }),
    {
      partitionsAhead: config.partitionsAhead,
    },
  );
  const writer = new BatchWriter(db, partitions, log.child({ component: 'writer' }), instanceId, {
    hashing: config.chainHashing,
    hmacSecret: config.chainHmacSecret,
  });
  const integrityLog = log.child({ component: 'integrity' });
  const checkpoints = new CheckpointService(
    db,
    loadSigningKey(config.checkpointKeyFile, integrityLog),
    integrityLog,
    config.checkpointIntervalMs,
  );
  const chainAuditor = new ChainAuditor(
    db,
    new ChainHasher(config.chainHmacSecret),
    checkpoints,
    integrityLog,
    config.maxVerificationsPerTenant,
  );
  const events = new IngestEvents(log.child({ component: 'events' }));
  const realtime = createRealtimeBus(config, {
    instanceId,
    log: log.child({ component: 'realtime' }),
  });
  // Each instance publishes what it settled itself; subscribers on every instance receive it.
  events.onBatchSettled((b) => {
    realtime.publish(b.tenant, 'flushCompleted', flushCompletedMessage(b));
    const added = auditEventsAddedMessage(b);
    if (added) realtime.publish(b.tenant, 'auditEventsAdded', added);
  });
  events.onDeadLetter((e) => realtime.publish(e.tenant, 'deadLetterEvents', deadLetterMessage(e)));
  const dlqLog = log.child({ component: 'dead-letters' });
  const redisKeys = new RedisKeys(config.redisKeyPrefix);
  const dlqRedis = config.redisUrl
    ? createRedis(config.redisUrl, `auditgraph-dlq-${instanceId}`, dlqLog, { failFast: true })
    : undefined;
  // Without Redis the queue is files beside the embedded database; with it, a local spool keeps
  // what Redis could not take at shutdown until the next start re-queues it.
  const deadLetters: DeadLetterStore = dlqRedis
    ? new RedisDeadLetterStore(dlqRedis, redisKeys, instanceId, dlqLog, config.dlqLeaseMs)
    : new FileDeadLetterStore(join(config.dlqDir, 'queue'));
  const spool = dlqRedis ? new FileDeadLetterStore(join(config.dlqDir, 'spool')) : deadLetters;
  const ingest = new IngestService(
    writer,
    deadLetters,
    events,
    log.child({ component: 'ingest' }),
    {
      ...config,
      instanceId,
      deadLetterFirstRetryMs: config.dlqRetryScheduleMs[0] ?? 0,
      partitions,
      // Called only once requests flow, after `metrics` below exists.
      onCommitWait: (ms, outcome) => metrics.observeCommit(ms, outcome),
    },
    spool,
  );
  const retryWorker = new RetryWorker(
    deadLetters,
    writer,
    ingest,
    events,
    dlqLog,
    {
      pollMs: config.dlqPollMs,
      scheduleMs: config.dlqRetryScheduleMs,
      maxEvents: config.dlqMaxEvents,
      instanceId,
    },
    spool,
  );
  const metrics = createMetrics({ ingest, events, retryWorker, instanceId });
  checkpoints.onSigned = (tenant, n) => metrics.observeCheckpoints(tenant, n);
  chainAuditor.onVerified = (tenant, r) =>
    metrics.observeVerification(tenant, r.ok, r.eventsVerified);
  // Without CURSOR_SECRET the key comes from the control schema at start (created by the first
  // instance), so cursors work across instances and restarts with no configuration.
  const cursors = new KeysetCursorCodec(config.cursorSecret);
  const secrets = new ServiceSecretStore(db);
  const reader = new AuditEventReader(db, {
    catalog: partitions.catalog,
    windowPartitions: config.readWindowPartitions,
  });
  const queries = new AuditEventQueries(reader, cursors);
  const cluster: Cluster = config.redisUrl
    ? new RedisCluster(
        config.redisUrl,
        redisKeys,
        instanceId,
        ingest,
        log.child({ component: 'cluster' }),
        config.clusterHeartbeatMs,
      )
    : new LocalCluster(ingest, instanceId);
  const authLog = log.child({ component: 'auth' });
  const apiKeys = new ApiKeyStore(db, authLog, {
    cacheMs: config.apiKeyCacheMs,
    touchIntervalMs: config.apiKeyTouchIntervalMs,
  });
  // A revocation is applied by every instance before revokeApiKey returns: each drops the key
  // from its cache and re-checks what the key holds open.
  const applyRevocation = (keyId: string) => {
    apiKeys.invalidate(keyId);
    services.keyWatcher.recheckNow();
  };
  const revocations: KeyRevocations = config.redisUrl
    ? new RedisKeyRevocations(
        config.redisUrl,
        redisKeys,
        instanceId,
        authLog,
        applyRevocation,
        () => apiKeys.invalidateAll(),
      )
    : new LocalKeyRevocations(applyRevocation);
  apiKeys.announceRevocation = (keyId) => revocations.announce(keyId);
  apiKeys.trustCache = () => revocations.listening;
  const lifecycleLogger = log.child({ component: 'lifecycle' });
  const legalHolds = new LegalHoldStore(db, lifecycleLogger);
  const retention = new TenantRetention(db, lifecycleLogger, {
    defaultDays: config.retentionDays,
    maxDays: config.maxRetentionDays,
  });
  const maintenance = new MaintenanceJob({
    db,
    partitions,
    checkpoints,
    chain: chainAuditor,
    holds: legalHolds,
    retention,
    stats: ingest,
    log: log.child({ component: 'maintenance' }),
    instanceId,
    intervalMs: config.maintenanceIntervalMs,
    partitionsAhead: config.partitionsAhead,
  });
  maintenance.onReport = (r) => metrics.observeMaintenance(r);
  const services: Services = {
    apiKeys,
    tenantDirectory: new TenantDirectory(db, config.readWindowPartitions),
    accessLog: new AccessLog(ingest, tenants, log.child({ component: 'access' }), config),
    rateLimiter: new WriteRateLimiter(
      {
        eventsPerSecond: config.rateLimitEventsPerSecond,
        burstEvents: config.rateLimitBurstEvents,
        keys: redisKeys,
      },
      dlqRedis,
      log.child({ component: 'rate-limit' }),
    ),
    connections: new TenantConnectionLimiter(config.maxConnectionsPerTenant),
    subscriptions: new TenantConnectionLimiter(config.maxSubscriptionsPerTenant),
    keyWatcher: new KeyWatcher(apiKeys, authLog, config.authRecheckMs),
    cluster,
    config,
    ingest,
    events,
    queries,
    tenants,
    instanceId,
    deadLetters,
    retryWorker,
    realtime,
    checkpoints,
    chainAuditor,
    legalHolds,
    retention,
    maintenance,
    lifecycleLog: new LifecycleLog(ingest, lifecycleLogger),
  };
  const graphql = createGraphQLServer(services, log);
  const exportRoute = createExportRoute(
    services,
    new AuditExporter(reader, checkpoints, { hmac: config.chainHmacSecret !== undefined }),
    log.child({ component: 'export' }),
  );

  let server: Server | undefined;
  let metricsServer: Server | undefined;
  const metricsRoute = createMetricsRoute(config, metrics, log);
  let ws: WebSocketTransport | undefined;
  /** Sockets dropped on arrival because MAX_HTTP_CONNECTIONS were open, and when last logged. */
  let droppedConnections = 0;
  let droppedLoggedAt = 0;
  let stopping: Promise<void> | undefined;

  /** Dead letters are only as durable as Redis: say so at start-up when it keeps nothing on disk. */
  let redisPersistence = dlqRedis ? 'unknown' : 'local files';
  async function reportRedisPersistence(): Promise<void> {
    if (!dlqRedis) return;
    try {
      const reply = (await dlqRedis.config('GET', 'appendonly')) as string[];
      redisPersistence = reply[1] === 'yes' ? 'aof' : 'none';
    } catch {
      redisPersistence = 'unknown (CONFIG GET refused)';
    }
    if (redisPersistence !== 'aof') {
      log.warn(
        { redisPersistence },
        'Redis append-only file is off: dead letters do not survive a Redis restart',
      );
    }
  }

  async function readiness() {
    const reasons: string[] = [];
    if (ingest.isStopping) reasons.push('shutting down');
    if (!retryWorker.lastHealthy)
      reasons.push(`dead-letter queue (${deadLetters.kind}) unavailable`);
    if (ingest.isDeadLetterQueueFull)
      reasons.push(`dead-letter queue full (DLQ_MAX_EVENTS=${config.dlqMaxEvents})`);
    try {
      await withTimeout(db.query('select 1'), 2_000, 'database did not answer within 2000 ms');
    } catch (err) {
      reasons.push(`database unavailable: ${(err as Error).message}`);
    }
    return {
      ready: reasons.length === 0,
      reasons,
      deadLetters: {
        store: deadLetters.kind,
        persistence: redisPersistence,
        ...retryWorker.lastDepth,
      },
    };
  }

  /** Routes one HTTP request; returns nothing, every branch answers on `res`. */
  function handle(req: IncomingMessage, res: ServerResponse): void {
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    res.setHeader('x-request-id', requestId);
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      sendJson(res, 200, { status: 'ok' });
    } else if (path === '/readyz') {
      void readiness().then((r) => sendJson(res, r.ready ? 200 : 503, r));
    } else if (path === '/metrics') {
      metricsRoute(req, res, 'main');
    } else if (path === '/export') {
      requestScope.run({ requestId }, () => exportRoute(req, res, requestId));
    } else if (path !== '/graphql') {
      sendJson(res, 404, { error: 'not found; GraphQL is at /graphql' });
    } else {
      requestScope.run({ requestId }, () => void serveGraphQL(req, res, requestId));
    }
  }

  /** /graphql: the caller first (from the headers), then the body's size, then yoga. */
  async function serveGraphQL(req: IncomingMessage, res: ServerResponse, requestId: string) {
    let gate: Gate;
    try {
      gate = await gateBeforeBody(services, req);
    } catch (err) {
      // The key could not be looked up (the database is unreachable and the key unseen).
      log.error({ err, requestId }, 'authentication failed');
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
      await graphql(req, res, {
        req,
        res,
        ...(gate.kind === 'caller' ? { httpCaller: gate.caller } : {}),
      });
    }
  }

  return {
    services,
    db,
    log,
    graphql,
    metrics,
    get metricsPort() {
      return metricsServer ? (metricsServer.address() as AddressInfo).port : undefined;
    },
    async start() {
      const controlRan = await migrator.migrateControl();
      if (controlRan) log.info({ migrations: controlRan }, 'control schema migrated');
      if (!config.cursorSecret) cursors.useSecret(await secrets.getOrCreate('cursor'));
      const known = await tenants.migrateAll();
      log.info(
        { tenants: known, database: db.kind, authMode: config.authMode },
        'tenants migrated',
      );
      await deadLetters.start();
      await spool.start();
      await reportRedisPersistence();
      await retryWorker.start();
      if (config.authMode === 'dev') {
        log.warn(
          'AUTH_MODE=dev: NOTHING IS AUTHENTICATED — the tenant is taken from the x-tenant-id header ' +
            'and every caller has every scope. Never expose this instance to untrusted clients.',
        );
      } else {
        log.info(
          'AUTH_MODE=keys: every request needs "Authorization: Bearer <key>"; create keys with `npm run keys`',
        );
      }
      await revocations.start();
      await realtime.start();
      await cluster.start();
      checkpoints.start();
      maintenance.start();
      server = createServer(
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
        handle,
      );
      // Past the cap node drops new sockets at once; WebSocket connections count too.
      if (config.maxHttpConnections > 0) server.maxConnections = config.maxHttpConnections;
      server.on('drop', () => {
        droppedConnections++;
        if (Date.now() - droppedLoggedAt < 10_000) return;
        droppedLoggedAt = Date.now();
        log.warn(
          { dropped: droppedConnections, max: config.maxHttpConnections },
          'connections dropped: MAX_HTTP_CONNECTIONS are open',
        );
      });
      ws = attachWebSocket(server, graphql, {
        path: '/graphql',
        maxOperationsPerConnection: config.maxSubscriptionsPerConnection,
        maxPayload: config.maxRequestBytes,
        maxInitBytes: config.wsMaxInitBytes,
        log: log.child({ component: 'ws' }),
        services,
      });
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(config.port, config.host, () => resolve());
      });
      const port = (server.address() as AddressInfo).port;
      if (config.metricsPort !== undefined) {
        // Its own listener: nothing but GET /metrics, on METRICS_HOST (loopback by default).
        metricsServer = createServer(
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
        await new Promise<void>((resolve, reject) => {
          metricsServer!.once('error', reject);
          metricsServer!.listen(config.metricsPort, config.metricsHost, () => resolve());
        });
        log.info(
          { port: (metricsServer.address() as AddressInfo).port, host: config.metricsHost },
          'metrics listening',
        );
      }
      log.info(
        { port, graphiql: config.graphiql ? `http://localhost:${port}/graphql` : false },
        'listening',
      );
      return { port };
    },
    stop() {
      stopping ??= (async () => {
        // One deadline for the whole stop: writing the buffers gets most of it; every later step
        // gets what is left (at least a moment), and a step that overruns is logged and skipped,
        // so a Redis that answers nothing cannot hold the process forever.
        const deadline = Date.now() + config.shutdownTimeoutMs;
        const step = async (name: string, work: () => Promise<unknown>) => {
          log.info(`stopping: ${name}`);
          const ms = Math.max(250, deadline - Date.now());
          await withTimeout(work(), ms, `${name} did not finish within ${ms} ms`).catch(
            (err: Error) => log.error({ err: err.message }, `stopping: ${name} failed; going on`),
          );
        };
        // No new maintenance run from here; one in progress ends after its current month.
        const maintenanceStopped = maintenance.stop();
        log.info('stopping: refusing new writes, writing buffers');
        const left = await ingest.stop(Math.floor(config.shutdownTimeoutMs * 0.85));
        await step('maintenance', () => maintenanceStopped);
        await step('retry worker', () => retryWorker.stop());
        // The last heads this instance moved are signed before it goes.
        await step('checkpoints', async () => {
          await checkpoints.stop();
          if (config.checkpointIntervalMs > 0) await checkpoints.checkpointAll();
        });
        await step('cluster membership', () => cluster.stop());
        await step('revocation channel', () => revocations.stop());
        // After the last batch settled: deliver its messages, end every subscription, then close
        // the WebSocket connections (they would hold the HTTP server open).
        await step('subscriptions', async () => {
          await realtime.stop();
          await ws?.close();
        });
        services.keyWatcher.stop();
        if (metricsServer) {
          const srv = metricsServer;
          await step('metrics listener', () => {
            const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
            srv.closeAllConnections();
            return closed;
          });
        }
        if (server) {
          const srv = server;
          await step('HTTP server', () => {
            const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
            srv.closeIdleConnections();
            setTimeout(() => srv.closeAllConnections(), 1_000).unref();
            return closed;
          });
        }
        await step('dead-letter queue', async () => {
          await deadLetters.stop();
          await spool.stop();
          if (dlqRedis) await dlqRedis.quit().catch(() => dlqRedis.disconnect());
        });
        dlqRedis?.disconnect();
        await step('database', () => db.close());
        log.info({ pendingLost: left }, 'stopped');
      })();
      return stopping;
    },
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]);
}
