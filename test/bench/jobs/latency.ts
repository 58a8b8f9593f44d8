import { randomUUID } from 'node:crypto';
import pg from 'pg';
import {
  createBody,
  FLUSH_MUTATION,
  insertStatement,
  makeEvent,
  rng,
  rowValues,
} from '../events.js';
import { GqlConnection } from '../gql-client.js';
import { FailureLog, ownCpuSeconds, since, sleep } from '../util.js';
import type { LatencyJob, LatencyResult } from '../worker-protocol.js';
import { classify } from './ingest.js';

const WARMUP = 5;

/**
 * One client, one call at a time. `commit-latency`: a COMMITTED call of `eventsPerCall` events at
 * a steady rate; `flush-latency`: a BUFFERED call of `eventsPerCall` events, then flushAudit. Each
 * sample is followed by its baseline — the same rows as one raw INSERT transaction into the
 * scratch table — so both see the same machine at the same moment.
 */
export async function runLatency(job: LatencyJob): Promise<LatencyResult> {
  const cpuStart = ownCpuSeconds();
  const random = rng(job.seed);
  const conn = new GqlConnection(job.url);
  const db = new pg.Client({
    connectionString: job.databaseUrl,
    application_name: 'auditgraph-bench-raw',
  });
  await db.connect();
  const insert = insertStatement(job.scratchSchema, job.eventsPerCall);
  const ack = job.kind === 'commit-latency' ? 'COMMITTED' : 'BUFFERED';
  const flushBody = JSON.stringify({ query: FLUSH_MUTATION, variables: { timeoutMs: 60_000 } });
  const failures = new FailureLog();
  const result: LatencyResult = {
    api: [],
    apiEndToEnd: [],
    raw: [],
    waitedFor: [],
    acceptedEvents: 0,
    failures: 0,
    failureSamples: [],
    cpuSeconds: 0,
  };
  const interval = job.kind === 'commit-latency' ? 1000 / job.callsPerSecond : 50;
  const start = performance.now();

  for (let i = 0; i < job.samples + WARMUP; i++) {
    const record = i >= WARMUP;
    const correlation = `lat-${job.seed}-${i}`;
    const now = new Date();
    const events = Array.from({ length: job.eventsPerCall }, () =>
      makeEvent(random, new Date(now.getTime() - Math.floor(random() * 5_000)), correlation),
    );
    const body = createBody(ack, events);
    const params = events.flatMap((e) => rowValues(e, now, randomUUID()));

    const wait = start + i * interval - performance.now();
    if (wait > 0) await sleep(wait);

    const t0 = performance.now();
    const created = await conn.post(job.tenant, body);
    const t1 = performance.now();
    const outcome = classify(created, job.eventsPerCall);
    result.acceptedEvents += outcome.accepted;
    if (outcome.kind !== 'accepted') failures.add(JSON.stringify(outcome));
    if (job.kind === 'commit-latency') {
      if (record) result.api.push(t1 - t0);
    } else {
      const flushed = await conn.post(job.tenant, flushBody);
      const t2 = performance.now();
      const f = flushed.data?.flushAudit as Record<string, any> | undefined;
      if (f?.__typename !== 'FlushAuditPayload') {
        failures.add(`flushAudit: ${flushed.failure ?? JSON.stringify(flushed.errors ?? f)}`);
      }
      if (record) {
        result.api.push(t2 - t1);
        result.apiEndToEnd.push(t2 - t0);
        result.waitedFor.push(f?.waitedFor ?? 0);
      }
    }

    const r0 = performance.now();
    await db.query('begin');
    await db.query({ name: 'raw_insert', text: insert, values: params });
    await db.query('commit');
    if (record) result.raw.push(since(r0));
  }

  await conn.close();
  await db.end();
  result.failures = failures.count;
  result.failureSamples = failures.samples;
  result.cpuSeconds = ownCpuSeconds() - cpuStart;
  return result;
}
