import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { TenantId } from './domain/tenant.js';
import type { DeadLetterEventKind, IngestEvents } from './ingest/events.js';
import type { IngestService } from './ingest/ingest-service.js';
import type { RetryWorker } from './ingest/retry-worker.js';
import { identityHolds, type TenantStats } from './ingest/stats.js';
import type { MaintenanceReport } from './lifecycle/maintenance.js';

/** What the metrics read; the real IngestService and RetryWorker satisfy it. */
export interface MetricsSources {
  ingest: Pick<
    IngestService,
    'stats' | 'tenantIds' | 'pendingTotal' | 'bufferBytes' | 'isDeadLetterQueueFull'
  >;
  events: IngestEvents;
  retryWorker: Pick<RetryWorker, 'lastDepth' | 'lastHealthy'>;
  instanceId: string;
  /** Node.js process metrics (`process_*`, `nodejs_*`, unprefixed so stock dashboards work). Default true. */
  defaultMetrics?: boolean;
}

export interface Metrics {
  /** This app's own registry (never prom-client's global one: several apps may share a process). */
  readonly registry: Registry;
  /** The Content-Type of `render()`'s text (Prometheus text format 0.0.4). */
  readonly contentType: string;
  /** The exposition text, computed now. */
  render(): Promise<string>;
  /** Chain checkpoints signed for a tenant. */
  observeCheckpoints(tenant: string, count: number): void;
  /** A chain verification finished. */
  observeVerification(tenant: string, ok: boolean, events: number): void;
  /** A maintenance run finished. */
  observeMaintenance(report: MaintenanceReport): void;
  /** A query document was compiled for execution (graphql/compiled-queries.ts). */
  observeQueryCompiled(): void;
  /** Stops listening to the write path's events. */
  close(): void;
}

const PREFIX = 'auditgraph_';
const DEAD_LETTER_KINDS: readonly DeadLetterEventKind[] = [
  'ENQUEUED',
  'RETRIED',
  'RECOVERED',
  'PARKED',
  'REPLAYED',
  'DISCARDED',
];

/** Per-tenant series read from TenantStats at scrape time. */
const TENANT_COUNTERS: readonly [name: string, key: keyof TenantStats, help: string][] = [
  ['events_accepted_total', 'accepted', 'Events accepted since the process started.'],
  ['events_stored_total', 'stored', 'Events stored (by the writer or by a dead-letter replay).'],
  ['events_duplicate_total', 'duplicates', 'Events found already stored (same id, occurredAt).'],
  ['events_discarded_total', 'discarded', 'Dead-lettered events discarded on purpose.'],
  ['events_replayed_total', 'replayed', 'Events stored out of the dead-letter queue.'],
  [
    'events_recovered_total',
    'recovered',
    'Events taken back from the journal of a process that stopped without writing them.',
  ],
  [
    'events_conflicts_total',
    'conflicts',
    'Duplicates whose content differed from the stored event.',
  ],
  ['events_expired_total', 'expired', 'Stored events removed by retention (outside the identity).'],
  ['batches_total', 'batches', 'Batches written.'],
  ['write_failures_total', 'failedWrites', 'Batch write attempts that failed.'],
];
const TENANT_GAUGES: readonly [name: string, key: keyof TenantStats, help: string][] = [
  ['events_pending', 'pending', 'Events in a buffer, in a write in flight, or in backoff.'],
  ['events_dead_lettered', 'deadLettered', 'Events currently in the dead-letter queue.'],
];

/**
 * Prometheus metrics of one app. Per-tenant values are read from the write path's own counters
 * at scrape time, all from one snapshot, so the identity
 * `accepted = stored + duplicate + pending + dead_lettered + discarded` holds within a scrape.
 * Nothing runs until a scrape except the listeners on `events` (histograms, step counter).
 */
