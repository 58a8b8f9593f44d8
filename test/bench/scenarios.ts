import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import { measureChainCost } from './chain-cost.js';
import { ROOT, runWorker, type Server, spawnServer, startWorker } from './child-processes.js';
import { type Bench, ingestAcross, log, sum } from './context.js';
import { FLUSH_MUTATION } from './events.js';
import { GqlConnection } from './gql-client.js';
import { peakRssBytes, processCpuSeconds, resetPeakRss, rssBytes } from './proc-stats.js';
import { fmt } from './report.js';
import { median, percentile, sleep } from './util.js';
import type {
  LatencyResult,
  ReadLoadResult,
  ReadsResult,
  SqlLoadResult,
  SubscribersResult,
  VisibleResult,
} from './worker-protocol.js';

export const SCRATCH = { copy: 'bench_copy', insert: 'bench_insert', raw: 'bench_raw' };

const p50 = (xs: number[]) => percentile(xs, 50);
const p99 = (xs: number[]) => percentile(xs, 99);
const range = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}_${i}`);

/** Events per call in every ingest scenario. */
const EVENTS_PER_CALL = 100;

function checkFailures(
  bench: Bench,
  what: string,
  r: { otherFailures?: number; failures?: number; failureSamples: string[] },
) {
  const n = r.otherFailures ?? r.failures ?? 0;
  if (n > 0)
    bench.problems.push(
      `${what}: ${n} failed calls, e.g. ${r.failureSamples.slice(0, 3).join(' | ')}`,
    );
}

/** Microseconds, whole. */
const us = (v: number | undefined) => `${(v ?? 0).toFixed(0)} µs`;

/** 1. Ingest ceiling: COPY, 4×1000-row INSERT, no-op Yoga, then the service BUFFERED and COMMITTED. */
export async function ingestCeiling(bench: Bench): Promise<void> {
  const { p } = bench;
  const now = Date.now();
  const sqlJob = {
    databaseUrl: bench.databaseUrl,
    from: now - 5_000,
    to: now,
    perCorrelation: 100,
    seed: 1,
  };
  const copy = await bench.phase('1 COPY baseline', async () => {
    const r = await runWorker<SqlLoadResult>({
      kind: 'copy',
      schema: SCRATCH.copy,
      rows: p.baselineRows,
      ...sqlJob,
    });
    return { value: r, workerCpu: r.cpuSeconds };
  });
  const copyRate = copy.rows / copy.seconds;
  const insert = await bench.phase('1 INSERT baseline', async () => {
    const r = await runWorker<SqlLoadResult>({
      kind: 'insert',
      schema: SCRATCH.insert,
      rows: p.baselineRows,
      connections: 4,
      rowsPerStatement: 1000,
      ...sqlJob,
    });
    return { value: r, workerCpu: r.cpuSeconds };
  });
  const insertRate = insert.rows / insert.seconds;
  bench.add({
    scenario: '1 ingest',
    figure: 'COPY FROM STDIN, 1 connection (baseline)',
    value: fmt.rate(copyRate),
    baseline: '—',
    ratio: '—',
    target: 'reference',
    met: null,
    data: { ...copy, rowsPerSecond: copyRate },
  });
  bench.add({
    scenario: '1 ingest',
    figure: 'multi-row INSERT (prepared), 1000 rows × 4 connections (baseline)',
    value: fmt.rate(insertRate),
    baseline: `COPY ${fmt.rate(copyRate)}`,
    ratio: fmt.ratio(insertRate / copyRate),
    target: 'reference',
    met: null,
    data: { ...insert, rowsPerSecond: insertRate },
  });

  const common = {
    durationMs: p.ingestMs,
    warmupMs: p.ingestWarmupMs,
    eventsPerCall: EVENTS_PER_CALL,
    honourBackpressure: true,
  } as const;
  const tenants = (prefix: string) => range(prefix, 4);
  // 8 clients over 4 tenants: two worker processes of 4 connections, each covering all 4 tenants.
  const parts = (ts: string[]) => [
    { tenants: ts, connections: 4 },
    { tenants: ts, connections: 4 },
  ];

  const noopResult = await bench.phase('1 no-op Yoga', async () => {
    const noop = await spawnServer('test/bench/noop-server.ts', {});
    try {
      const r = await ingestAcross(
        parts(tenants('noop')),
        { url: noop.url, ack: 'BUFFERED', ...common },
        100,
      );
      // Read before it exits: its start-up and the whole run are its CPU in this phase.
      return { value: r, workerCpu: r.cpuSeconds, noopCpu: processCpuSeconds(noop.pid) };
    } finally {
      await noop.stop();
    }
  });
  const noopRate = noopResult.acceptedEvents / (noopResult.windowMs / 1000);
  checkFailures(bench, 'no-op Yoga', noopResult);
  bench.add({
    scenario: '1 ingest',
    figure: 'Yoga, same input types, no-op resolver (GraphQL layer ceiling)',
    value: fmt.rate(noopRate),
    baseline: `COPY ${fmt.rate(copyRate)}`,
    ratio: fmt.ratio(noopRate / copyRate),
    target: 'reference',
    met: null,
    data: {
      rate: noopRate,
      calls: noopResult.calls,
      latencyP50: p50(noopResult.latenciesMs),
      latencyP99: p99(noopResult.latenciesMs),
    },
  });

  const rates = { buffered: 0, committed: 0 };
  const cpuPerEvent: Record<string, number> = {
    noop: (bench.cpu['1 no-op Yoga']!.noop / noopResult.acceptedEvents) * 1e6,
  };
  for (const ack of ['BUFFERED', 'COMMITTED'] as const) {
    const ts = tenants(ack === 'BUFFERED' ? 's1_buf' : 's1_com');
    // Existing tenants: provisioning (migrations, partitions) is not part of the ceiling.
    await bench.provision(ts);
    const r = await bench.phase(`1 service ${ack}`, async () => {
      const r = await ingestAcross(
        parts(ts),
        { url: bench.service.url, ack, ...common },
        ack === 'BUFFERED' ? 200 : 300,
      );
      // BUFFERED counts until what was accepted is stored: the window plus the final flush.
      const drainMs = await bench.flushAll(ts);
      return { value: { ...r, drainMs }, workerCpu: r.cpuSeconds };
    });
    bench.countAll(r.byTenant);
    checkFailures(bench, `service ${ack}`, r);
    const seconds = (r.windowMs + (ack === 'BUFFERED' ? r.drainMs : 0)) / 1000;
    const rate = r.acceptedEvents / seconds;
    rates[ack === 'BUFFERED' ? 'buffered' : 'committed'] = rate;
    cpuPerEvent[ack] = (bench.cpu[`1 service ${ack}`]!.service / r.acceptedEvents) * 1e6;
    const want = ack === 'BUFFERED' ? 0.6 : 0.5;
    bench.add({
      scenario: '1 ingest',
      figure: `createAuditEvents ${ack}, 8 clients × 100 events, 4 tenants${ack === 'BUFFERED' ? ' (accepted ÷ window + final flush)' : ''}`,
      value: fmt.rate(rate),
      baseline: `COPY ${fmt.rate(copyRate)}`,
      ratio: fmt.ratio(rate / copyRate),
      target: `≥ ${want}× COPY`,
      met: rate >= want * copyRate,
      data: {
        rate,
        vsNoop: rate / noopRate,
        vsInsert: rate / insertRate,
        calls: r.calls,
        accepted: r.acceptedEvents,
        backpressure: r.backpressure,
        windowMs: r.windowMs,
        drainMs: r.drainMs,
        callP50: p50(r.latenciesMs),
        callP99: p99(r.latenciesMs),
      },
    });
  }
  bench.add({
    scenario: '1 ingest',
    figure:
      'service CPU per accepted event (its CPU-seconds in the phase ÷ events accepted), BUFFERED / COMMITTED',
    value: `${us(cpuPerEvent.BUFFERED)} / ${us(cpuPerEvent.COMMITTED)}`,
    baseline: `no-op Yoga ${us(cpuPerEvent.noop)}`,
    ratio: fmt.ratio((cpuPerEvent.BUFFERED ?? 0) / (cpuPerEvent.noop || 1)),
    target: 'reference',
    met: null,
    data: cpuPerEvent,
  });
  bench.ceiling = rates;
  await journalCost(bench);
  await workersScale(bench);
}

/**
 * What the machine's other core gives: the service (one process) against a second service with
 * WORKERS=2 (two processes on one port), same database and Redis, alternating rounds of scenario
 * 1's BUFFERED load; throughput two ÷ one.
 */
async function workersScale(bench: Bench): Promise<void> {
  const { p } = bench;
  if (!bench.serviceSpec.env.REDIS_URL || (bench.serviceSpec.env.WORKERS ?? '1') !== '1') {
    log('1 workers not measured: the service runs without Redis or with WORKERS already');
    return;
  }
  const { runs, both } = await alternateOnOff(bench, {
    scenario: '1 ingest',
    what: 'workers',
    offEnv: { WORKERS: '2' },
    acks: ['BUFFERED'],
    seed: 170,
    whileBoth: async (_sides, ofSide) =>
      checkAccounting(bench, [...ofSide('on'), ...ofSide('off')]),
  });
  if (both.bad.length > 0) {
    bench.problems.push(`workers accounting: ${JSON.stringify(both.bad).slice(0, 1000)}`);
  }
  const { on, off, perRound } = onOffSummary(runs, 'BUFFERED', p.chainRounds);
  bench.add({
    scenario: '1 ingest',
    figure:
      'createAuditEvents BUFFERED, WORKERS=2 (a second service: two processes on one port) vs ' +
      'the service (one process), same database and Redis, 8 clients × 100 events over 4 ' +
      `tenants a side; ${p.chainRounds} round${p.chainRounds > 1 ? 's' : ''} of ` +
      `${p.chainMs / 1000} s each (per round: ${perRound.map((x) => fmt.ratio(1 / x)).join(', ')}); ` +
      `accounting after flush: ${both.identity} of ${both.bad.length + both.identity} tenants hold`,
    value: fmt.rate(off.rate),
    baseline: `one process ${fmt.rate(on.rate)}`,
    ratio: fmt.ratio(off.rate / on.rate),
    target: 'reference',
    met: null,
    data: { one: on, two: off, perRound: perRound.map((x) => 1 / x), runs },
  });
}

/**
 * What the write-ahead journal costs BUFFERED ingest: the service (JOURNAL on, its default)
 * against a second service with JOURNAL=off (BUFFERED in memory), same database, alternating
 * rounds of scenario 1's load; throughput on ÷ off, and what the journal adds to a call's
 * p50 and p99.
 */
async function journalCost(bench: Bench): Promise<void> {
  const { p } = bench;
  if (bench.serviceSpec.env.JOURNAL === 'off') {
    log('1 journal cost not measured: the service itself runs with JOURNAL=off');
    return;
  }
  const { runs, both } = await alternateOnOff(bench, {
    scenario: '1 ingest',
    what: 'journal',
    offEnv: { JOURNAL: 'off' },
    acks: ['BUFFERED'],
    seed: 150,
    whileBoth: async (_sides, ofSide) =>
      checkAccounting(bench, [...ofSide('on'), ...ofSide('off')]),
  });
  if (both.bad.length > 0) {
    bench.problems.push(`journal cost accounting: ${JSON.stringify(both.bad).slice(0, 1000)}`);
  }
  const { on, off, ratio, perRound } = onOffSummary(runs, 'BUFFERED', p.chainRounds);
  bench.add({
    scenario: '1 ingest',
    figure:
      'createAuditEvents BUFFERED, journal on (the service) vs off (a second service with ' +
      `JOURNAL=off, same database), 8 clients × 100 events over 4 tenants a side; ${p.chainRounds} ` +
      `round${p.chainRounds > 1 ? 's' : ''} of ${p.chainMs / 1000} s on, then off, accepted ÷ ` +
      `window + final flush (per round: ${perRound.map((x) => fmt.ratio(x)).join(', ')}); ` +
      `accounting after flush: ${both.identity} of ${both.bad.length + both.identity} tenants hold`,
    value: fmt.rate(on.rate),
    baseline: `journal off ${fmt.rate(off.rate)}`,
    ratio: fmt.ratio(ratio),
    target: '≥ 0.85× off',
    met: ratio >= 0.85 && both.bad.length === 0,
    data: { on, off, ratio, perRound, runs },
  });
  bench.add({
    scenario: '1 ingest',
    figure:
      'what the journal adds to a BUFFERED call (median over rounds of each side’s p50 / p99, ' +
      'on minus off)',
    value: `p50 +${fmt.ms(on.callP50 - off.callP50)}, p99 +${fmt.ms(on.callP99 - off.callP99)}`,
    baseline: `off p50 ${fmt.ms(off.callP50)}, p99 ${fmt.ms(off.callP99)}`,
    ratio: fmt.ratio(on.callP99 / off.callP99),
    target: 'reference',
    met: null,
    data: { onP50: on.callP50, onP99: on.callP99, offP50: off.callP50, offP99: off.callP99 },
  });
}

/** Short BUFFERED and COMMITTED runs, when scenario 1 was not run but 4 or 5 need a ceiling. */
export async function calibrate(bench: Bench): Promise<void> {
  const rates = { buffered: 0, committed: 0 };
  for (const ack of ['BUFFERED', 'COMMITTED'] as const) {
    const ts = range(ack === 'BUFFERED' ? 'cal_buf' : 'cal_com', 4);
    const r = await bench.phase(`calibrate ${ack}`, async () => {
      const r = await ingestAcross(
        [
          { tenants: ts, connections: 4 },
          { tenants: ts, connections: 4 },
        ],
        {
          url: bench.service.url,
          ack,
          durationMs: 5_000,
          warmupMs: 1_000,
          eventsPerCall: EVENTS_PER_CALL,
          honourBackpressure: true,
        },
        400,
      );
      const drainMs = await bench.flushAll(ts);
      return { value: { ...r, drainMs }, workerCpu: r.cpuSeconds };
    });
    bench.countAll(r.byTenant);
    rates[ack === 'BUFFERED' ? 'buffered' : 'committed'] =
      r.acceptedEvents / ((r.windowMs + (ack === 'BUFFERED' ? r.drainMs : 0)) / 1000);
  }
  bench.ceiling = rates;
  log(`calibrated ceiling: ${JSON.stringify(rates)}`);
}

/** 2. Commit latency: COMMITTED calls at a modest rate, and flushAudit with 1,000 pending. */
export async function commitLatency(bench: Bench): Promise<void> {
  const { p } = bench;
  const target = (raw: number) => 2 * raw + bench.lingerMs;
  await bench.provision(['s2_commit', 's2_flush']);
  const commit = await bench.phase('2 commit latency', async () => {
    const r = await runWorker<LatencyResult>({
      kind: 'commit-latency',
      url: bench.service.url,
      tenant: 's2_commit',
      databaseUrl: bench.databaseUrl,
      scratchSchema: SCRATCH.raw,
      samples: p.commitSamples,
      callsPerSecond: p.commitCallsPerSecond,
      eventsPerCall: 100,
      seed: 21,
    });
    return { value: r, workerCpu: r.cpuSeconds };
  });
  bench.count('s2_commit', commit.acceptedEvents);
  checkFailures(bench, 'commit latency', commit);
  bench.add({
    scenario: '2 commit',
    figure: `COMMITTED call, 100 events, ${p.commitCallsPerSecond}/s, p50`,
    value: fmt.ms(p50(commit.api)),
    baseline: `raw prepared INSERT txn ${fmt.ms(p50(commit.raw))}`,
    ratio: fmt.ratio(p50(commit.api) / p50(commit.raw)),
    target: 'reference',
    met: null,
  });
  bench.add({
    scenario: '2 commit',
    figure: 'COMMITTED call, 100 events, p99',
    value: fmt.ms(p99(commit.api)),
    baseline: `raw prepared INSERT txn ${fmt.ms(p99(commit.raw))}`,
    ratio: fmt.ratio(p99(commit.api) / p99(commit.raw)),
    target: `≤ 2× + ${bench.lingerMs} ms linger = ${fmt.ms(target(p99(commit.raw)))}`,
    met: p99(commit.api) <= target(p99(commit.raw)),
    data: {
      samples: commit.api.length,
      apiP50: p50(commit.api),
      apiP99: p99(commit.api),
      rawP50: p50(commit.raw),
      rawP99: p99(commit.raw),
    },
  });

  const flush = await bench.phase('2 flush latency', async () => {
    const r = await runWorker<LatencyResult>({
      kind: 'flush-latency',
      url: bench.service.url,
      tenant: 's2_flush',
      databaseUrl: bench.databaseUrl,
      scratchSchema: SCRATCH.raw,
      samples: p.flushSamples,
      callsPerSecond: 0,
      eventsPerCall: 1000,
      seed: 22,
    });
    return { value: r, workerCpu: r.cpuSeconds };
  });
  bench.count('s2_flush', flush.acceptedEvents);
  checkFailures(bench, 'flush latency', flush);
  bench.add({
    scenario: '2 commit',
    figure: 'flushAudit with 1,000 events pending (1 BUFFERED call of 1,000 just before), p50',
    value: fmt.ms(p50(flush.api)),
    baseline: `raw prepared INSERT txn of 1,000 ${fmt.ms(p50(flush.raw))}`,
    ratio: fmt.ratio(p50(flush.api) / p50(flush.raw)),
    target: 'reference',
    met: null,
  });
  bench.add({
    scenario: '2 commit',
    figure: 'flushAudit with 1,000 events pending, p99',
    value: fmt.ms(p99(flush.api)),
    baseline: `raw prepared INSERT txn of 1,000 ${fmt.ms(p99(flush.raw))}`,
    ratio: fmt.ratio(p99(flush.api) / p99(flush.raw)),
    target: `≤ 2× + ${bench.lingerMs} ms = ${fmt.ms(target(p99(flush.raw)))}`,
    met: p99(flush.api) <= target(p99(flush.raw)),
    data: {
      samples: flush.api.length,
      apiP50: p50(flush.api),
      apiP99: p99(flush.api),
      rawP50: p50(flush.raw),
      rawP99: p99(flush.raw),
      waitedForMedian: median(flush.waitedFor),
    },
  });
  bench.add({
    scenario: '2 commit',
    figure: 'BUFFERED write of 1,000 + flushAudit, end to end, p99',
    value: fmt.ms(p99(flush.apiEndToEnd)),
    baseline: `raw prepared INSERT txn of 1,000 ${fmt.ms(p99(flush.raw))}`,
    ratio: fmt.ratio(p99(flush.apiEndToEnd) / p99(flush.raw)),
    target: `≤ 2× + ${bench.lingerMs} ms = ${fmt.ms(target(p99(flush.raw)))}`,
    met: p99(flush.apiEndToEnd) <= target(p99(flush.raw)),
    data: { p50: p50(flush.apiEndToEnd), p99: p99(flush.apiEndToEnd) },
  });
}

function monthStart(d: Date, add = 0): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + add, 1));
}

/**
 * Scenario 3's closed loop: the service against a plain `node:http` server over the same keyset
 * SQL and JSON (plain-read-server.ts), at 4 and 16 concurrent clients, on the three queries.
 * Targets: requests/s ≥ 0.8× the plain server's, p50 ≤ 1.3× its p50, with AUDIT_READS on (the
 * default). AUTH_MODE=dev records no reads (nobody is authenticated to name), so the service
 * side is a second instance with AUTH_MODE=keys, same database and Redis, read with an API key:
 * every page it answers writes its access record, and the run checks afterwards that each did.
 */
async function readLoad(
  bench: Bench,
  tenant: string,
  reads: ReadsResult,
  correlationIds: string[],
): Promise<void> {
  const { p } = bench;
  const spec = bench.serviceSpec;
  const apiKey = createApiKey(spec.env, tenant, 'events:read,events:write', 'bench-reads');
  const keyed = await spawnServer(
    spec.entry,
    {
      ...spec.env,
      AUTH_MODE: 'keys',
      AUDIT_READS: 'true',
      INSTANCE_ID: `${spec.env.INSTANCE_ID ?? `bench-${process.pid}`}-keyed`,
      DLQ_DIR: join(spec.tempDir, 'dlq-keyed'),
    },
    { nodeArgs: spec.nodeArgs },
  );
  let plain: Server | undefined;
  let r: ReadLoadResult;
  let recorded: number;
  try {
    plain = await spawnServer('test/bench/plain-read-server.ts', {
      BENCH_DATABASE_URL: bench.databaseUrl,
      BENCH_SCHEMA: `t_${tenant}`,
    });
    const plainUrl = plain.url;
    const recordsBefore = await accessReadRecords(bench, tenant);
    const plainCursor = Buffer.from(
      JSON.stringify([reads.deepPosition.occurredAt, reads.deepPosition.id]),
    ).toString('base64url');
    r = await bench.phase(
      '3 closed loop',
      async () => {
        const r = await runWorker<ReadLoadResult>({
          kind: 'readLoad',
          tenant,
          targets: [
            { name: 'service', url: keyed.url, deepCursor: reads.deepCursor, apiKey },
            { name: 'plain', url: plainUrl, deepCursor: plainCursor },
          ],
          concurrency: [4, 16],
          durationMs: p.readLoadMs,
          warmupMs: p.readLoadWarmupMs,
          correlationIds,
          seed: 37,
        });
        // The keyed instance is this phase's service; the plain server's CPU (and the idle
        // first instance's) shows under "Other processes".
        return { value: r, workerCpu: r.cpuSeconds };
      },
      { service: keyed },
    );
    const api = new GqlConnection(keyed.url, { apiKey });
    try {
      await api.request(tenant, FLUSH_MUTATION, { timeoutMs: 60_000 });
    } finally {
      await api.close();
    }
    recorded = (await accessReadRecords(bench, tenant)) - recordsBefore;
  } finally {
    await plain?.stop();
    await keyed.stop();
  }
  checkFailures(bench, 'reads closed loop', r);
  const answered = sum(r.runs.filter((x) => x.target === 'service').map((x) => x.answered));
  bench.add({
    scenario: '3 read',
    figure:
      'closed loop, AUDIT_READS on: access records stored (after flushAudit) for the pages the ' +
      'service answered, warm-up included',
    value: fmt.int(recorded),
    baseline: `${fmt.int(answered)} pages answered`,
    ratio: '—',
    target: 'one per page',
    met: recorded === answered,
  });
  const names = { first: 'first page', deep: 'deep page', correlation: 'one correlation id' };
  for (const query of ['first', 'deep', 'correlation'] as const) {
    for (const clients of [4, 16]) {
      const of = (target: string) =>
        r.runs.find((x) => x.target === target && x.query === query && x.clients === clients)!;
      const svc = of('service');
      const raw = of('plain');
      const rps = (x: typeof svc) => x.requests / x.seconds;
      const ratio = rps(svc) / rps(raw);
      const p50Ratio = p50(svc.latenciesMs) / p50(raw.latenciesMs);
      bench.add({
        scenario: '3 read',
        figure:
          `auditEvents(first: 50) ${names[query]}, ${clients} clients closed loop: requests/s; ` +
          `p50 ${fmt.ms(p50(svc.latenciesMs))} vs ${fmt.ms(p50(raw.latenciesMs))} (${fmt.ratio(p50Ratio)}, target ≤ 1.3×)`,
        value: `${fmt.int(Math.round(rps(svc)))}/s`,
        baseline: `plain node:http + pg ${fmt.int(Math.round(rps(raw)))}/s`,
        ratio: fmt.ratio(ratio),
        target: '≥ 0.8× plain, p50 ≤ 1.3×',
        met: ratio >= 0.8 && p50Ratio <= 1.3,
        data: {
          serviceRps: rps(svc),
          plainRps: rps(raw),
          serviceP50: p50(svc.latenciesMs),
          plainP50: p50(raw.latenciesMs),
          serviceP99: p99(svc.latenciesMs),
          plainP99: p99(raw.latenciesMs),
        },
      });
    }
  }
}

/** 3. Reading: 1,000,000 rows over 3 months (COPY), pages through GraphQL against raw SQL. */
export async function reading(bench: Bench): Promise<void> {
  const { p } = bench;
  const tenant = 's3_read';
  const now = new Date();
  const from = monthStart(now, -2);
  await bench.phase('3 load (COPY)', async () => {
    // Provisioned through the API; one event per month also creates those months' partitions.
    await bench.provision(
      [tenant],
      [0, 1, 2].map((m) => new Date(monthStart(now, -m).getTime() + 3_600_000)),
    );
    bench.notAccounted.add(tenant);
    const r = await runWorker<SqlLoadResult>({
      kind: 'copy',
      databaseUrl: bench.databaseUrl,
      schema: `t_${tenant}`,
      rows: p.readRows,
      from: from.getTime() + 7_200_000,
      to: now.getTime() - 60_000,
      perCorrelation: 150,
      seed: 7,
    });
    // Settle the table so autovacuum and a checkpoint do not land in the measurements.
    await bench.db.query(`vacuum analyze "t_${tenant}".audit_events`);
    await bench.db.query('checkpoint');
    bench.details.readLoad = {
      rows: r.rows,
      seconds: r.seconds,
      rowBytes: r.rowBytes,
      rowsPerSecond: r.rows / r.seconds,
    };
    return { value: r, workerCpu: r.cpuSeconds };
  });
  const correlations = Math.floor(p.readRows / 150);
  const correlationIds = Array.from(
    { length: Math.min(2_000, correlations) },
    (_, i) => `run-7-${Math.floor((i * correlations) / Math.min(2_000, correlations))}`,
  );
  const r = await bench.phase('3 reads', async () => {
    const r = await runWorker<ReadsResult>({
      kind: 'reads',
      url: bench.service.url,
      tenant,
      databaseUrl: bench.databaseUrl,
      schema: `t_${tenant}`,
      depth: p.readDepth,
      samples: p.readSamples,
      offsetSamples: p.offsetSamples,
      correlationIds,
      seed: 31,
    });
    return { value: r, workerCpu: r.cpuSeconds };
  });
  checkFailures(bench, 'reads', r);
  if (!r.deepIsExact) {
    bench.problems.push(
      'reads: the walk by cursor skipped or repeated rows, or its deep page differs from raw SQL',
    );
  }
  const depth = fmt.int(p.readDepth);
  const target = (raw: number) => 1.5 * raw + 2;
  const kinds = [
    ['first page (newest 50)', r.first],
    [`page ${depth} rows deep, by cursor`, r.deep],
    ['first page of one correlation id (150 events)', r.correlation],
  ] as const;
  for (const [name, s] of kinds) {
    bench.add({
      scenario: '3 read',
      figure: `auditEvents(first: 50) ${name}, p50`,
      value: fmt.ms(p50(s.api)),
      baseline: `raw keyset SQL ${fmt.ms(p50(s.raw))}`,
      ratio: fmt.ratio(p50(s.api) / p50(s.raw)),
      target: 'reference',
      met: null,
    });
    bench.add({
      scenario: '3 read',
      figure: `auditEvents(first: 50) ${name}, p99`,
      value: fmt.ms(p99(s.api)),
      baseline: `raw keyset SQL ${fmt.ms(p99(s.raw))}`,
      ratio: fmt.ratio(p99(s.api) / p99(s.raw)),
      target: `≤ 1.5× + 2 ms = ${fmt.ms(target(p99(s.raw)))}`,
      met: p99(s.api) <= target(p99(s.raw)),
      data: {
        samples: s.api.length,
        apiP50: p50(s.api),
        apiP99: p99(s.api),
        rawP50: p50(s.raw),
        rawP99: p99(s.raw),
      },
    });
  }
  bench.add({
    scenario: '3 read',
    figure: `deep page (${depth}) p99 vs first page p99, GraphQL`,
    value: fmt.ms(p99(r.deep.api)),
    baseline: `first page ${fmt.ms(p99(r.first.api))}`,
    ratio: fmt.ratio(p99(r.deep.api) / p99(r.first.api)),
    target: '≤ 1.2× first page',
    met: p99(r.deep.api) <= 1.2 * p99(r.first.api),
  });
  await readLoad(bench, tenant, r, correlationIds);
  bench.add({
    scenario: '3 read',
    figure: `OFFSET ${depth} (what keyset avoids), p50 / p99`,
    value: `${fmt.ms(p50(r.offset))} / ${fmt.ms(p99(r.offset))}`,
    baseline: `raw keyset deep ${fmt.ms(p50(r.deep.raw))} / ${fmt.ms(p99(r.deep.raw))}`,
    ratio: fmt.ratio(p50(r.offset) / p50(r.deep.raw)),
    target: `reference (${r.offset.length} samples)`,
    met: null,
    data: { p50: p50(r.offset), p99: p99(r.offset), walk: r.walk },
  });
}

/** 4. Subscriptions: graphql-ws and SSE subscribers to flushCompleted during ingest at half the ceiling. */
export async function subscriptions(bench: Bench): Promise<void> {
  const { p } = bench;
  if (!bench.ceiling) await calibrate(bench);
  const tenants = range('s4_sub', p.subTenants);
  // Existing tenants; what their provisioning wrote is settled before anyone subscribes.
  await bench.provision(tenants);
  await bench.flushAll(tenants);
  const ledger = async (t: string) =>
    (
      await bench.db.query<{ batch_id: string }>(`select batch_id from "t_${t}".batch_ledger`)
    ).rows.map((r) => r.batch_id);
  const before = new Map<string, Set<string>>();
  for (const t of tenants) before.set(t, new Set(await ledger(t)));
  const subs = tenants.flatMap((tenant) => [
    ...Array.from({ length: p.wsPerTenant }, () => ({ tenant, transport: 'ws' as const })),
    ...Array.from({ length: p.ssePerTenant }, () => ({ tenant, transport: 'sse' as const })),
  ]);
  const halves = [subs.filter((_, i) => i % 2 === 0), subs.filter((_, i) => i % 2 === 1)];
  const rate = bench.ceiling!.committed / 2;
  const result = await bench.phase('4 subscriptions', async () => {
    const workers = halves.map((part) =>
      startWorker<SubscribersResult>({
        kind: 'subscribers',
        url: bench.service.url,
        subscriptions: part,
        connectConcurrency: 50,
      }),
    );
    const ready = await Promise.all(
      workers.map(
        (w) =>
          new Promise<{ ready: number; failed: number; readyMs: number }>((resolve, reject) => {
            w.onProgress((m) => resolve(m as { ready: number; failed: number; readyMs: number }));
            w.result.catch(reject);
          }),
      ),
    );
    const failedToSubscribe = sum(ready.map((r) => r.failed));
    if (failedToSubscribe > 0)
      bench.problems.push(`subscriptions: ${failedToSubscribe} never got SubscriptionReady`);
    // COMMITTED ingest (one batch per call or so: the most messages) at half the COMMITTED ceiling.
    const half = Math.ceil(tenants.length / 2);
    const ingest = await ingestAcross(
      [
        {
          tenants: tenants.slice(0, half),
          connections: half,
          callsPerSecond: rate / EVENTS_PER_CALL / 2,
        },
        {
          tenants: tenants.slice(half),
          connections: tenants.length - half,
          callsPerSecond: rate / EVENTS_PER_CALL / 2,
        },
      ],
      {
        url: bench.service.url,
        ack: 'COMMITTED',
        durationMs: p.subMs,
        warmupMs: 0,
        eventsPerCall: EVENTS_PER_CALL,
        honourBackpressure: true,
      },
      500,
    );
    await bench.flushAll(tenants);
    const expected: Record<string, string[]> = {};
    const ignore: Record<string, string[]> = {};
    for (const t of tenants) {
      expected[t] = (await ledger(t)).filter((id) => !before.get(t)!.has(id));
      ignore[t] = [...before.get(t)!];
    }
    for (const w of workers) w.send({ type: 'check', expected, ignore, timeoutMs: 10_000 });
    const results = await Promise.all(workers.map((w) => w.result));
    return {
      value: { ingest, results, ready, batches: sum(Object.values(expected).map((e) => e.length)) },
      workerCpu: ingest.cpuSeconds + sum(results.map((r) => r.cpuSeconds)),
    };
  });
  bench.countAll(result.ingest.byTenant);
  checkFailures(bench, 'subscriptions ingest', result.ingest);
  const achieved = result.ingest.acceptedEvents / (result.ingest.windowMs / 1000);
  bench.details.subscriptions = {
    offeredRate: rate,
    achievedRate: achieved,
    batches: result.batches,
    readyMs: result.ready.map((r) => r.readyMs),
  };
  for (const transport of ['ws', 'sse'] as const) {
    const parts = result.results.map((r) => r[transport]);
    const lat = parts.flatMap((x) => x.latenciesMs);
    const missing = sum(parts.map((x) => x.missing));
    const unexpected = sum(parts.map((x) => x.unexpected));
    const interrupted = sum(parts.map((x) => x.interrupted));
    const errors = parts.flatMap((x) => x.errors);
    const n = sum(parts.map((x) => x.subscribers));
    const name = transport === 'ws' ? 'graphql-ws' : 'SSE';
    if (errors.length)
      bench.problems.push(`${name} subscribers: ${errors.slice(0, 3).join(' | ')}`);
    bench.add({
      scenario: '4 subscribe',
      figure: `${name}: ${fmt.int(n)} subscribers over ${tenants.length} tenants, ingest ${fmt.rate(achieved)} COMMITTED; commit → client p50`,
      value: fmt.ms(p50(lat)),
      baseline: '—',
      ratio: '—',
      target: 'reference',
      met: null,
    });
    bench.add({
      scenario: '4 subscribe',
      figure: `${name}: commit → client p99 (${fmt.int(lat.length)} messages)`,
      value: fmt.ms(p99(lat)),
      baseline: '—',
      ratio: '—',
      target: '≤ 20 ms',
      met: p99(lat) <= 20,
      data: { p50: p50(lat), p99: p99(lat), max: Math.max(...lat), messages: lat.length },
    });
    bench.add({
      scenario: '4 subscribe',
      figure: `${name}: messages lost (expected = batches in each tenant's ledger × its subscribers)`,
      value: fmt.int(missing),
      baseline: `${fmt.int(result.batches)} batches`,
      ratio: '—',
      target: '0',
      met: missing === 0 && interrupted === 0,
      data: { missing, unexpected, interrupted, duplicates: sum(parts.map((x) => x.duplicates)) },
    });
  }
}

