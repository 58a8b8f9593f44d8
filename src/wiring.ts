import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { KeyWatcher } from './auth/key-watcher.js';
import { TokenVerifier } from './auth/tokens.js';
import { type Cluster, LocalCluster, RedisCluster } from './cluster/cluster.js';
import {
  type KeyRevocations,
  LocalKeyRevocations,
  RedisKeyRevocations,
} from './cluster/key-revocations.js';
import { SharedSettings } from './cluster/shared-settings.js';
import type { Config } from './config.js';
import { ApiKeyStore, type ApiKeyStoreOptions } from './db/api-key-store.js';
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
import { AccessLog } from './ingest/access-log.js';
import { BatchWriter } from './ingest/batch-writer.js';
import type { DeadLetterStore } from './ingest/dead-letter-queue.js';
import { IngestEvents } from './ingest/events.js';
import { FileDeadLetterStore } from './ingest/file-dead-letter-store.js';
import { IngestService } from './ingest/ingest-service.js';
import { MemoryBooks, RedisBooks } from './ingest/journal/books.js';
import { FileJournal } from './ingest/journal/file-journal.js';
import type { Journal } from './ingest/journal/journal.js';
import { RedisJournal } from './ingest/journal/redis-journal.js';
import { RedisDeadLetterStore } from './ingest/redis-dead-letter-store.js';
import { RetryWorker } from './ingest/retry-worker.js';
import { WriteRateLimiter } from './ingest/write-rate-limiter.js';
import { ChainAuditor } from './integrity/chain-auditor.js';
import { CheckpointService } from './integrity/checkpoints.js';
import { CheckpointKeyring } from './integrity/keyring.js';
import { loadSigningKey } from './integrity/signing-key.js';
import { LegalHoldStore } from './lifecycle/legal-holds.js';
import { LifecycleLog } from './lifecycle/lifecycle-events.js';
import { MaintenanceJob } from './lifecycle/maintenance.js';
import { TenantRetention } from './lifecycle/tenant-retention.js';
import type { Logger } from './logger.js';
import { createMetrics, type Metrics } from './metrics.js';
import { AuditEventQueries } from './query/audit-event-queries.js';
import { AuditEventReader } from './query/audit-event-reader.js';
import { TenantConnectionLimiter } from './realtime/connection-limiter.js';
import { createRealtimeBus, type RealtimeBus } from './realtime/pubsub.js';
import {
  auditEventsAddedMessage,
  deadLetterMessage,
  flushCompletedMessage,
} from './realtime/topics.js';
import { createRedis, RedisKeys } from './redis/client.js';
import { DeadLetterAdmin } from './usecases/dead-letter-admin.js';
import { EventWaits } from './usecases/event-waits.js';
import { KeyAdministration } from './usecases/key-administration.js';
import { LegalHolds } from './usecases/legal-holds.js';
import { TenantProvisioning } from './usecases/tenant-provisioning.js';
import type { CliUseCases, UseCases } from './usecases/use-cases.js';
import { WriteAdmission } from './usecases/write-admission.js';

/*
 * The object graph, built once. Each part receives what it uses through its constructor, in an
 * order where everything it needs already exists; a part that reports what happens is given its
 * listener there too (the one exception, the revocation channel and the key cache, which need
 * each other, is spelled out in wireKeys). Nothing here starts a timer, opens a socket or
 * queries the database: app.ts starts the parts, in order, and stops them in reverse.
 */

/** What the service and the command line both stand on: the database and its stores. */
export interface Storage {
  db: Database;
  migrator: Migrator;
  partitions: PartitionManager;
  tenants: TenantProvisioner;
  directory: TenantDirectory;
  /** Writes batches of events into a tenant's partitions, with their hash chain. */
  writer: BatchWriter;
}

export function wireStorage(config: Config, log: Logger, instanceId: string): Storage {
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
    { partitionsAhead: config.partitionsAhead },
  );
  const writer = new BatchWriter(db, partitions, log.child({ component: 'writer' }), instanceId, {
    hashing: config.chainHashing,
    hmacSecret: config.chainHmacSecret,
  });
  const directory = new TenantDirectory(db, config.readWindowPartitions);
  return { db, migrator, partitions, tenants, directory, writer };
}

