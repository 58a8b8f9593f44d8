import { join } from 'node:path';
import { z } from 'zod';

/**
 * The only module that reads `process.env`. Every setting is validated at start-up and every
 * bad variable is reported at once, so an operator fixes a broken deployment in one pass.
 */

/** Asymmetric signature algorithms only: a public key can never verify an HMAC "signature". */
export const JWT_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];
export type AuthMode = 'dev' | 'keys' | 'jwt' | 'keys+jwt';

const int = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  z.coerce.number().int().min(min).max(max);

const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'])
  .transform((v) => ['true', '1', 'yes', 'on'].includes(v));

const envSchema = z.object({
  /** HTTP port for GraphQL, health and metrics. */
  PORT: int(0, 65535).default(4000),
  /** Interface to bind. */
  HOST: z.string().min(1).default('0.0.0.0'),
  /**
   * A port of its own for GET /metrics (then not served on PORT); unset: /metrics is on PORT,
   * behind METRICS_TOKEN (or, with neither, open only in AUTH_MODE=dev).
   */
  METRICS_PORT: int(0, 65535).optional(),
  /** Interface of the METRICS_PORT listener: loopback unless a scraper elsewhere needs it. */
  METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  /** Bearer token a scraper presents (`Authorization: Bearer <token>`) for /metrics. */
  METRICS_TOKEN: z.string().min(32).optional(),
  /** PostgreSQL connection string; unset means the embedded PGlite database. */
  DATABASE_URL: z.url({ protocol: /^postgres(ql)?$/ }).optional(),
  /** Directory of the embedded database (used only without DATABASE_URL). */
  DATA_DIR: z.string().min(1).default('./.data/pglite'),
  /**
   * Size of the PostgreSQL connection pool. At least 2: the maintenance job holds one connection
   * (its leader lock) while it works through another.
   */
  DATABASE_POOL_SIZE: int(2, 200).default(10),
  /** `application_name` of every connection, so operators (and fault tests) can find them. */
  DATABASE_APPLICATION_NAME: z.string().min(1).max(63).default('auditgraph'),
  /** Redis connection string: dead letters, fan-out across instances, heartbeats. */
  REDIS_URL: z.url({ protocol: /^rediss?$/ }).optional(),
  /** Prefix of every Redis key and pub/sub channel (pub/sub ignores the DB index). */
  REDIS_KEY_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9:_.-]{1,64}$/)
    .default('auditgraph:'),
  /**
   * `keys`: every request presents an API key (`Authorization: Bearer <key>`), whose tenant and
   * scopes it gets. `dev`: nothing is authenticated; the tenant is the `x-tenant-id` header.
   * Default: `keys` with DATABASE_URL, `dev` in the embedded mode.
   */
  AUTH_MODE: z.enum(['dev', 'keys', 'jwt', 'keys+jwt']).optional(),
  /** JWKS of the token issuer (AUTH_MODE jwt, keys+jwt): fetched, cached, refetched on an unknown `kid`. */
  JWT_JWKS_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** Or one public key (PEM, SPKI) in a file, instead of a JWKS. */
  JWT_PUBLIC_KEY_FILE: z.string().min(1).optional(),
  /** The `iss` every token must carry. */
  JWT_ISSUER: z.string().min(1).optional(),
  /** An `aud` every token must carry. */
  JWT_AUDIENCE: z.string().min(1).optional(),
  /** Signature algorithms accepted: asymmetric ones only (never `none`, never HS*). */
  JWT_ALGORITHMS: z
    .string()
    .default('RS256,PS256,ES256,EdDSA')
    .transform((v) => v.split(',').map((a) => a.trim()))
    .pipe(z.array(z.enum(JWT_ALGORITHMS)).min(1)),
  /** The claim naming the caller's tenant (looked up in the tenant table, never trusted as is). */
  JWT_TENANT_CLAIM: z
    .string()
    .regex(/^[A-Za-z0-9_:./-]{1,200}$/)
    .default('tenant'),
  /** Leeway for `exp` and `nbf`, in seconds. */
  JWT_CLOCK_TOLERANCE_S: int(0, 300).default(30),
  /** An unknown `kid` refetches the JWKS at most this often. */
  JWT_JWKS_COOLDOWN_MS: int(0, 3_600_000).default(30_000),
  /**
   * How long this process reuses an API key look-up. Revocations are announced to every instance
   * through Redis; without Redis, one made by another process takes this long to be seen here.
   */
  API_KEY_CACHE_MS: int(0, 60_000).default(5_000),
  /** `last_used_at` of a key is written at most this often. */
  API_KEY_TOUCH_INTERVAL_MS: int(0, 86_400_000).default(60_000),
  /** How often open subscriptions re-check their key (closed when revoked or expired). */
  AUTH_RECHECK_MS: int(100, 60_000).default(1_000),
  /** Record reads of the audit log (auditEvents, auditEvent, auditEventsAdded) as events. */
  AUDIT_READS: bool.default(true),
  /**
   * Access records (reads with AUDIT_READS, key and tenant administration) one tenant may have
   * waiting to be written, held apart from its BUFFER_CAPACITY so that they never take room from
   * the tenant's own writes. A read whose record finds this share full is refused
   * (LimitExceededError) rather than served unrecorded.
   */
  ACCESS_LOG_BUFFER_CAPACITY: int(1, 1_000_000).default(1_000),
  /** Answer introspection queries (`__schema`, `__type`). */
  INTROSPECTION: bool.default(true),
  /** Deepest field nesting of an operation (introspection fields aside); 0: no limit. */
  MAX_QUERY_DEPTH: int(0, 1_000).default(12),
  /** Highest estimated cost of an operation (fields × page sizes); 0: no limit. */
  MAX_QUERY_COMPLEXITY: int(0).default(50_000),
  /** Aliased fields in one document; 0: no limit. */
  MAX_ALIASES: int(0).default(30),
  /** Lexical tokens in one document; 0: no limit. */
  MAX_QUERY_TOKENS: int(0).default(20_000),
  /**
   * Executions of a query or mutation text by the ordinary executor before it is compiled
   * (graphql-jit) for the executions after; 0 compiles from the first, -1 never compiles.
   */
  QUERY_COMPILE_AFTER: int(-1, 1_000_000).default(1),
  /** Operations in one HTTP request: 1 turns batching off, n > 1 allows batches of n, 0 any. */
  MAX_OPERATIONS_PER_REQUEST: int(0, 1_000).default(1),
  /** Subscription connections (WebSocket, SSE) one tenant may hold open on an instance; 0: no limit. */
  MAX_CONNECTIONS_PER_TENANT: int(0).default(100),
  /** Events per second one tenant may write (shared across instances with Redis); 0: no limit. */
  RATE_LIMIT_EVENTS_PER_SECOND: int(0).default(10_000),
  /** Events a tenant may write beyond that rate within 10 seconds. */
  RATE_LIMIT_BURST_EVENTS: int(0).default(50_000),
  /** Provision a tenant's schema on its first write. */
  TENANT_AUTO_PROVISION: bool.optional(),
  /** Events per batch transaction. */
  BATCH_SIZE: int(1, 10_000).default(500),
  /** Longest time a BUFFERED event waits before its batch is written. */
  FLUSH_INTERVAL_MS: int(1, 3_600_000).default(1000),
  /** Short wait that lets concurrent COMMITTED calls share one transaction. */
  COMMIT_LINGER_MS: int(0, 10_000).default(2),
  /** Longest a COMMITTED call waits before answering CommitTimeoutError. */
  COMMIT_TIMEOUT_MS: int(1, 600_000).default(10_000),
  /** Events held per tenant (buffered, in flight, or in backoff) before backpressure. */
  BUFFER_CAPACITY: int(1, 10_000_000).default(10_000),
  /** Bytes held by all buffers of the process before backpressure. */
  BUFFER_MAX_BYTES: int(1024).default(64 * 1024 * 1024),
  /** Batches one tenant may have in flight at once. */
  WRITER_CONCURRENCY: int(1, 64).default(2),
  /** First retry delay of a failed batch; doubles per attempt, with jitter. */
  RETRY_BASE_MS: int(1, 600_000).default(200),
  /** Ceiling of the retry delay. */
  RETRY_MAX_MS: int(1, 3_600_000).default(30_000),
  /** Write attempts of a batch (with backoff between them) before it is dead-lettered. */
  WRITE_MAX_ATTEMPTS: int(1, 1000).default(5),
  /** Dead-lettered events at which new writes are refused with BackpressureError (nothing is ever trimmed). */
  DLQ_MAX_EVENTS: int(1).default(1_000_000),
  /** Delays between the retry worker's replays of a dead letter; after the last it is parked. */
  DLQ_RETRY_SCHEDULE_MS: z
    .string()
    .regex(/^\d+(,\d+)*$/, 'a comma-separated list of milliseconds')
    .default('5000,30000,120000,600000,1800000'),
  /** How often the retry worker looks for due dead letters. */
  DLQ_POLL_MS: int(10, 600_000).default(1000),
  /** A dead letter claimed by an instance that stopped answering is taken over after this long. */
  DLQ_LEASE_MS: int(1000, 3_600_000).default(60_000),
  /** Local directory: the dead-letter queue without Redis, and the shutdown spool with it. */
  DLQ_DIR: z.string().min(1).default('./.data/dead-letters'),
  /** How often an instance announces itself (with REDIS_URL); silent for 3 beats = not live. */
  CLUSTER_HEARTBEAT_MS: int(100, 60_000).default(1000),
  /**
   * The write-ahead journal of BUFFERED calls: `on`, a BUFFERED answer survives a crash of the
   * process; `off`, it means this process's memory (a kill -9 loses what it holds).
   */
  JOURNAL: z.enum(['on', 'off']).default('on'),
  /** Without REDIS_URL: the journal's directory (one instance owns it); default `<DLQ_DIR>/journal`. */
  JOURNAL_DIR: z.string().min(1).optional(),
  /** With REDIS_URL: an instance whose heartbeat is this old has its journal taken over. */
  JOURNAL_LEASE_MS: int(1000, 3_600_000).default(10_000),
  /** How long a journal append waits for others to join its write (0: only while one is in flight). */
  JOURNAL_LINGER_MS: int(0, 100).default(0),
  /** Events accepted per createAuditEvents call. */
  MAX_EVENTS_PER_CALL: int(1, 100_000).default(1000),
  /** How far in the future an occurredAt may lie. */
  MAX_FUTURE_SKEW_MS: int(0, 86_400_000).default(5 * 60_000),
  /**
   * Default retention window in days (a tenant may have its own): the oldest accepted occurredAt,
   * and months wholly older than this are dropped by the maintenance job.
   */
  RETENTION_DAYS: int(1, 36_500).default(400),
  /**
   * Longest retention a tenant may have (setRetention above it is refused; RETENTION_DAYS may not
   * exceed it). It bounds how old an accepted event may be, so how many months one tenant's
   * writes can spread over. A tenant row holding more (set before this ceiling) is not cut down
   * by retention, only written to within this many days.
   */
  MAX_RETENTION_DAYS: int(1, 36_500).default(3_660),
  /**
   * Monthly partitions one tenant may have: a write needing a new month beyond it is refused
   * whole (ValidationError). The months ahead are always created. 0: no ceiling. Must hold the
   * months of MAX_RETENTION_DAYS plus PARTITIONS_AHEAD.
   */
  MAX_PARTITIONS_PER_TENANT: int(0, 100_000).default(160),
  /** Months without a partition one createAuditEvents call may bring; 0: no limit. */
  MAX_NEW_PARTITIONS_PER_CALL: int(0, 100_000).default(24),
  /**
   * Monthly partitions one read statement may touch: pages, look-ups by id and event counts walk
   * the tenant's months in windows of this many, so a statement's locks do not grow with them.
   */
  READ_WINDOW_PARTITIONS: int(1, 1_000).default(6),
  /**
   * Hash-chain every stored event (SHA-256 over RFC 8785 canonical JSON). `off` exists to measure
   * what hashing costs: events stored with it off hold chain positions but no hash, and
   * verifyAuditChain reports them as UNHASHED.
   */
  CHAIN_HASHING: bool.default(true),
  /** Keys the chain (HMAC-SHA-256) with this secret; verifying then needs the same secret. */
  CHAIN_HMAC_SECRET: z.string().min(32).optional(),
  /**
   * Ed25519 private key (PKCS#8 PEM) that signs chain checkpoints. Created (mode 0600) when the
   * file does not exist; every instance of a deployment must use the same key.
   */
  CHECKPOINT_KEY_FILE: z.string().min(1).default('./.data/checkpoint-ed25519.pem'),
  /** How often each tenant's chain heads are signed as checkpoints; 0: only on request. */
  CHECKPOINT_INTERVAL_MS: int(0, 86_400_000).default(60_000),
  /**
   * Chain verifications (verifyAuditChain, auditChainVerification) one tenant may run at once on
   * an instance; more are refused with LimitExceededError, not queued. Each re-reads whole
   * months, so there is no "no limit".
   */
  MAX_VERIFICATIONS_PER_TENANT: int(1, 64).default(1),
  /** How often the maintenance job (partitions ahead, retention) runs; 0: only on request. */
  MAINTENANCE_INTERVAL_MS: int(0, 86_400_000).default(3_600_000),
  /** Monthly partitions created ahead of the current month. */
  PARTITIONS_AHEAD: int(0, 120).default(3),
  /** Secret that signs page cursors; set it in production so cursors survive restarts. */
  CURSOR_SECRET: z.string().min(32).optional(),
  /**
   * Largest accepted HTTP request body, and largest WebSocket message once a connection is
   * acknowledged. Sized for MAX_EVENTS_PER_CALL events of ordinary size; a call of larger events
   * is split by the client (1,000 events of the largest allowed `data` would be 256 MiB).
   */
  MAX_REQUEST_BYTES: int(1024).default(16 * 1024 * 1024),
  /** Largest WebSocket message before the connection is acknowledged (the connection_init). */
  WS_MAX_INIT_BYTES: int(1024, 16 * 1024 * 1024).default(64 * 1024),
  /** Longest a client may take to send a request's headers (node:http headersTimeout). */
  HTTP_HEADERS_TIMEOUT_MS: int(100, 600_000).default(10_000),
  /** Longest a client may take to send a whole request, headers and body (requestTimeout). */
  HTTP_REQUEST_TIMEOUT_MS: int(100, 3_600_000).default(60_000),
  /** An idle keep-alive connection is closed after this long (keepAliveTimeout). */
  HTTP_KEEP_ALIVE_TIMEOUT_MS: int(100, 600_000).default(5_000),
  /** TCP connections (HTTP and WebSocket) open at once; more are dropped on arrival. 0: no cap. */
  MAX_HTTP_CONNECTIONS: int(0, 1_000_000).default(10_000),
  /** Operations (subscriptions) one WebSocket connection may have open at once. */
  MAX_SUBSCRIPTIONS_PER_CONNECTION: int(1, 100_000).default(100),
  /**
   * Subscriptions (WebSocket and SSE, every field) one tenant may have open on an instance; one
   * more is answered LimitExceededError as its only message. 0: no limit.
   */
  MAX_SUBSCRIPTIONS_PER_TENANT: int(0).default(1_000),
  TAIL_REPLAY_MAX_EVENTS: int(0, 10_000_000).default(10_000),
  /**
   * Bytes of messages (estimated from their serialised size) queued for all subscribers of the
   * process and not yet delivered. Past it, the subscriptions holding the most are ended with
   * SubscriptionInterruptedError OVERLOADED until the new message fits.
   */
  SUBSCRIPTION_QUEUE_MAX_BYTES: int(64 * 1024).default(64 * 1024 * 1024),
  /** Longest a flushAudit call may wait (its timeoutMs is capped to this). */
  FLUSH_MAX_TIMEOUT_MS: int(1, 600_000).default(60_000),
  /** Deadline of a graceful shutdown. */
  SHUTDOWN_TIMEOUT_MS: int(100, 600_000).default(25_000),
  /** Serve GraphiQL at /graphql. */
  GRAPHIQL: bool.default(true),
  /**
   * Origins (exactly `scheme://host[:port]`, comma-separated) whose pages may call /graphql,
   * SSE and /export from a browser; none by default (same-origin pages need none).
   */
  CORS_ORIGINS: z
    .string()
    .default('')
    .transform((v) =>
      v
        .split(',')
        .map((o) => o.trim())
        .filter(Boolean),
    )
    .pipe(
      z.array(
        z
          .string()
          .regex(
            /^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/,
            'each an exact origin such as https://dash.example.com (no path, no wildcard)',
          ),
      ),
    ),
  /** pino log level. */
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Name of this instance in logs and flush reports; defaults to host and pid. */
  INSTANCE_ID: z.string().min(1).max(96).optional(),
  /** Service processes on this machine sharing PORT (node:cluster), each an instance of its own. */
  WORKERS: int(1, 64).default(1),
});