/** 5. Overload: 10× the sustainable rate, open loop; backpressure, memory, and nothing lost. */
export async function overload(bench: Bench): Promise<void> {
  const { p } = bench;
  if (!bench.ceiling) await calibrate(bench);
  const sustainable = bench.ceiling!.buffered;
  const offered = 10 * sustainable;
  const tenants = range('s5_ovl', p.overloadTenants);
  await bench.provision(tenants);
  const pid = bench.service.pid;
  await sleep(2_000);
  const baselineRss = rssBytes(pid);
  resetPeakRss(pid);
  let sampledPeak = baselineRss;
  const sampler = setInterval(() => {
    sampledPeak = Math.max(sampledPeak, rssBytes(pid));
  }, 100);
  const half = Math.ceil(tenants.length / 2);
  const r = await bench.phase('5 overload', async () => {
    const r = await ingestAcross(
      [
        {
          tenants: tenants.slice(0, half),
          connections: 1,
          callsPerSecond: offered / EVENTS_PER_CALL / 2,
        },
        {
          tenants: tenants.slice(half),
          connections: 1,
          callsPerSecond: offered / EVENTS_PER_CALL / 2,
        },
      ],
      {
        url: bench.service.url,
        ack: 'BUFFERED',
        durationMs: p.overloadMs,
        warmupMs: 0,
        eventsPerCall: EVENTS_PER_CALL,
        honourBackpressure: false,
        openLoop: { maxInFlight: p.overloadInFlightPerWorker },
      },
      600,
    );
    return { value: r, workerCpu: r.cpuSeconds };
  });
  bench.countAll(r.byTenant);
  const flushMs = await bench.phase('5 final flush', async () => ({
    value: await bench.flushAll(tenants),
    workerCpu: 0,
  }));
  const peak = Math.max(sampledPeak, peakRssBytes(pid));
  // Back near the baseline: within 25% or 50 MB of it, whichever is larger, within recoveryMs.
  const near = Math.max(baselineRss * 1.25, baselineRss + 50 * 2 ** 20);
  const recoveryStart = performance.now();
  let after = rssBytes(pid);
  while (after > near && performance.now() - recoveryStart < p.recoveryMs) {
    await sleep(250);
    after = rssBytes(pid);
  }
  const recoveredMs = performance.now() - recoveryStart;
  clearInterval(sampler);

  let stored = 0;
  let lost = 0;
  for (const t of tenants) {
    const rows = await bench.countRows(t, 'clients');
    stored += rows;
    lost += Math.max(0, (bench.accepted.get(t) ?? 0) - rows);
  }
  const acceptedTotal = sum(tenants.map((t) => bench.accepted.get(t) ?? 0));
  const sent = r.calls;
  bench.details.overload = {
    sustainable,
    offered,
    sentCalls: sent,
    skippedCalls: r.skipped,
    accepted: r.acceptedEvents,
    backpressure: r.backpressure,
    otherFailures: r.otherFailures,
    baselineRss,
    peak,
    after,
    recoveredMs,
    flushMs,
  };
  const offeredCalls = sent + r.skipped;
  bench.add({
    scenario: '5 overload',
    figure:
      `offered ${fmt.rate(offered)} (${fmt.int(offeredCalls)} calls of 100) for ${p.overloadMs / 1000} s, open loop; ` +
      `${fmt.int(r.skipped)} not sent (${2 * p.overloadInFlightPerWorker} already in flight); answered accepted / BackpressureError / other`,
    value: `${fmt.int(sent - r.backpressure - r.otherFailures)} / ${fmt.int(r.backpressure)} / ${fmt.int(r.otherFailures)}`,
    baseline: `sustainable ${fmt.rate(sustainable)}`,
    ratio: `${fmt.ratio((sent * EVENTS_PER_CALL) / (r.windowMs / 1000) / sustainable)} sent`,
    target: 'other = 0',
    met: r.otherFailures === 0,
    data: {
      samples: r.failureSamples,
      skipped: r.skipped,
      acceptedRate: r.acceptedEvents / (r.windowMs / 1000),
      callP50: p50(r.latenciesMs),
      callP90: percentile(r.latenciesMs, 90),
      callP99: p99(r.latenciesMs),
      callMax: Math.max(...r.latenciesMs),
      slowCalls: r.latenciesMs.filter((ms) => ms > 5_000).length,
      slowCallSamples: r.slowCalls,
    },
  });
  checkFailures(bench, 'overload', r);
  bench.add({
    scenario: '5 overload',
    figure: 'peak RSS of the service',
    value: fmt.mb(peak),
    baseline: `before ${fmt.mb(baselineRss)}`,
    ratio: fmt.ratio(peak / baselineRss),
    target: '≤ 512 MB',
    met: peak <= 512 * 2 ** 20,
  });
  bench.add({
    scenario: '5 overload',
    figure: `RSS after the final flush (waited ${(recoveredMs / 1000).toFixed(1)} s)`,
    value: fmt.mb(after),
    baseline: `before ${fmt.mb(baselineRss)}`,
    ratio: fmt.ratio(after / baselineRss),
    target: `≤ ${fmt.mb(near)} within ${p.recoveryMs / 1000} s`,
    met: after <= near,
  });
  bench.add({
    scenario: '5 overload',
    figure: 'accepted events stored after the final flushAudit',
    value: `${fmt.int(stored)} of ${fmt.int(acceptedTotal)}`,
    baseline: '—',
    ratio: '—',
    target: 'all',
    met: lost === 0 && stored === acceptedTotal,
  });
  await refusalCost(bench);
}

