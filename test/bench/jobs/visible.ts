import { randomUUID } from 'node:crypto';
import pg from 'pg';
import {
  type BenchEvent,
  createBody,
  FLUSH_MUTATION,
  insertStatement,
  makeEvent,
  rng,
  rowValues,
} from '../events.js';
import { GqlConnection } from '../gql-client.js';
import { FailureLog, ownCpuSeconds, since, sleep } from '../util.js';
import type { VisibleJob, VisibleResult } from '../worker-protocol.js';
import { classify } from './ingest.js';

const READ_QUERY = `query Visible($filter: AuditEventFilter) {
  auditEvents(first: 500, filter: $filter) {
    __typename
    ... on AuditEventConnection { edges { node { id: eventId } } }
    
  }
}`;

/** How long a reader keeps re-reading before it gives up on seeing every event. */
const READ_DEADLINE_MS = 10_000;

/**
 * The incident, timed: every tenant at once writes its events, (flushes,) and reads them back by
 * correlation id; the figure is the wall time from the first write to the last complete read.
 */
export async function runVisible(job: VisibleJob): Promise<VisibleResult> {
  const cpuStart = ownCpuSeconds();
  const random = rng(job.seed);
  const conns = job.tenants.map(() => new GqlConnection(job.url));
  const failures = new FailureLog();
  const byTenant: Record<string, number> = Object.fromEntries(job.tenants.map((t) => [t, 0]));
  const result: VisibleResult = {
    wallMs: [],
    rereads: 0,
    byTenant,
    baselineMs: [],
    failures: 0,
    failureSamples: [],
    cpuSeconds: 0,
  };
  const ack = job.mode === 'committed' ? 'COMMITTED' : 'BUFFERED';
  const flushBody = JSON.stringify({ query: FLUSH_MUTATION, variables: { timeoutMs: 30_000 } });
  const clients = job.baseline
    ? await Promise.all(
        job.tenants.map(async () => {
          const c = new pg.Client({
            connectionString: job.baseline!.databaseUrl,
            application_name: 'auditgraph-bench-raw',
          });
          await c.connect();
          return c;
        }),
      )
    : [];

  /** The floor: per tenant one raw INSERT transaction of its events, then SELECT them back. */
  async function rawRound(
    work: { correlationId: string; events: BenchEvent[] }[],
  ): Promise<number> {
    const schema = job.baseline!.scratchSchema;
    const insert = insertStatement(schema, job.eventsPerTenant);
    const select = `select id from "${schema}".audit_events where correlation_id = $1`;
    const rows = work.map((w) => ({
      correlationId: `${w.correlationId}-raw`,
      params: w.events.flatMap((e) =>
        rowValues({ ...e, correlationId: `${w.correlationId}-raw` }, new Date(), randomUUID()),
      ),
    }));
    const b0 = performance.now();
    await Promise.all(
      rows.map(async ({ correlationId, params }, i) => {
        const c = clients[i]!;
        await c.query('begin');
        await c.query({ name: 'raw_insert', text: insert, values: params });
        await c.query('commit');
        const seen = (await c.query(select, [correlationId])).rowCount;
        if (seen !== job.eventsPerTenant) failures.add(`raw read ${seen}`);
      }),
    );
    return since(b0);
  }

  if (job.baseline) {
    // Warm the raw connections (catalog caches, the prepared statement) as the service's pool is.
    await rawRound(
      job.tenants.map((t) => ({
        correlationId: `vis-warm-${job.seed}-${t}`,
        events: Array.from({ length: job.eventsPerTenant }, () =>
          makeEvent(random, new Date(), `vis-warm-${job.seed}-${t}`),
        ),
      })),
    );
  }

  for (let rep = 0; rep < job.reps; rep++) {
    const now = Date.now();
    const work = job.tenants.map((tenant) => {
      const correlationId = `vis-${job.seed}-${rep}-${tenant}`;
      const events = Array.from({ length: job.eventsPerTenant }, () =>
        makeEvent(random, new Date(now - Math.floor(random() * 60_000)), correlationId),
      );
      return { tenant, correlationId, events, body: createBody(ack, events) };
    });

    const t0 = performance.now();
    await Promise.all(
      work.map(async ({ tenant, correlationId, body }, i) => {
        const conn = conns[i]!;
        const created = classify(await conn.post(tenant, body), job.eventsPerTenant);
        byTenant[tenant] = (byTenant[tenant] ?? 0) + created.accepted;
        if (created.kind !== 'accepted') failures.add(JSON.stringify(created));
        if (job.mode === 'buffered-flush') {
          const f = await conn.post(tenant, flushBody);
          if (f.data?.flushAudit?.__typename !== 'FlushAuditPayload') {
            failures.add(`flushAudit: ${f.failure ?? JSON.stringify(f.errors ?? f.data)}`);
          }
        }
        const readStart = performance.now();
        for (let attempt = 0; ; attempt++) {
          const r = await conn.post(
            tenant,
            JSON.stringify({ query: READ_QUERY, variables: { filter: { correlationId } } }),
          );
          const seen = r.data?.auditEvents?.edges?.length ?? 0;
          if (seen >= job.eventsPerTenant) break;
          if (attempt === 0) result.rereads++;
          if (since(readStart) > READ_DEADLINE_MS) {
            failures.add(
              `${tenant}: read ${seen} of ${job.eventsPerTenant} after ${READ_DEADLINE_MS} ms`,
            );
            break;
          }
          await sleep(10);
        }
      }),
    );
    result.wallMs.push(since(t0));

    if (job.baseline) result.baselineMs.push(await rawRound(work));
    await sleep(200);
  }

  await Promise.all(conns.map((c) => c.close()));
  await Promise.all(clients.map((c) => c.end()));
  result.failures = failures.count;
  result.failureSamples = failures.samples;
  result.cpuSeconds = ownCpuSeconds() - cpuStart;
  return result;
}