export type Env = z.input<typeof envSchema>;

export interface Config {
  port: number;
  host: string;
  metricsPort: number | undefined;
  metricsHost: string;
  metricsToken: string | undefined;
  database:
    | { kind: 'pg'; url: string; poolSize: number; applicationName: string }
    | { kind: 'pglite'; dataDir: string };
  redisUrl: string | undefined;
  redisKeyPrefix: string;
  /** `keys+jwt`: API keys for services and tokens for people, side by side. */
  authMode: AuthMode;
  /** Set when the mode takes tokens. */
  jwt: JwtConfig | null;
  apiKeyCacheMs: number;
  apiKeyTouchIntervalMs: number;
  authRecheckMs: number;
  auditReads: boolean;
  accessLogBufferCapacity: number;
  introspection: boolean;
  maxQueryDepth: number;
  maxQueryComplexity: number;
  maxAliases: number;
  maxQueryTokens: number;
  /** -1: never compiled. */
  queryCompileAfter: number;
  maxOperationsPerRequest: number;
  maxConnectionsPerTenant: number;
  rateLimitEventsPerSecond: number;
  rateLimitBurstEvents: number;
  tenantAutoProvision: boolean;
  batchSize: number;
  flushIntervalMs: number;
  commitLingerMs: number;
  commitTimeoutMs: number;
  bufferCapacity: number;
  bufferMaxBytes: number;
  writerConcurrency: number;
  retryBaseMs: number;
  retryMaxMs: number;
  writeMaxAttempts: number;
  dlqMaxEvents: number;
  dlqRetryScheduleMs: number[];
  dlqPollMs: number;
  dlqLeaseMs: number;
  dlqDir: string;
  clusterHeartbeatMs: number;
  journal: boolean;
  journalDir: string;
  journalLeaseMs: number;
  journalLingerMs: number;
  maxEventsPerCall: number;
  maxFutureSkewMs: number;
  retentionDays: number;
  maxRetentionDays: number;
  maxPartitionsPerTenant: number;
  maxNewPartitionsPerCall: number;
  readWindowPartitions: number;
  chainHashing: boolean;
  chainHmacSecret: string | undefined;
  checkpointKeyFile: string;
  checkpointIntervalMs: number;
  maxVerificationsPerTenant: number;
  maintenanceIntervalMs: number;
  partitionsAhead: number;
  cursorSecret: string | undefined;
  maxRequestBytes: number;
  wsMaxInitBytes: number;
  httpHeadersTimeoutMs: number;
  httpRequestTimeoutMs: number;
  httpKeepAliveTimeoutMs: number;
  maxHttpConnections: number;
  maxSubscriptionsPerConnection: number;
  maxSubscriptionsPerTenant: number;
  /**
   * Positions of the tenant's chains an `auditEventsAdded(after:)` may replay before going live;
   * beyond, it is refused (REPLAY_TOO_LARGE) and the caller pages instead.
   */
  tailReplayMaxEvents: number;
  subscriptionQueueMaxBytes: number;
  flushMaxTimeoutMs: number;
  shutdownTimeoutMs: number;
  graphiql: boolean;
  /** CORS_ORIGINS: the origins a browser page may call from. */
  corsOrigins: readonly string[];
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  instanceId: string | undefined;
  workers: number;
}