/**
 * What a refused call costs the service against an accepted one: a second service whose write
 * rate is 100 events/s a tenant answers nearly every call of 100 with RateLimitedError (refused
 * before its input is coerced), driven closed loop without waiting; the accepted side is the
 * same load on the service, honouring backpressure, its flush included.
 */
async function refusalCost(bench: Bench): Promise<void> {
  const { p } = bench;
  const spec = bench.serviceSpec;
  const durationMs = Math.min(p.ingestMs, 10_000);
  const load = (url: string, ts: string[], honourBackpressure: boolean) =>
    ingestAcross(
      [{ tenants: ts, connections: 4 }],
      {
        url,
        ack: 'BUFFERED',
        durationMs,
        warmupMs: 0,
        eventsPerCall: EVENTS_PER_CALL,
        honourBackpressure,
      },
      700,
    );
  // Started first, so that its start-up is over before its phase.
  const limited = await spawnServer(
    spec.entry,
    {
      ...spec.env,
      RATE_LIMIT_EVENTS_PER_SECOND: String(EVENTS_PER_CALL),
      RATE_LIMIT_BURST_EVENTS: '0',
      MAX_EVENTS_PER_CALL: String(EVENTS_PER_CALL),
      INSTANCE_ID: `${spec.env.INSTANCE_ID ?? `bench-${process.pid}`}-limited`,
      DLQ_DIR: join(spec.tempDir, 'dlq-limited'),
    },
    { nodeArgs: spec.nodeArgs },
  );
  const limitedApi = new GqlConnection(limited.url);
  try {
    const acceptedTenants = range('s5_acc', 4);
    await bench.provision(acceptedTenants);
    const accepted = await bench.phase('5 accepted calls', async () => {
      const r = await load(bench.service.url, acceptedTenants, true);
      await bench.flushAll(acceptedTenants);
      return { value: r, workerCpu: r.cpuSeconds };
    });
    bench.countAll(accepted.byTenant);
    const acceptedCalls = accepted.acceptedEvents / EVENTS_PER_CALL;
    const perAccepted = (bench.cpu['5 accepted calls']!.service / acceptedCalls) * 1e6;

    const refusedTenants = range('s5_ref', 4);
    await bench.provision(refusedTenants);
    const refused = await bench.phase(
      '5 refused calls',
      async () => {
        const r = await load(limited.url, refusedTenants, false);
        await bench.flushAll(refusedTenants, limitedApi);
        return { value: r, workerCpu: r.cpuSeconds };
      },
      { service: limited },
    );
    bench.countAll(refused.byTenant);
    checkFailures(bench, 'refused calls', refused);
    const perRefused = (bench.cpu['5 refused calls']!.service / Math.max(1, refused.calls)) * 1e6;
    bench.add({
      scenario: '5 overload',
      figure:
        `service CPU per call of 100 refused (RateLimitedError, decided before the input is ` +
        `read; ${fmt.int(refused.backpressure)} refused and ${fmt.int(refused.acceptedEvents / EVENTS_PER_CALL)} ` +
        `accepted of ${fmt.int(refused.calls)} calls in ${durationMs / 1000} s, 4 clients) vs per call accepted`,
      value: us(perRefused),
      baseline: `accepted ${us(perAccepted)} (${fmt.int(acceptedCalls)} calls)`,
      ratio: fmt.ratio(perRefused / perAccepted),
      target: 'reference',
      met: null,
      data: { perRefused, perAccepted, refused, acceptedCalls },
    });
  } finally {
    await limitedApi.close();
    await limited.stop();
  }
}