export function createMetrics(sources: MetricsSources): Metrics {
  const registry = new Registry();
  if (sources.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  // The exposition text lists the metrics in the order they are registered here.
  registerTenantSeries(registry, sources.ingest);
  registerQueueGauges(registry, sources);
  new Gauge({
    name: `${PREFIX}instance_info`,
    help: 'This instance; the value is always 1.',
    labelNames: ['instance_id'],
    registers: [registry],
  }).set({ instance_id: sources.instanceId }, 1);

  const unsubscribe = observeWritePath(registry, sources.events);
  const lifecycle = registerLifecycle(registry);
  const compiled = new Counter({
    name: `${PREFIX}graphql_queries_compiled_total`,
    help:
      'Operation documents compiled for execution on this instance: one per query or mutation ' +
      'text executed more than once (while the parse cache holds it). A steady rise means ' +
      'callers send ever new texts.',
    registers: [registry],
  });
  return {
    registry,
    contentType: registry.contentType,
    render: () => registry.metrics(),
    ...lifecycle,
    observeQueryCompiled: () => compiled.inc(),
    close() {
      for (const off of unsubscribe) off();
    },
  };
}

/**
 * The per-tenant series: TENANT_COUNTERS, TENANT_GAUGES and whether the accounting identity
 * holds, each read from one snapshot of the write path's counters per scrape.
 */
function registerTenantSeries(registry: Registry, ingest: MetricsSources['ingest']): void {
  // Every collect() of one scrape runs in the same synchronous turn: one snapshot serves them
  // all, so the per-tenant series are mutually consistent; it is dropped at the next microtask.
  let snapshot: Map<TenantId, TenantStats> | undefined;
  const tenantStats = (): Map<TenantId, TenantStats> => {
    if (!snapshot) {
      snapshot = new Map(ingest.tenantIds().map((t) => [t, ingest.stats(t)]));
      queueMicrotask(() => {
        snapshot = undefined;
      });
    }
    return snapshot;
  };

  // Counted since the process started and never decreasing: exposed as counters, their values
  // set at scrape time (reset, then inc by the current count).
  for (const [name, key, help] of TENANT_COUNTERS) {
    new Counter({
      name: PREFIX + name,
      help,
      labelNames: ['tenant'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [tenant, s] of tenantStats()) this.inc({ tenant }, s[key] as number);
      },
    });
  }
  for (const [name, key, help] of TENANT_GAUGES) {
    new Gauge({
      name: PREFIX + name,
      help,
      labelNames: ['tenant'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [tenant, s] of tenantStats()) this.set({ tenant }, s[key] as number);
      },
    });
  }
  new Gauge({
    name: `${PREFIX}accounting_identity_holds`,
    help: '1 when accepted = stored + duplicates + pending + deadLettered + discarded, else 0.',
    labelNames: ['tenant'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [tenant, s] of tenantStats()) this.set({ tenant }, identityHolds(s) ? 1 : 0);
    },
  });
}

/** The buffer over all tenants and the dead-letter queue, read at scrape time. */
function registerQueueGauges(registry: Registry, sources: MetricsSources): void {
  const { ingest, retryWorker } = sources;
  new Gauge({
    name: `${PREFIX}buffer_events`,
    help: 'Events pending over all tenants (buffered, in flight, or in backoff).',
    registers: [registry],
    collect() {
      this.set(ingest.pendingTotal);
    },
  });
  new Gauge({
    name: `${PREFIX}buffer_bytes`,
    help: 'Bytes held by the pending events (limit BUFFER_MAX_BYTES).',
    registers: [registry],
    collect() {
      this.set(ingest.bufferBytes);
    },
  });

  // The dead-letter queue as the retry worker last saw it (every DLQ_POLL_MS).
  const depthGauge = (name: string, help: string, value: () => number) =>
    new Gauge({
      name: PREFIX + name,
      help,
      registers: [registry],
      collect() {
        this.set(value());
      },
    });
  depthGauge(
    'dead_letter_entries',
    'Dead letters (batches) in the queue, active and parked.',
    () => retryWorker.lastDepth.entries,
  );
  depthGauge(
    'dead_letter_events',
    'Events in the dead-letter queue, active and parked.',
    () => retryWorker.lastDepth.events,
  );
  depthGauge(
    'dead_letter_parked_entries',
    'Parked dead letters (no more automatic replays).',
    () => retryWorker.lastDepth.parkedEntries,
  );
  depthGauge(
    'dead_letter_parked_events',
    'Events in parked dead letters.',
    () => retryWorker.lastDepth.parkedEvents,
  );
  depthGauge(
    'dead_letter_oldest_age_seconds',
    'Age of the oldest dead letter; 0 when the queue is empty.',
    () => retryWorker.lastDepth.oldestAgeMs / 1000,
  );
  depthGauge('dead_letter_queue_up', '1 when the dead-letter queue answers, else 0.', () =>
    retryWorker.lastHealthy ? 1 : 0,
  );
  depthGauge(
    'dead_letter_queue_full',
    '1 while the queue is at DLQ_MAX_EVENTS and writes are refused, else 0.',
    () => (ingest.isDeadLetterQueueFull ? 1 : 0),
  );
}