/** How people's tokens are verified (AUTH_MODE jwt or keys+jwt). */
export interface JwtConfig {
  jwksUrl: string | undefined;
  publicKeyFile: string | undefined;
  issuer: string;
  audience: string;
  algorithms: readonly JwtAlgorithm[];
  tenantClaim: string;
  clockToleranceS: number;
  jwksCooldownMs: number;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** UTC months that a span of `days` days can touch (a month is at least 28 days long). */
export function monthsSpanned(days: number): number {
  return Math.ceil(days / 28) + 1;
}

/**
 * The retention and partition ceilings checked against each other. Each variable is parsed on
 * its own, so these problems are reported beside those of any other variable.
 */
function partitionProblems(env: Record<string, string | undefined>): string[] {
  const value = (name: keyof typeof envSchema.shape): number | undefined => {
    const r = envSchema.shape[name].safeParse(env[name]);
    return r.success && typeof r.data === 'number' ? r.data : undefined;
  };
  const problems: string[] = [];
  const retention = value('RETENTION_DAYS');
  const maxRetention = value('MAX_RETENTION_DAYS');
  const maxPartitions = value('MAX_PARTITIONS_PER_TENANT');
  const ahead = value('PARTITIONS_AHEAD');
  if (retention !== undefined && maxRetention !== undefined && retention > maxRetention) {
    problems.push(
      `RETENTION_DAYS: ${retention} is above MAX_RETENTION_DAYS (${maxRetention}); ` +
        'lower it or raise MAX_RETENTION_DAYS',
    );
  }
  if (maxPartitions !== undefined && maxPartitions > 0 && maxRetention !== undefined) {
    const needed = monthsSpanned(maxRetention) + (ahead ?? 0);
    if (maxPartitions < needed) {
      problems.push(
        `MAX_PARTITIONS_PER_TENANT: ${maxPartitions} cannot hold the ${monthsSpanned(maxRetention)} ` +
          `months of MAX_RETENTION_DAYS (${maxRetention}) plus PARTITIONS_AHEAD (${ahead ?? 0}); ` +
          `at least ${needed}, or 0 for no ceiling`,
      );
    }
  }
  return problems;
}

/** Parses an environment (by default `process.env`); throws ConfigError naming every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const cleaned = Object.fromEntries(
    Object.entries(env).filter(([, v]) => v !== undefined && v !== ''),
  );
  const parsed = envSchema.safeParse(cleaned);
  const problems = parsed.success
    ? []
    : parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  const { e, ok } = eachOnItsOwn(cleaned);
  problems.push(...combinationProblems(e, ok), ...partitionProblems(cleaned));
  if (!parsed.success || problems.length > 0) throw new ConfigError(problems);
  return configOf(parsed.data);
}

/** The token settings, for a mode that takes tokens. */
function jwtOf(e: z.output<typeof envSchema>): JwtConfig | null {
  if (e.AUTH_MODE !== 'jwt' && e.AUTH_MODE !== 'keys+jwt') return null;
  return {
    jwksUrl: e.JWT_JWKS_URL,
    publicKeyFile: e.JWT_PUBLIC_KEY_FILE,
    issuer: e.JWT_ISSUER!,
    audience: e.JWT_AUDIENCE!,
    algorithms: e.JWT_ALGORITHMS,
    tenantClaim: e.JWT_TENANT_CLAIM,
    clockToleranceS: e.JWT_CLOCK_TOLERANCE_S,
    jwksCooldownMs: e.JWT_JWKS_COOLDOWN_MS,
  };
}

function jwtProblems(e: Parsed, ok: Valid): string[] {
  if (!ok('AUTH_MODE', 'JWT_JWKS_URL', 'JWT_PUBLIC_KEY_FILE', 'JWT_ISSUER', 'JWT_AUDIENCE')) {
    return [];
  }
  if (e.AUTH_MODE !== 'jwt' && e.AUTH_MODE !== 'keys+jwt') return [];
  const problems: string[] = [];
  if ((e.JWT_JWKS_URL === undefined) === (e.JWT_PUBLIC_KEY_FILE === undefined)) {
    problems.push(`JWT_JWKS_URL: AUTH_MODE=${e.AUTH_MODE} needs it or JWT_PUBLIC_KEY_FILE (one)`);
  }
  if (!e.JWT_ISSUER) problems.push(`JWT_ISSUER: required with AUTH_MODE=${e.AUTH_MODE}`);
  if (!e.JWT_AUDIENCE) problems.push(`JWT_AUDIENCE: required with AUTH_MODE=${e.AUTH_MODE}`);
  return problems;
}

type Parsed = z.output<typeof envSchema>;
/** True when every named variable is valid on its own (a check across them can be made). */
type Valid = (...names: (keyof Parsed)[]) => boolean;

/**
 * Each variable parsed on its own, defaults applied: a check across variables then runs beside
 * the problems of any other variable (all reported at once), and is skipped only when one of its
 * own variables is bad — that one is reported already.
 */
function eachOnItsOwn(env: Record<string, string | undefined>): { e: Parsed; ok: Valid } {
  const values: Record<string, unknown> = {};
  const bad = new Set<string>();
  for (const [name, field] of Object.entries(envSchema.shape)) {
    const r = (field as z.ZodType).safeParse(env[name]);
    if (r.success) values[name] = r.data;
    else bad.add(name);
  }
  return { e: values as Parsed, ok: (...names) => names.every((n) => !bad.has(n)) };
}

/** Variables each valid alone whose values do not go together. */
function combinationProblems(e: Parsed, ok: Valid): string[] {
  const problems: string[] = [...jwtProblems(e, ok)];
  const perSecond = e.RATE_LIMIT_EVENTS_PER_SECOND;
  if (
    ok('RATE_LIMIT_EVENTS_PER_SECOND', 'MAX_EVENTS_PER_CALL', 'RATE_LIMIT_BURST_EVENTS') &&
    perSecond > 0 &&
    e.MAX_EVENTS_PER_CALL > perSecond + e.RATE_LIMIT_BURST_EVENTS
  ) {
    // Such a call could never pass the rate limit: refuse the configuration instead.
    problems.push(
      'RATE_LIMIT_EVENTS_PER_SECOND: with RATE_LIMIT_BURST_EVENTS it must allow at least ' +
        `MAX_EVENTS_PER_CALL (${e.MAX_EVENTS_PER_CALL}) events at once`,
    );
  }
  if (
    ok('METRICS_PORT', 'PORT') &&
    e.METRICS_PORT !== undefined &&
    e.METRICS_PORT !== 0 &&
    e.METRICS_PORT === e.PORT
  ) {
    problems.push('METRICS_PORT: must differ from PORT');
  }
  if (
    ok('JOURNAL_LEASE_MS', 'CLUSTER_HEARTBEAT_MS') &&
    e.JOURNAL_LEASE_MS < 3 * e.CLUSTER_HEARTBEAT_MS
  ) {
    // A live instance is one seen within three beats: a shorter lease takes over live journals.
    problems.push(`JOURNAL_LEASE_MS: must be at least 3 × CLUSTER_HEARTBEAT_MS`);
  }
  if (
    ok('WORKERS', 'REDIS_URL', 'DATABASE_URL') &&
    e.WORKERS > 1 &&
    (e.REDIS_URL === undefined || e.DATABASE_URL === undefined)
  ) {
    // Workers are instances: they share buffers' barrier, journals and fan-out through Redis, and
    // the data through PostgreSQL (the embedded database and the local journal have one owner).
    problems.push('WORKERS: more than 1 needs DATABASE_URL and REDIS_URL');
  }
  if (
    ok('HTTP_HEADERS_TIMEOUT_MS', 'HTTP_REQUEST_TIMEOUT_MS') &&
    e.HTTP_HEADERS_TIMEOUT_MS > e.HTTP_REQUEST_TIMEOUT_MS
  ) {
    // node:http refuses this pair: the headers are part of the request.
    problems.push('HTTP_HEADERS_TIMEOUT_MS: must not exceed HTTP_REQUEST_TIMEOUT_MS');
  }
  return problems;
}

/** The write-ahead journal's settings. */
function journalOf(
  e: z.output<typeof envSchema>,
): Pick<Config, 'journal' | 'journalDir' | 'journalLeaseMs' | 'journalLingerMs'> {
  return {
    journal: e.JOURNAL === 'on',
    journalDir: e.JOURNAL_DIR ?? join(e.DLQ_DIR, 'journal'),
    journalLeaseMs: e.JOURNAL_LEASE_MS,
    journalLingerMs: e.JOURNAL_LINGER_MS,
  };
}

/** What the doors (HTTP, WebSocket, GraphQL) bound and serve. */
function doorsOf(e: z.output<typeof envSchema>) {
  return {
    introspection: e.INTROSPECTION,
    maxQueryDepth: e.MAX_QUERY_DEPTH,
    maxQueryComplexity: e.MAX_QUERY_COMPLEXITY,
    maxAliases: e.MAX_ALIASES,
    maxQueryTokens: e.MAX_QUERY_TOKENS,
    queryCompileAfter: e.QUERY_COMPILE_AFTER,
    maxOperationsPerRequest: e.MAX_OPERATIONS_PER_REQUEST,
    maxRequestBytes: e.MAX_REQUEST_BYTES,
    wsMaxInitBytes: e.WS_MAX_INIT_BYTES,
    httpHeadersTimeoutMs: e.HTTP_HEADERS_TIMEOUT_MS,
    httpRequestTimeoutMs: e.HTTP_REQUEST_TIMEOUT_MS,
    httpKeepAliveTimeoutMs: e.HTTP_KEEP_ALIVE_TIMEOUT_MS,
    maxHttpConnections: e.MAX_HTTP_CONNECTIONS,
    graphiql: e.GRAPHIQL,
    corsOrigins: e.CORS_ORIGINS,
  };
}

/** The configuration of a valid environment, with the defaults that depend on other variables. */
function configOf(e: z.output<typeof envSchema>): Config {
  const servers = e.DATABASE_URL !== undefined;
  return {
    port: e.PORT,
    host: e.HOST,
    metricsPort: e.METRICS_PORT,
    metricsHost: e.METRICS_HOST,
    metricsToken: e.METRICS_TOKEN,
    database: servers
      ? {
          kind: 'pg',
          url: e.DATABASE_URL!,
          poolSize: e.DATABASE_POOL_SIZE,
          applicationName: e.DATABASE_APPLICATION_NAME,
        }
      : { kind: 'pglite', dataDir: e.DATA_DIR },
    redisUrl: e.REDIS_URL,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    // With real servers, clients are authenticated unless dev mode is asked for by name.
    authMode: e.AUTH_MODE ?? (servers ? 'keys' : 'dev'),
    jwt: jwtOf(e),
    apiKeyCacheMs: e.API_KEY_CACHE_MS,
    apiKeyTouchIntervalMs: e.API_KEY_TOUCH_INTERVAL_MS,
    authRecheckMs: e.AUTH_RECHECK_MS,
    auditReads: e.AUDIT_READS,
    accessLogBufferCapacity: e.ACCESS_LOG_BUFFER_CAPACITY,
    maxConnectionsPerTenant: e.MAX_CONNECTIONS_PER_TENANT,
    rateLimitEventsPerSecond: e.RATE_LIMIT_EVENTS_PER_SECOND,
    rateLimitBurstEvents: e.RATE_LIMIT_BURST_EVENTS,
    tenantAutoProvision: e.TENANT_AUTO_PROVISION ?? !servers,
    batchSize: e.BATCH_SIZE,
    flushIntervalMs: e.FLUSH_INTERVAL_MS,
    commitLingerMs: e.COMMIT_LINGER_MS,
    commitTimeoutMs: e.COMMIT_TIMEOUT_MS,
    bufferCapacity: e.BUFFER_CAPACITY,
    bufferMaxBytes: e.BUFFER_MAX_BYTES,
    writerConcurrency: e.WRITER_CONCURRENCY,
    retryBaseMs: e.RETRY_BASE_MS,
    retryMaxMs: e.RETRY_MAX_MS,
    writeMaxAttempts: e.WRITE_MAX_ATTEMPTS,
    dlqMaxEvents: e.DLQ_MAX_EVENTS,
    dlqRetryScheduleMs: e.DLQ_RETRY_SCHEDULE_MS.split(',').map(Number),
    dlqPollMs: e.DLQ_POLL_MS,
    dlqLeaseMs: e.DLQ_LEASE_MS,
    dlqDir: e.DLQ_DIR,
    clusterHeartbeatMs: e.CLUSTER_HEARTBEAT_MS,
    ...journalOf(e),
    ...doorsOf(e),
    maxEventsPerCall: e.MAX_EVENTS_PER_CALL,
    maxFutureSkewMs: e.MAX_FUTURE_SKEW_MS,
    retentionDays: e.RETENTION_DAYS,
    maxRetentionDays: e.MAX_RETENTION_DAYS,
    maxPartitionsPerTenant: e.MAX_PARTITIONS_PER_TENANT,
    maxNewPartitionsPerCall: e.MAX_NEW_PARTITIONS_PER_CALL,
    readWindowPartitions: e.READ_WINDOW_PARTITIONS,
    chainHashing: e.CHAIN_HASHING,
    chainHmacSecret: e.CHAIN_HMAC_SECRET,
    checkpointKeyFile: e.CHECKPOINT_KEY_FILE,
    checkpointIntervalMs: e.CHECKPOINT_INTERVAL_MS,
    maxVerificationsPerTenant: e.MAX_VERIFICATIONS_PER_TENANT,
    maintenanceIntervalMs: e.MAINTENANCE_INTERVAL_MS,
    partitionsAhead: e.PARTITIONS_AHEAD,
    cursorSecret: e.CURSOR_SECRET,
    maxSubscriptionsPerConnection: e.MAX_SUBSCRIPTIONS_PER_CONNECTION,
    maxSubscriptionsPerTenant: e.MAX_SUBSCRIPTIONS_PER_TENANT,
    tailReplayMaxEvents: e.TAIL_REPLAY_MAX_EVENTS,
    subscriptionQueueMaxBytes: e.SUBSCRIPTION_QUEUE_MAX_BYTES,
    flushMaxTimeoutMs: e.FLUSH_MAX_TIMEOUT_MS,
    shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT_MS,
    logLevel: e.LOG_LEVEL,
    instanceId: e.INSTANCE_ID,
    workers: e.WORKERS,
  };
}