/** The API key store, as the command line uses it: no cache, revocations announced through Redis. */
export function wireCliKeys(config: Config, log: Logger, db: Database): ApiKeyStore {
  const redisUrl = config.redisUrl;
  const options: ApiKeyStoreOptions = { cacheMs: 0, touchIntervalMs: 0 };
  // With Redis, running instances drop a revoked key from their caches before the command
  // returns (without it, a lone instance reads keys through its own short cache).
  if (redisUrl) {
    options.announceRevocation = async (keyId) => {
      const announcer = new RedisKeyRevocations(
        redisUrl,
        new RedisKeys(config.redisKeyPrefix),
        `cli-${hostname()}-${process.pid}`,
        log,
        undefined,
      );
      await announcer.start();
      try {
        await announcer.announce(keyId);
      } finally {
        await announcer.stop();
      }
    };
  }
  return new ApiKeyStore(db, log, options);
}

/** The use cases the command line shares with the API. */
export function wireCliUseCases(storage: Storage, apiKeys: ApiKeyStore): CliUseCases {
  return {
    keys: new KeyAdministration(apiKeys, storage.directory),
    provisioning: new TenantProvisioning(storage.tenants, storage.directory),
  };
}

/** The write path: buffers, dead letters and their replay, and who hears of settled batches. */
export interface WritePath {
  events: IngestEvents;
  ingest: IngestService;
  deadLetters: DeadLetterStore;
  /** Where dead letters wait when their queue cannot take them at shutdown (or the queue). */
  spool: DeadLetterStore;
  retryWorker: RetryWorker;
  realtime: RealtimeBus;
  /** The dead-letter queue's and the rate limiter's Redis client (none without REDIS_URL). */
  redis: Redis | undefined;
}