/**
 * The write path's histograms and dead-letter step counter, fed by its events. Answers what
 * stops listening to them.
 */
function observeWritePath(registry: Registry, events: IngestEvents): (() => void)[] {
  const steps = new Counter({
    name: `${PREFIX}dead_letter_steps_total`,
    help: 'Steps in the life of dead letters seen by this instance, by kind.',
    labelNames: ['kind'],
    registers: [registry],
  });
  for (const kind of DEAD_LETTER_KINDS) steps.inc({ kind }, 0);

  const batchSize = new Histogram({
    name: `${PREFIX}batch_size_events`,
    help: 'Events settled per batch (stored, duplicate or dead-lettered), by trigger.',
    labelNames: ['trigger'],
    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000],
    registers: [registry],
  });
  const batchWrite = new Histogram({
    name: `${PREFIX}batch_write_seconds`,
    help: 'Time to write one batch (transaction, row isolation, dead-lettering refused rows), by trigger.',
    labelNames: ['trigger'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  const commitWait = new Histogram({
    name: `${PREFIX}commit_wait_seconds`,
    help: 'Time a COMMITTED createAuditEvents call waited for its events to settle, by outcome.',
    labelNames: ['outcome'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });

  return [
    events.onBatchSettled((b) => {
      if (b.records.length > 0) batchSize.observe({ trigger: b.trigger }, b.records.length);
      // A batch dead-lettered after a failed attempt reports 0: it measured no write.
      if (b.durationMs > 0) batchWrite.observe({ trigger: b.trigger }, b.durationMs / 1000);
    }),
    events.onDeadLetter((e) => steps.inc({ kind: e.kind })),
    events.onCommitWaited((e) => commitWait.observe({ outcome: e.outcome }, e.ms / 1000)),
  ];
}

/** Integrity and lifecycle: set by the checkpoint service, the chain auditor and maintenance. */
function registerLifecycle(
  registry: Registry,
): Pick<Metrics, 'observeCheckpoints' | 'observeVerification' | 'observeMaintenance'> {
  const counter = (name: string, help: string, labelNames: string[] = []) =>
    new Counter({ name: PREFIX + name, help, labelNames, registers: [registry] });
  const gauge = (name: string, help: string, labelNames: string[] = []) =>
    new Gauge({ name: PREFIX + name, help, labelNames, registers: [registry] });
  const checkpointsSigned = counter(
    'chain_checkpoints_signed_total',
    'Chain heads signed as checkpoints by this instance.',
    ['tenant'],
  );
  const verifications = counter(
    'chain_verifications_total',
    'Chain verifications run on this instance, by result (ok, broken).',
    ['tenant', 'result'],
  );
  const verifiedEvents = counter(
    'chain_events_verified_total',
    'Events whose chain link was re-computed by verifications on this instance.',
    ['tenant'],
  );
  const maintenanceRuns = counter(
    'maintenance_runs_total',
    'Maintenance runs on this instance, by whether it held the leader lock.',
    ['leader'],
  );
  const maintenanceLast = gauge(
    'maintenance_last_run_timestamp_seconds',
    'When this instance last finished a maintenance run as leader.',
  );
  const monthsDropped = counter(
    'retention_months_dropped_total',
    'Month partitions dropped by retention (runs led by this instance).',
    ['tenant'],
  );
  const monthsHeld = gauge(
    'retention_months_held',
    'Months past retention kept because of legal holds, at the last run led here.',
    ['tenant'],
  );
  const maintenanceProblems = counter(
    'maintenance_problems_total',
    'Things a maintenance run could not do (each also logged at error).',
  );

  return {
    observeCheckpoints(tenant, count) {
      checkpointsSigned.inc({ tenant }, count);
    },
    observeVerification(tenant, ok, events) {
      verifications.inc({ tenant, result: ok ? 'ok' : 'broken' });
      verifiedEvents.inc({ tenant }, events);
    },
    observeMaintenance(report) {
      maintenanceRuns.inc({ leader: String(report.leader) });
      if (!report.leader) return;
      maintenanceLast.set(report.finishedAt.getTime() / 1000);
      for (const t of report.tenants) {
        monthsDropped.inc({ tenant: t.tenant }, t.dropped.length);
        monthsHeld.set({ tenant: t.tenant }, t.held.length);
        maintenanceProblems.inc(t.problems.length);
      }
    },
  };
}
