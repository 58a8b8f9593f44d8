import pg from 'pg';
import { type Server, startWorker } from './child-processes.js';
import { createBody, FLUSH_MUTATION, makeEvent, rng, STATS_QUERY } from './events.js';
import { GqlConnection } from './gql-client.js';
import {
  type CpuSnapshot,
  type CpuSplit,
  CpuTracker,
  cpuSnapshot,
  cpuSplit,
  postgresProcess,
  redisProcess,
  rssBytes,
} from './proc-stats.js';
import type { Row } from './report.js';
import type { IngestJob, IngestResult } from './worker-protocol.js';

/** Sizes and durations of one run (`--quick` shrinks every one). */
export interface Params {
  ingestWarmupMs: number;
  ingestMs: number;
  baselineRows: number;
  commitSamples: number;
  commitCallsPerSecond: number;
  flushSamples: number;
  readRows: number;
  readDepth: number;
  readSamples: number;
  offsetSamples: number;
  /** Scenario 3's closed loop: each run's window and warm-up. */
  readLoadMs: number;
  readLoadWarmupMs: number;
  subTenants: number;
  wsPerTenant: number;
  ssePerTenant: number;
  subMs: number;
  overloadMs: number;
  overloadTenants: number;
  overloadInFlightPerWorker: number;
  recoveryMs: number;
  visibleReps: number;
  /** Scenario 7: on/off rounds, and each ingest run's window and warm-up. */
  chainRounds: number;
  chainMs: number;
  chainWarmupMs: number;
  /** Scenario 7: events (and timed repeats) of the in-process hashing cost. */
  chainCostEvents: number;
  chainCostRepeats: number;
}

/** How run.ts started the service: scenario 7 starts a second one the same way. */
export interface ServiceSpec {
  entry: string;
  env: Record<string, string>;
  nodeArgs: string[];
  /** The run's temporary directory (removed at the end). */
  tempDir: string;
}

/** The scraper's METRICS_TOKEN: every service the bench starts is given it (run.ts). */
export const BENCH_METRICS_TOKEN = 'bench-metrics-token-0123456789abcdef';

export const FULL: Params = {
  ingestWarmupMs: 3_000,
  ingestMs: 20_000,
  baselineRows: 200_000,
  commitSamples: 500,
  commitCallsPerSecond: 20,
  flushSamples: 100,
  readRows: 1_000_000,
  readDepth: 500_000,
  readSamples: 500,
  offsetSamples: 30,
  readLoadMs: 5_000,
  readLoadWarmupMs: 1_000,
  subTenants: 20,
  wsPerTenant: 50,
  ssePerTenant: 5,
  subMs: 20_000,
  overloadMs: 30_000,
  overloadTenants: 8,
  overloadInFlightPerWorker: 64,
  recoveryMs: 30_000,
  visibleReps: 5,
  chainRounds: 2,
  chainMs: 10_000,
  chainWarmupMs: 2_000,
  chainCostEvents: 50_000,
  chainCostRepeats: 3,
};

export const QUICK: Params = {
  ingestWarmupMs: 1_000,
  ingestMs: 3_000,
  baselineRows: 20_000,
  commitSamples: 40,
  commitCallsPerSecond: 20,
  flushSamples: 10,
  readRows: 30_000,
  readDepth: 15_000,
  readSamples: 50,
  offsetSamples: 5,
  readLoadMs: 1_000,
  readLoadWarmupMs: 300,
  subTenants: 4,
  wsPerTenant: 25,
  ssePerTenant: 3,
  subMs: 4_000,
  overloadMs: 5_000,
  overloadTenants: 4,
  overloadInFlightPerWorker: 32,
  recoveryMs: 5_000,
  visibleReps: 1,
  chainRounds: 1,
  chainMs: 1_500,
  chainWarmupMs: 500,
  chainCostEvents: 10_000,
  chainCostRepeats: 1,
};