/** 6. Time to visible: the incident (12 tenants × 150 events), flushed and committed. */
export async function timeToVisible(bench: Bench): Promise<void> {
  const { p } = bench;
  const tenants = range('s6_vis', 12);
  await bench.provision(tenants);
  const run = (
    mode: 'buffered-flush' | 'committed',
    ts: string[],
    reps: number,
    seed: number,
    baseline: boolean,
  ) =>
    bench.phase(`6 visible ${mode}${ts === tenants ? '' : ' (cold)'}`, async () => {
      const r = await runWorker<VisibleResult>({
        kind: 'visible',
        url: bench.service.url,
        tenants: ts,
        reps,
        mode,
        eventsPerTenant: 150,
        baseline: baseline
          ? { databaseUrl: bench.databaseUrl, scratchSchema: SCRATCH.raw }
          : undefined,
        seed,
      });
      bench.countAll(r.byTenant);
      checkFailures(bench, `visible ${mode}`, r);
      return { value: r, workerCpu: r.cpuSeconds };
    });
  const flushed = await run('buffered-flush', tenants, p.visibleReps, 61, true);
  const committed = await run('committed', tenants, p.visibleReps, 62, false);
  const cold = await run('buffered-flush', range('s6_cold', 12), 1, 63, false);
  const raw = Math.max(...flushed.baselineMs);
  const rows = [
    ['BUFFERED, then flushAudit, then read (12 tenants × 150 at once)', flushed],
    ['COMMITTED, no flush, then read', committed],
  ] as const;
  for (const [name, r] of rows) {
    const worst = Math.max(...r.wallMs);
    bench.add({
      scenario: '6 visible',
      figure: `${name}: worst of ${r.wallMs.length} (median ${fmt.ms(median(r.wallMs))}), first write → 1,800 read back`,
      value: fmt.ms(worst),
      baseline: `raw SQL INSERT + SELECT ${fmt.ms(raw)}`,
      ratio: fmt.ratio(worst / raw),
      target: '≤ 1000 ms',
      met: worst <= 1000 && r.rereads === 0,
      data: { wallMs: r.wallMs, rereads: r.rereads, baselineMs: flushed.baselineMs },
    });
  }
  bench.add({
    scenario: '6 visible',
    figure: 'same, BUFFERED + flushAudit, 12 new tenants (provisioned by their first write)',
    value: fmt.ms(Math.max(...cold.wallMs)),
    baseline: `raw SQL ${fmt.ms(raw)}`,
    ratio: fmt.ratio(Math.max(...cold.wallMs) / raw),
    target: 'reference',
    met: null,
    data: { wallMs: cold.wallMs, rereads: cold.rereads },
  });
}

