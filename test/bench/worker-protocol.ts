/** What the orchestrator (run.ts) asks a load worker to do, and what comes back. */

export interface IngestJob {
  kind: 'ingest';
  url: string;
  tenants: string[];
  /** Keep-alive connections (= concurrent clients), tenants assigned round-robin. */
  connections: number;
  durationMs: number;
  /** Run this long first, uncounted in the figures (but its events are accepted and stored). */
  warmupMs: number;
  ack: 'BUFFERED' | 'COMMITTED';
  eventsPerCall: number;
  /** Pace the calls at this total rate (closed loop when absent: each client sends back to back). */
  callsPerSecond?: number;
  /**
   * Open loop: calls are due at `callsPerSecond` whatever the answers; a call due while
   * `maxInFlight` are outstanding is counted as `skipped` (offered but not sent).
   */
  openLoop?: { maxInFlight: number };
  /** Wait `retryAfterMs` after a BackpressureError, as a well-behaved client does. */
  honourBackpressure: boolean;
  seed: number;
}

export interface IngestResult {
  calls: number;
  acceptedEvents: number;
  backpressure: number;
  /** Calls answered with anything but the payload or BackpressureError (or not answered). */
  otherFailures: number;
  failureSamples: string[];
  /** Calls due but not sent (open loop at its in-flight cap). */
  skipped: number;
  latenciesMs: number[];
  /** Length of the measured window, until the last call of the window was answered. */
  windowMs: number;
  /** Events accepted per tenant, warm-up included (for the accounting check). */
  byTenant: Record<string, number>;
  /** Calls that took over 5 s: when they were sent (ms after the job started) and how long. */
  slowCalls: { sentAtMs: number; tookMs: number }[];
  cpuSeconds: number;
}

export interface LatencyJob {
  kind: 'commit-latency' | 'flush-latency';
  url: string;
  tenant: string;
  databaseUrl: string;
  /** Scratch schema (same table) the raw-SQL baseline writes to. */
  scratchSchema: string;
  samples: number;
  /** commit-latency: calls per second (a modest, steady rate). */
  callsPerSecond: number;
  eventsPerCall: number;
  seed: number;
}

export interface LatencyResult {
  /** commit-latency: each COMMITTED call; flush-latency: each flushAudit call. */
  api: number[];
  /** flush-latency: the BUFFERED write plus its flushAudit, end to end. */
  apiEndToEnd: number[];
  /** The same rows as one raw INSERT transaction (BEGIN; INSERT; COMMIT). */
  raw: number[];
  /** flush-latency: events pending that each flush waited for. */
  waitedFor: number[];
  acceptedEvents: number;
  failures: number;
  failureSamples: string[];
  cpuSeconds: number;
}

export interface ReadsJob {
  kind: 'reads';
  url: string;
  tenant: string;
  databaseUrl: string;
  schema: string;
  /** Rows before the deep page (reached by cursor, pages of 500). */
  depth: number;
  samples: number;
  offsetSamples: number;
  correlationIds: string[];
  seed: number;
}

export type ReadLoadQuery = 'first' | 'deep' | 'correlation';

export interface ReadLoadJob {
  kind: 'readLoad';
  tenant: string;
  /**
   * The servers to compare; each with the cursor of its deep page (cursors differ by server),
   * and the API key its requests carry (none: the tenant header of AUTH_MODE=dev).
   */
  targets: { name: string; url: string; deepCursor: string; apiKey?: string }[];
  concurrency: number[];
  durationMs: number;
  warmupMs: number;
  correlationIds: string[];
  seed: number;
}

export interface ReadLoadResult {
  runs: {
    target: string;
    query: ReadLoadQuery;
    clients: number;
    /** Requests answered inside the measured window. */
    requests: number;
    /** Every request answered, warm-up included. */
    answered: number;
    seconds: number;
    latenciesMs: number[];
  }[];
  failures: number;
  failureSamples: string[];
  cpuSeconds: number;
}

export interface ReadsResult {
  walk: { pages: number; ms: number };
  /** The walk visited exactly `depth` rows, and the deep page starts where raw keyset SQL does. */
  deepIsExact: boolean;
  first: { api: number[]; raw: number[] };
  deep: { api: number[]; raw: number[] };
  /** The deep page's cursor (the service's) and the position it stands for. */
  deepCursor: string;
  deepPosition: { occurredAt: string; id: string };
  correlation: { api: number[]; raw: number[] };
  offset: number[];
  failures: number;
  failureSamples: string[];
  cpuSeconds: number;
}

export interface SubscribersJob {
  kind: 'subscribers';
  url: string;
  subscriptions: { tenant: string; transport: 'ws' | 'sse' }[];
  /** Subscriptions opened at once while connecting. */
  connectConcurrency: number;
}

/** Sent to a subscribers worker once the writes are done: what each tenant's subscribers must have seen. */
export interface SubscribersCheck {
  type: 'check';
  expected: Record<string, string[]>;
  /** Batches settled before the subscribers were ready: received or not, they do not count. */
  ignore: Record<string, string[]>;
  timeoutMs: number;
}

export interface TransportResult {
  subscribers: number;
  latenciesMs: number[];
  /** Expected batch messages a subscriber never received, summed over subscribers. */
  missing: number;
  /** Messages about batches that are not in the tenant's ledger (should be none). */
  unexpected: number;
  duplicates: number;
  interrupted: number;
  errors: string[];
}

export interface SubscribersResult {
  ws: TransportResult;
  sse: TransportResult;
  readyMs: number;
  cpuSeconds: number;
}

export interface VisibleJob {
  kind: 'visible';
  url: string;
  tenants: string[];
  reps: number;
  mode: 'buffered-flush' | 'committed';
  eventsPerTenant: number;
  /** Also time the raw-SQL floor: per tenant one INSERT transaction, then SELECT the rows. */
  baseline?: { databaseUrl: string; scratchSchema: string };
  seed: number;
}

export interface VisibleResult {
  wallMs: number[];
  /** Reads that did not see every event at once (and had to read again). */
  rereads: number;
  byTenant: Record<string, number>;
  baselineMs: number[];
  failures: number;
  failureSamples: string[];
  cpuSeconds: number;
}

export interface SqlLoadJob {
  kind: 'copy' | 'insert';
  databaseUrl: string;
  schema: string;
  rows: number;
  /** insert: connections and rows per statement. */
  connections?: number;
  rowsPerStatement?: number;
  /** occurredAt rises evenly from `from` to `to` (epoch ms) over the rows, with jitter. */
  from: number;
  to: number;
  /** Events per correlation id (consecutive runs interleave 50 at a time). */
  perCorrelation: number;
  seed: number;
}

export interface SqlLoadResult {
  rows: number;
  seconds: number;
  /** Average bytes of a row as stored (pg_column_size of the row), for the report. */
  rowBytes: number;
  cpuSeconds: number;
}

export type WorkerJob =
  | IngestJob
  | LatencyJob
  | ReadsJob
  | ReadLoadJob
  | SubscribersJob
  | VisibleJob
  | SqlLoadJob;

export type WorkerReply =
  | { type: 'result'; result: unknown }
  | { type: 'error'; error: string }
  | { type: 'progress'; message: unknown };