/** What the scenarios share: the service, the database, and what the report collects. */
export class Bench {
  readonly rows: Row[] = [];
  readonly cpu: Record<string, CpuSplit> = {};
  readonly details: Record<string, unknown> = {};
  /** Things that went wrong (a failed check, a crashed scenario): `--quick` exits non-zero. */
  readonly problems: string[] = [];
  /** Events each tenant had accepted, as the clients counted them. */
  readonly accepted = new Map<string, number>();
  /**
   * Tenants written through the API and left out of accounting: the COPY-loaded read tenant, and
   * those of a second service that has stopped (checked by their scenario while it ran).
   */
  readonly notAccounted = new Set<string>();
  ceiling?: { buffered: number; committed: number };
  readonly api: GqlConnection;
  readonly db: pg.Pool;
  readonly trackers: { postgres: CpuTracker; redis: CpuTracker };
  /** The service's resident memory at the end of each phase. */
  readonly rss: Record<string, number> = {};
  /** The service's V8 heap in use at the end of each phase (its /metrics), to tell a leak from a lazy GC. */
  readonly heapUsed: Record<string, number> = {};

  constructor(
    readonly quick: boolean,
    readonly p: Params,
    readonly databaseUrl: string,
    readonly databaseName: string,
    readonly service: Server,
    readonly lingerMs: number,
    redisPort: number,
    readonly serviceSpec: ServiceSpec,
  ) {
    this.api = new GqlConnection(service.url);
    this.trackers = {
      postgres: new CpuTracker(postgresProcess(databaseName)),
      redis: new CpuTracker(redisProcess(redisPort)),
    };
    this.rss.start = rssBytes(service.pid);
    this.db = new pg.Pool({
      connectionString: databaseUrl,
      max: 4,
      application_name: 'auditgraph-bench-check',
    });
  }

  snapshot(service: Server = this.service): CpuSnapshot {
    return cpuSnapshot({ service: service.pid }, this.trackers);
  }

  /**
   * Runs a phase and records the CPU each side used during it. `service`: the service process the
   * phase drives, when not the main one (its CPU, RSS and heap are the phase's "Service").
   */
  async phase<T>(
    name: string,
    fn: () => Promise<{ value: T; workerCpu: number; noopCpu?: number }>,
    opts: { service?: Server } = {},
  ): Promise<T> {
    const service = opts.service ?? this.service;
    log(`${name} …`);
    const a = this.snapshot(service);
    const { value, workerCpu, noopCpu } = await fn();
    const b = this.snapshot(service);
    this.cpu[name] = cpuSplit(a, b, workerCpu, noopCpu);
    this.rss[name] = rssBytes(service.pid);
    const heap = await this.heap(service);
    if (heap !== undefined) this.heapUsed[name] = heap;
    log(`${name} done in ${this.cpu[name].wallSeconds.toFixed(1)} s`);
    return value;
  }