/** One ingest run of an on/off comparison (scenario 7's hashing, scenario 1's journal). */
interface OnOffRun {
  round: number;
  ack: 'BUFFERED' | 'COMMITTED';
  side: 'on' | 'off';
  accepted: number;
  /** Counted time: the window, plus the final flush for BUFFERED (as in scenario 1). */
  seconds: number;
  rate: number;
  /** Events written in the run, warm-up included (what the service's CPU was spent on). */
  written: number;
  serviceCpuSeconds: number;
  backpressure: number;
  callP50: number;
  callP99: number;
}

interface OnOffSide {
  side: 'on' | 'off';
  server: Server;
  api: GqlConnection;
}

/**
 * Scenario 1's service ingest (8 clients × 100 events over 4 tenants a side) against the service
 * (the setting on, its default) and against a second service started the same way with `offEnv`,
 * on the same database, in alternating on/off rounds, so that both sides see the same machine.
 * `whileBoth` runs after a final flush with both services up (auditStats sums over the live
 * instances: once the off service stops, its tenants' counters are gone with it).
 */
async function alternateOnOff<T>(
  bench: Bench,
  o: {
    scenario: string;
    /** What is switched off, for names and logs (`hashing`, `journal`). */
    what: string;
    offEnv: Record<string, string>;
    acks: readonly ('BUFFERED' | 'COMMITTED')[];
    /** Seeds the clients' event generators of each run. */
    seed: number;
    whileBoth: (
      sides: readonly OnOffSide[],
      tenantsOf: (side: 'on' | 'off') => string[],
    ) => Promise<T>;
  },
): Promise<{
  runs: OnOffRun[];
  tenants: string[];
  both: T;
  offService: { pid: number; instance: string };
}> {
  const { p } = bench;
  const spec = bench.serviceSpec;
  const instance = `${spec.env.INSTANCE_ID ?? `bench-${process.pid}`}-${o.what}-off`;
  log(`${o.scenario} starting the ${o.what}-off service …`);
  const offService = await spawnServer(
    spec.entry,
    {
      ...spec.env,
      ...o.offEnv,
      INSTANCE_ID: instance,
      DLQ_DIR: join(spec.tempDir, `dlq-${o.what}-off`),
    },
    // Not --cpu-prof: the run's profile is the main service's.
    { nodeArgs: spec.nodeArgs },
  );
  log(`${o.scenario} ${o.what}-off service pid ${offService.pid} at ${offService.url}`);
  const offApi = new GqlConnection(offService.url);
  const sides: readonly OnOffSide[] = [
    { side: 'on', server: bench.service, api: bench.api },
    { side: 'off', server: offService, api: offApi },
  ];
  const tag = o.scenario.split(' ')[0];
  const tenantsOf = (side: 'on' | 'off', ack: 'BUFFERED' | 'COMMITTED') =>
    range(`s${tag}_${o.what}_${side}_${ack === 'BUFFERED' ? 'buf' : 'com'}`, 4);
  const ofSide = (side: 'on' | 'off') => o.acks.flatMap((a) => tenantsOf(side, a));
  const all = sides.flatMap((s) => ofSide(s.side));
  const runs: OnOffRun[] = [];
  try {
    // Existing tenants, each provisioned by the service that writes to it (all at once: 16
    // tenants one after another would be a good part of the quick run).
    await Promise.all(
      sides.flatMap((side) =>
        ofSide(side.side).map((t) => bench.provision([t], undefined, side.api)),
      ),
    );
    for (let round = 1; round <= p.chainRounds; round++) {
      for (const ack of o.acks) {
        for (const side of sides) {
          const ts = tenantsOf(side.side, ack);
          const name = `${tag} round ${round} ${ack} ${o.what} ${side.side}`;
          const r = await bench.phase(
            name,
            async () => {
              const r = await ingestAcross(
                [
                  { tenants: ts, connections: 4 },
                  { tenants: ts, connections: 4 },
                ],
                {
                  url: side.server.url,
                  ack,
                  durationMs: p.chainMs,
                  warmupMs: p.chainWarmupMs,
                  eventsPerCall: EVENTS_PER_CALL,
                  honourBackpressure: true,
                },
                o.seed + 10 * round + (ack === 'BUFFERED' ? 0 : 4) + (side.side === 'on' ? 0 : 2),
              );
              const drainMs = await bench.flushAll(ts, side.api);
              return { value: { ...r, drainMs }, workerCpu: r.cpuSeconds };
            },
            { service: side.server },
          );
          bench.countAll(r.byTenant);
          checkFailures(bench, `${o.what} ${side.side} ${ack}`, r);
          const seconds = (r.windowMs + (ack === 'BUFFERED' ? r.drainMs : 0)) / 1000;
          runs.push({
            round,
            ack,
            side: side.side,
            accepted: r.acceptedEvents,
            seconds,
            rate: r.acceptedEvents / seconds,
            written: sum(Object.values(r.byTenant)),
            serviceCpuSeconds: bench.cpu[name]!.service,
            backpressure: r.backpressure,
            callP50: p50(r.latenciesMs),
            callP99: p99(r.latenciesMs),
          });
        }
      }
    }
    for (const side of sides) await bench.flushAll(ofSide(side.side), side.api);
    const both = await o.whileBoth(sides, ofSide);
    return { runs, tenants: all, both, offService: { pid: offService.pid, instance } };
  } finally {
    await offApi.close();
    const offExit = await offService.stop();
    // Its tenants were checked while it ran (whileBoth): the final check leaves them out.
    for (const t of ofSide('off')) bench.notAccounted.add(t);
    log(`${o.scenario} ${o.what}-off service stopped with exit code ${offExit}`);
    if (offService.warnings.length) {
      bench.details[`${o.what}OffWarnings`] = offService.warnings.slice(0, 50);
    }
    if (offExit !== 0)
      bench.problems.push(`the ${o.what}-off service exited with ${offExit} on SIGTERM`);
  }
}