function wireWritePath(
  config: Config,
  log: Logger,
  instanceId: string,
  storage: Storage,
  keys: RedisKeys,
): WritePath {
  const events = new IngestEvents(log.child({ component: 'events' }));
  const realtime = createRealtimeBus(config, {
    instanceId,
    log: log.child({ component: 'realtime' }),
  });
  // Each instance publishes what it settled itself; subscribers on every instance receive it.
  // Each message is built only if someone subscribes to it somewhere (see RealtimeBus.publish).
  events.onBatchSettled((b) => {
    realtime.publish(b.tenant, 'flushCompleted', () => flushCompletedMessage(b));
    realtime.publish(b.tenant, 'auditEventsAdded', () => auditEventsAddedMessage(b));
  });
  events.onDeadLetter((e) =>
    realtime.publish(e.tenant, 'deadLetterEvents', () => deadLetterMessage(e)),
  );
  const dlqLog = log.child({ component: 'dead-letters' });
  const redis = config.redisUrl
    ? createRedis(config.redisUrl, `auditgraph-dlq-${instanceId}`, dlqLog, { failFast: true })
    : undefined;
  // Without Redis the queue is files beside the embedded database; with it, a local spool keeps
  // what Redis could not take at shutdown until the next start re-queues it.
  const deadLetters: DeadLetterStore = redis
    ? new RedisDeadLetterStore(redis, keys, instanceId, dlqLog, config.dlqLeaseMs)
    : new FileDeadLetterStore(join(config.dlqDir, 'queue'));
  const spool = redis ? new FileDeadLetterStore(join(config.dlqDir, 'spool')) : deadLetters;
  const journalLog = log.child({ component: 'journal' });
  // With Redis the journal is where a live instance can take over a dead one's; without it, a
  // local file that this instance's next start replays.
  // The books (the identity's terms over every process) live with the journal: in Redis, or in
  // the journal's file; JOURNAL=off without Redis keeps them in memory (counts since start).
  const redisBooks = redis ? new RedisBooks(redis, keys) : undefined;
  const journal: Journal | undefined = !config.journal
    ? undefined
    : redis && redisBooks
      ? new RedisJournal(
          redis,
          keys,
          redisBooks,
          instanceId,
          journalLog,
          config.journalLeaseMs,
          config.journalLingerMs,
        )
      : new FileJournal(config.journalDir, journalLog, config.journalLingerMs);
  const ingest = new IngestService(
    storage.writer,
    deadLetters,
    events,
    log.child({ component: 'ingest' }),
    {
      ...config,
      instanceId,
      deadLetterFirstRetryMs: config.dlqRetryScheduleMs[0] ?? 0,
      partitions: storage.partitions,
      onCommitWait: (ms, outcome) => events.commitWaited(ms, outcome),
    },
    spool,
    journal,
    journal ?? redisBooks ?? new MemoryBooks(),
  );
  const retryWorker = new RetryWorker(
    deadLetters,
    storage.writer,
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
  return { events, ingest, deadLetters, spool, retryWorker, realtime, redis };
}

/** API keys, the revocation channel between instances, and the watcher of what keys hold open. */
interface KeyParts {
  apiKeys: ApiKeyStore;
  revocations: KeyRevocations;
  keyWatcher: KeyWatcher;
}

function wireKeys(
  config: Config,
  log: Logger,
  instanceId: string,
  db: Database,
  keys: RedisKeys,
): KeyParts {
  const authLog = log.child({ component: 'auth' });
  // The key cache and the revocation channel need each other: a revocation heard from another
  // instance drops the key from the cache (and re-checks what it holds open), and the cache
  // asks the channel whether it could hear one. The channel is built first; it reaches the
  // cache and the watcher through `apply`, which it calls only once started.
  const apply = (keyId: string) => {
    apiKeys.invalidate(keyId);
    keyWatcher.recheckNow();
  };
  const revocations: KeyRevocations = config.redisUrl
    ? new RedisKeyRevocations(config.redisUrl, keys, instanceId, authLog, apply, () =>
        apiKeys.invalidateAll(),
      )
    : new LocalKeyRevocations(apply);
  const apiKeys = new ApiKeyStore(db, authLog, {
    cacheMs: config.apiKeyCacheMs,
    touchIntervalMs: config.apiKeyTouchIntervalMs,
    announceRevocation: (keyId) => revocations.announce(keyId),
    trustCache: () => revocations.listening,
  });
  const keyWatcher = new KeyWatcher(apiKeys, authLog, config.authRecheckMs);
  return { apiKeys, revocations, keyWatcher };
}

/** Checkpoints, chain verification, retention and legal holds. */
interface IntegrityParts {
  checkpoints: CheckpointService;
  chainAuditor: ChainAuditor;
  legalHolds: LegalHoldStore;
  retention: TenantRetention;
  maintenance: MaintenanceJob;
  lifecycleLog: LifecycleLog;
}

function wireIntegrity(
  config: Config,
  log: Logger,
  instanceId: string,
  storage: Storage,
  ingest: IngestService,
  metrics: Metrics,
): IntegrityParts {
  const { db } = storage;
  const integrityLog = log.child({ component: 'integrity' });
  const checkpoints = new CheckpointService(
    db,
    loadSigningKey(config.checkpointKeyFile),
    new CheckpointKeyring(db, config.checkpointKeyFile),
    integrityLog,
    config.checkpointIntervalMs,
    (tenant, n) => metrics.observeCheckpoints(tenant, n),
  );
  const chainAuditor = new ChainAuditor(
    db,
    new ChainHasher(config.chainHmacSecret),
    checkpoints,
    integrityLog,
    config.maxVerificationsPerTenant,
    (tenant, r) => metrics.observeVerification(tenant, r.ok, r.eventsVerified),
  );
  const lifecycleLogger = log.child({ component: 'lifecycle' });
  const legalHolds = new LegalHoldStore(db, lifecycleLogger);
  const retention = new TenantRetention(db, lifecycleLogger, {
    defaultDays: config.retentionDays,
    maxDays: config.maxRetentionDays,
  });
  const maintenance = new MaintenanceJob({
    db,
    partitions: storage.partitions,
    checkpoints,
    chain: chainAuditor,
    holds: legalHolds,
    retention,
    stats: ingest,
    log: log.child({ component: 'maintenance' }),
    instanceId,
    intervalMs: config.maintenanceIntervalMs,
    partitionsAhead: config.partitionsAhead,
    onReport: (r) => metrics.observeMaintenance(r),
  });
  const lifecycleLog = new LifecycleLog(ingest, lifecycleLogger);
  return { checkpoints, chainAuditor, legalHolds, retention, maintenance, lifecycleLog };
}

/** Everything the running service is made of; app.ts starts and stops it. */
export interface ServiceGraph extends Storage, WritePath, KeyParts, IntegrityParts {
  config: Config;
  log: Logger;
  instanceId: string;
  cursors: KeysetCursorCodec;
  /** Service-wide secrets kept in the control schema (the cursor key without CURSOR_SECRET). */
  secrets: ServiceSecretStore;
  /** What every instance must hold alike, checked at start. */
  sharedSettings: SharedSettings;
  cluster: Cluster;
  metrics: Metrics;
  exporter: AuditExporter;
  /** What resolvers and the HTTP doors use. */
  services: Services;
}

/** The use cases, each given the parts it stands on (see src/usecases/). */
function wireUseCases(
  config: Config,
  log: Logger,
  instanceId: string,
  storage: Storage,
  write: WritePath,
  integrity: IntegrityParts,
  keys: { apiKeys: ApiKeyStore },
  redisKeys: RedisKeys,
  reader: AuditEventReader,
): UseCases {
  const rateLimiter = new WriteRateLimiter(
    {
      eventsPerSecond: config.rateLimitEventsPerSecond,
      burstEvents: config.rateLimitBurstEvents,
      keys: redisKeys,
    },
    write.redis,
    log.child({ component: 'rate-limit' }),
  );
  return {
    ...wireCliUseCases(storage, keys.apiKeys),
    admission: new WriteAdmission(
      write.ingest,
      integrity.retention,
      storage.tenants,
      rateLimiter,
      config,
    ),
    legalHolds: new LegalHolds(
      integrity.legalHolds,
      storage.tenants,
      write.ingest,
      integrity.lifecycleLog,
    ),
    waits: new EventWaits(write.realtime, reader, write.deadLetters),
    deadLetters: new DeadLetterAdmin(
      write.deadLetters,
      write.retryWorker,
      write.ingest,
      write.events,
      instanceId,
      log.child({ component: 'dead-letters' }),
    ),
  };
}

export function wireService(config: Config, log: Logger, instanceId: string): ServiceGraph {
  const storage = wireStorage(config, log, instanceId);
  const redisKeys = new RedisKeys(config.redisKeyPrefix);
  const write = wireWritePath(config, log, instanceId, storage, redisKeys);
  const metrics = createMetrics({ ...write, instanceId });
  const integrity = wireIntegrity(config, log, instanceId, storage, write.ingest, metrics);
  const keys = wireKeys(config, log, instanceId, storage.db, redisKeys);
  // Without CURSOR_SECRET the key comes from the control schema at start (created by the first
  // instance), so cursors work across instances and restarts with no configuration.
  const cursors = new KeysetCursorCodec(config.cursorSecret);
  const reader = new AuditEventReader(storage.db, {
    catalog: storage.partitions.catalog,
    windowPartitions: config.readWindowPartitions,
  });
  const cluster: Cluster = config.redisUrl
    ? new RedisCluster(
        config.redisUrl,
        redisKeys,
        instanceId,
        write.ingest,
        log.child({ component: 'cluster' }),
        config.clusterHeartbeatMs,
      )
    : new LocalCluster(write.ingest, instanceId);
  const useCases = wireUseCases(
    config,
    log,
    instanceId,
    storage,
    write,
    integrity,
    keys,
    redisKeys,
    reader,
  );
  const services: Services = {
    checkpoints: integrity.checkpoints,
    chainAuditor: integrity.chainAuditor,
    retention: integrity.retention,
    maintenance: integrity.maintenance,
    lifecycleLog: integrity.lifecycleLog,
    useCases,
    apiKeys: keys.apiKeys,
    keyWatcher: keys.keyWatcher,
    tokens: config.jwt ? new TokenVerifier(config.jwt) : null,
    tenantDirectory: storage.directory,
    tenants: storage.tenants,
    accessLog: new AccessLog(
      write.ingest,
      storage.tenants,
      log.child({ component: 'access' }),
      config,
    ),
    connections: new TenantConnectionLimiter(config.maxConnectionsPerTenant),
    subscriptions: new TenantConnectionLimiter(config.maxSubscriptionsPerTenant),
    cluster,
    config,
    ingest: write.ingest,
    queries: new AuditEventQueries(reader, cursors),
    instanceId,
    deadLetters: write.deadLetters,
    realtime: write.realtime,
  };
  const exporter = new AuditExporter(reader, integrity.checkpoints, {
    hmac: config.chainHmacSecret !== undefined,
  });
  return {
    ...storage,
    ...write,
    ...keys,
    ...integrity,
    config,
    log,
    instanceId,
    cursors,
    secrets: new ServiceSecretStore(storage.db),
    sharedSettings: new SharedSettings(storage.db),
    cluster,
    metrics,
    exporter,
    services,
  };
}