  /** `nodejs_heap_size_used_bytes` from the service's /metrics (undefined if unavailable). */
  async heap(service: Server = this.service): Promise<number | undefined> {
    try {
      const res = await fetch(service.url.replace(/\/graphql$/, '/metrics'), {
        headers: { authorization: `Bearer ${BENCH_METRICS_TOKEN}` },
      });
      const text = await res.text();
      const m = text.match(/^nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\S+)/m);
      return m ? Number(m[1]) : undefined;
    } catch {
      return undefined;
    }
  }

  count(tenant: string, events: number): void {
    this.accepted.set(tenant, (this.accepted.get(tenant) ?? 0) + events);
  }

  countAll(byTenant: Record<string, number>): void {
    for (const [t, n] of Object.entries(byTenant)) this.count(t, n);
  }

  /** flushAudit for each tenant at once (through `api`); resolves with the wall time. */
  async flushAll(tenants: readonly string[], api: GqlConnection = this.api): Promise<number> {
    const t = performance.now();
    await Promise.all(
      tenants.map(async (tenant) => {
        const data = await api.request(tenant, FLUSH_MUTATION, { timeoutMs: 60_000 });
        if (data.flushAudit.__typename !== 'FlushAuditPayload') {
          this.problems.push(`flushAudit ${tenant}: ${JSON.stringify(data.flushAudit)}`);
        }
      }),
    );
    return performance.now() - t;
  }

  async stats(tenant: string, api: GqlConnection = this.api): Promise<Record<string, any>> {
    const data = await api.request(tenant, STATS_QUERY);
    return data.auditStats as Record<string, any>;
  }

  /**
   * count(*) of a tenant's events: all of them, only those the service wrote itself (event types
   * `auditgraph.*`: provisioning, access records), or only the clients'.
   */
  async countRows(tenant: string, which: 'all' | 'service' | 'clients' = 'all'): Promise<number> {
    const where = {
      all: '',
      service: ` where event_type like 'auditgraph.%'`,
      clients: ` where event_type not like 'auditgraph.%'`,
    }[which];
    const r = await this.db.query<{ n: string }>(
      `select count(*) as n from "t_${tenant}".audit_events${where}`,
    );
    return Number(r.rows[0]!.n);
  }

  /**
   * Provisions tenants through the API (one COMMITTED event each; through `api`, the main
   * service's by default), outside any measurement.
   */
  async provision(
    tenants: readonly string[],
    occurredAt: Date[] = [new Date()],
    api: GqlConnection = this.api,
  ): Promise<void> {
    const random = rng(99);
    for (const tenant of tenants) {
      const events = occurredAt.map((at) => makeEvent(random, at, `provision-${tenant}`));
      const data = await api.post(tenant, createBody('COMMITTED', events));
      const r = data.data?.createAuditEvents;
      if (r?.__typename !== 'CreateAuditEventsPayload') {
        throw new Error(`provisioning ${tenant}: ${JSON.stringify(data)}`);
      }
      this.count(tenant, events.length);
    }
  }

  add(row: Row): void {
    this.rows.push(row);
  }

  async close(): Promise<void> {
    this.trackers.postgres.stop();
    this.trackers.redis.stop();
    await this.api.close();
    await this.db.end();
  }
}

/** Several ingest workers at once (separate processes); their results merged. */
export async function ingestAcross(
  parts: { tenants: string[]; connections: number; callsPerSecond?: number }[],
  common: Omit<IngestJob, 'kind' | 'tenants' | 'connections' | 'callsPerSecond' | 'seed'>,
  seed: number,
): Promise<IngestResult & { workers: number }> {
  const workers = parts.map((p, i) =>
    startWorker<IngestResult>({ kind: 'ingest', ...common, ...p, seed: seed + i }),
  );
  const results = await Promise.all(workers.map((w) => w.result));
  const byTenant: Record<string, number> = {};
  for (const r of results) {
    for (const [t, n] of Object.entries(r.byTenant)) byTenant[t] = (byTenant[t] ?? 0) + n;
  }
  return {
    workers: results.length,
    calls: sum(results.map((r) => r.calls)),
    acceptedEvents: sum(results.map((r) => r.acceptedEvents)),
    backpressure: sum(results.map((r) => r.backpressure)),
    otherFailures: sum(results.map((r) => r.otherFailures)),
    failureSamples: results.flatMap((r) => r.failureSamples).slice(0, 10),
    skipped: sum(results.map((r) => r.skipped)),
    latenciesMs: results.flatMap((r) => r.latenciesMs),
    windowMs: Math.max(...results.map((r) => r.windowMs)),
    byTenant,
    slowCalls: results.flatMap((r) => r.slowCalls).slice(0, 20),
    cpuSeconds: sum(results.map((r) => r.cpuSeconds)),
  };
}

export function sum(xs: readonly number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

export function log(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}