/** Pooled rate and CPU per event of the runs of one ack and side; the on ÷ off ratio per round. */
function onOffSummary(runs: readonly OnOffRun[], ack: string, rounds: number) {
  const pooled = (side: string) => {
    const rs = runs.filter((r) => r.ack === ack && r.side === side);
    return {
      rate: sum(rs.map((r) => r.accepted)) / sum(rs.map((r) => r.seconds)),
      cpuUsPerEvent:
        (sum(rs.map((r) => r.serviceCpuSeconds)) * 1e6) / sum(rs.map((r) => r.written)),
      callP50: median(rs.map((r) => r.callP50)),
      callP99: median(rs.map((r) => r.callP99)),
    };
  };
  const perRound = Array.from({ length: rounds }, (_, i) => {
    const of = (side: string) =>
      runs.find((r) => r.round === i + 1 && r.ack === ack && r.side === side)!;
    return of('on').rate / of('off').rate;
  });
  const on = pooled('on');
  const off = pooled('off');
  return { on, off, ratio: on.rate / off.rate, perRound };
}

/**
 * 7. Chain hashing cost: scenario 1's service ingest (BUFFERED and COMMITTED) with CHAIN_HASHING
 * on (the service's default) and off (a second service), in alternating rounds; and what
 * canonical JSON and SHA-256 cost per event in this process alone.
 */
export async function chainHashingCost(bench: Bench): Promise<void> {
  const { p } = bench;
  const cost = await bench.phase('7 hashing in the bench process', async () => ({
    value: measureChainCost(p.chainCostEvents, p.chainCostRepeats),
    workerCpu: 0,
  }));
  const acks = ['BUFFERED', 'COMMITTED'] as const;
  const {
    runs,
    tenants: all,
    both,
    offService,
  } = await alternateOnOff(bench, {
    scenario: '7 chain',
    what: 'hashing',
    offEnv: { CHAIN_HASHING: 'off' },
    acks,
    seed: 700,
    whileBoth: async (_sides, ofSide) => {
      const acc = await checkAccounting(bench, [...ofSide('on'), ...ofSide('off')]);
      // And each side stored what it claims: hashes on the on side, none on the off side.
      const hashed = { on: { rows: 0, hashed: 0 }, off: { rows: 0, hashed: 0 } };
      for (const side of ['on', 'off'] as const) {
        for (const t of ofSide(side)) {
          const q = await bench.db.query<{ n: string; hashed: string }>(
            `select count(*) as n, count(hash) as hashed from "t_${t}".audit_events`,
          );
          hashed[side].rows += Number(q.rows[0]!.n);
          hashed[side].hashed += Number(q.rows[0]!.hashed);
        }
      }
      return { acc, hashed };
    },
  });
  const { acc, hashed } = both;
  const hashesOk = hashed.on.hashed === hashed.on.rows && hashed.off.hashed === 0;
  const ok = acc.bad.length === 0;
  if (!ok)
    bench.problems.push(`chain hashing accounting: ${JSON.stringify(acc.bad).slice(0, 1000)}`);
  if (!hashesOk) {
    bench.problems.push(
      `chain hashing: rows with a hash: on side ${hashed.on.hashed} of ${hashed.on.rows}, ` +
        `off side ${hashed.off.hashed} of ${hashed.off.rows} (expected all and none)`,
    );
  }
  const summary: Record<string, unknown> = {};
  for (const ack of acks) {
    const { on, off: offSide, ratio, perRound: rounds } = onOffSummary(runs, ack, p.chainRounds);
    summary[ack] = { on, off: offSide, ratio, perRound: rounds };
    bench.add({
      scenario: '7 chain',
      figure:
        `createAuditEvents ${ack}, hashing on (the service) vs off (a second service with ` +
        `CHAIN_HASHING=off, same database), 8 clients × 100 events over 4 tenants a side; ` +
        `${p.chainRounds} round${p.chainRounds > 1 ? 's' : ''} of ${p.chainMs / 1000} s on, then off` +
        (ack === 'BUFFERED' ? ', accepted ÷ window + final flush' : '') +
        ` (per round: ${rounds.map((x) => fmt.ratio(x)).join(', ')})`,
      value: fmt.rate(on.rate),
      baseline: `hashing off ${fmt.rate(offSide.rate)}`,
      ratio: fmt.ratio(ratio),
      target: '≥ 0.85× off',
      met: ratio >= 0.85,
      data: {
        on,
        off: offSide,
        ratio,
        perRound: rounds,
        runs: runs.filter((r) => r.ack === ack),
      },
    });
  }
  // Service CPU per event written, over both acks: where hashing's cost lands.
  const cpuPerEvent = (hashing: string) => {
    const rs = runs.filter((r) => r.side === hashing);
    return (sum(rs.map((r) => r.serviceCpuSeconds)) * 1e6) / sum(rs.map((r) => r.written));
  };
  const offCpu = cpuPerEvent('off');
  const onCpu = cpuPerEvent('on');
  const us = (n: number) => `${n.toFixed(1)} µs`;
  bench.add({
    scenario: '7 chain',
    figure:
      'service CPU per event written (all runs, warm-up and flush included), hashing on vs off: ' +
      'the ratio off ÷ on is the throughput ratio to expect where the service’s CPU is the limit',
    value: us(onCpu),
    baseline: `hashing off ${us(offCpu)}`,
    ratio: fmt.ratio(offCpu / onCpu),
    target: 'reference',
    met: null,
    data: { onUs: onCpu, offUs: offCpu, addedUs: onCpu - offCpu },
  });
  bench.add({
    scenario: '7 chain',
    figure:
      `hashing alone, in the bench process: canonical JSON (canonicalRecord: the envelope, data already canonical from validation, ` +
      `${fmt.int(cost.canonicalBytes)} B) + ChainHasher.link + hex of both hashes, per event over ` +
      `${fmt.int(cost.events)} typical events; ratio: its share of the hashing-off service’s CPU per event`,
    value: `${us(cost.totalUs)} (canonical ${us(cost.canonicalUs)}, link ${us(cost.linkUs)}, hex ${us(cost.hexUs)})`,
    baseline: `service, hashing off ${us(offCpu)}`,
    ratio: fmt.ratio(cost.totalUs / offCpu),
    target: 'reference',
    met: null,
    data: { ...cost },
  });
  bench.add({
    scenario: '7 chain',
    figure:
      'its tenants, after flushAudit with both services up: identity holds and pending 0 / ' +
      'stored = count(*) / accepted = clients + own; rows with a hash, on side / off side',
    value:
      `${acc.identity} / ${acc.matches} / ${acc.acceptedMatches} of ${all.length}; ` +
      `${fmt.int(hashed.on.hashed)} of ${fmt.int(hashed.on.rows)} / ${fmt.int(hashed.off.hashed)} of ${fmt.int(hashed.off.rows)}`,
    baseline: '—',
    ratio: '—',
    target: 'all; all / none',
    met: ok && hashesOk,
    data: { bad: acc.bad, hashed },
  });
  bench.details.chainHashing = {
    cost,
    summary,
    runs,
    offService,
  };
}

/**
 * The accounting identity of `tenants` (after a flush), asked through `api`: auditStats has the
 * identity holding and nothing pending, stored = count(*), and accepted = what the clients
 * counted + the service's own records.
 */
async function checkAccounting(
  bench: Bench,
  tenants: readonly string[],
  api: GqlConnection = bench.api,
): Promise<{ identity: number; matches: number; acceptedMatches: number; bad: unknown[] }> {
  let identity = 0;
  let matches = 0;
  let acceptedMatches = 0;
  const bad: unknown[] = [];
  for (const t of tenants) {
    const s = await bench.stats(t, api);
    const rows = await bench.countRows(t);
    // The service's own records (provisioning, reads: AUDIT_READS) are accepted like any other.
    const own = await bench.countRows(t, 'service');
    const clientAccepted = bench.accepted.get(t) ?? 0;
    const holds = s.__typename === 'AuditStats' && s.identityHolds === true && s.pending === 0;
    if (holds) identity++;
    if (s.stored === rows) matches++;
    if (s.accepted === clientAccepted + own) acceptedMatches++;
    if (!holds || s.stored !== rows || s.accepted !== clientAccepted + own) {
      bad.push({ tenant: t, stats: s, countStar: rows, serviceWritten: own, clientAccepted });
    }
  }
  return { identity, matches, acceptedMatches, bad };
}

/** The accounting identity for every tenant written through the API, and stored = count(*). */
export async function accounting(bench: Bench): Promise<void> {
  const tenants = [...bench.accepted.keys()].filter((t) => !bench.notAccounted.has(t));
  await bench.flushAll(tenants);
  const { identity, matches, acceptedMatches, bad } = await checkAccounting(bench, tenants);
  bench.details.accounting = {
    tenants: tenants.length,
    bad,
    notAccounted: [...bench.notAccounted],
  };
  const ok = bad.length === 0;
  if (!ok) bench.problems.push(`accounting: ${JSON.stringify(bad).slice(0, 1000)}`);
  bench.add({
    scenario: 'accounting',
    figure:
      'every API-written tenant, after flushAudit: identity holds and pending 0 / stored = count(*) / ' +
      'accepted = what the clients counted + the service’s own records',
    value: `${identity} / ${matches} / ${acceptedMatches} of ${tenants.length}`,
    baseline: '—',
    ratio: '—',
    target: 'all',
    met: ok,
  });
}

/** Creates an API key of `tenant` with the keys CLI, as an operator would; the key itself. */
function createApiKey(
  env: Record<string, string>,
  tenant: string,
  scopes: string,
  label: string,
): string {
  const out = execFileSync(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/keys.ts',
      'create',
      '--tenant',
      tenant,
      '--scopes',
      scopes,
      '--label',
      label,
      '--json',
    ],
    { cwd: ROOT, env: { PATH: process.env.PATH, ...env }, encoding: 'utf8' },
  );
  return (JSON.parse(out) as { key: string }).key;
}

/** The tenant's stored records of reads (AUDIT_READS). */
async function accessReadRecords(bench: Bench, tenant: string): Promise<number> {
  const db = new pg.Client({ connectionString: bench.databaseUrl });
  await db.connect();
  try {
    const { rows } = await db.query<{ n: number }>(
      `select count(*)::int as n from "t_${tenant}".audit_events where event_type = 'auditgraph.access.read'`,
    );
    return rows[0]!.n;
  } finally {
    await db.end();
  }
}
