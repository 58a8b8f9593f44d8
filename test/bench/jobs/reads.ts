import pg from 'pg';
import { PAGE_QUERY, rng, WALK_QUERY } from '../events.js';
import { GqlConnection } from '../gql-client.js';
import { FailureLog, ownCpuSeconds, since } from '../util.js';
import type {
  ReadLoadJob,
  ReadLoadQuery,
  ReadLoadResult,
  ReadsJob,
  ReadsResult,
} from '../worker-protocol.js';

const PAGE = 50;
const WALK_PAGE = 500;
const WARMUP = 20;

/**
 * Pages of 50 through GraphQL against the equivalent raw keyset SQL through `pg`, interleaved
 * request by request: the newest page, a page `depth` rows deep (its cursor reached by walking
 * there), and the newest page of one correlation id. Then OFFSET at the same depth.
 */
export async function runReads(job: ReadsJob): Promise<ReadsResult> {
  const cpuStart = ownCpuSeconds();
  const random = rng(job.seed);
  const conn = new GqlConnection(job.url);
  const db = new pg.Client({
    connectionString: job.databaseUrl,
    application_name: 'auditgraph-bench-raw',
  });
  await db.connect();
  const failures = new FailureLog();
  const table = `"${job.schema}".audit_events`;
  const order = 'order by occurred_at desc, id desc';

  // Walk to the deep cursor the way a client does: page after page. (Reads may add access
  // records to the log; they are newer than the walk's start, so they never shift it.)
  const walkStartedAt = new Date();
  const walkStart = performance.now();
  let cursor: string | null = null;
  let position: { occurredAt: Date; id: string } | undefined;
  let walked = 0;
  let pages = 0;
  while (walked < job.depth) {
    const first = Math.min(WALK_PAGE, job.depth - walked);
    const data = await conn.request(job.tenant, WALK_QUERY, { first, after: cursor });
    const page = data.auditEvents as Record<string, any>;
    if (page.__typename !== 'AuditEventConnection') throw new Error(JSON.stringify(page));
    cursor = page.pageInfo.endCursor as string;
    const last = page.edges.at(-1).node as { id: string; occurredAt: string };
    position = { occurredAt: new Date(last.occurredAt), id: last.id };
    walked += page.edges.length;
    pages++;
  }
  const walkMs = since(walkStart);
  // The walk visited exactly `depth` rows: none skipped, none twice.
  const [visited] = (
    await db.query<{ n: string }>(
      `select count(*) as n from ${table} where (occurred_at, id) >= ($1, $2) and occurred_at < $3`,
      [position!.occurredAt, position!.id, walkStartedAt],
    )
  ).rows;

  const api = async (variables: Record<string, unknown>, samples: number[] | null) => {
    const t = performance.now();
    const r = await conn.post(job.tenant, JSON.stringify({ query: PAGE_QUERY, variables }));
    const ms = since(t);
    const page = r.data?.auditEvents as Record<string, any> | undefined;
    if (page?.__typename !== 'AuditEventConnection' || page.edges.length !== PAGE) {
      failures.add(`page: ${r.failure ?? JSON.stringify(r.errors ?? page).slice(0, 300)}`);
    }
    samples?.push(ms);
    return page;
  };
  const raw = async (text: string, params: unknown[], samples: number[] | null) => {
    const t = performance.now();
    const res = await db.query(text, params);
    const ms = since(t);
    if (res.rows.length !== PAGE + 1) failures.add(`raw: ${res.rows.length} rows`);
    samples?.push(ms);
  };

  const firstSql = `select * from ${table} ${order} limit ${PAGE + 1}`;
  const deepSql = `select * from ${table} where (occurred_at, id) < ($1, $2) and occurred_at <= $1 ${order} limit ${PAGE + 1}`;
  const corrSql = `select * from ${table} where correlation_id = $1 ${order} limit ${PAGE + 1}`;
  const offsetSql = `select * from ${table} ${order} offset $1 limit ${PAGE + 1}`;

  const deepPage = await api({ first: PAGE, after: cursor }, null);
  const rawDeep = await db.query<{ id: string }>(deepSql, [position!.occurredAt, position!.id]);
  const deepIsExact =
    Number(visited?.n) === job.depth && deepPage?.edges?.[0]?.node?.id === rawDeep.rows[0]?.id;

  const result: ReadsResult = {
    walk: { pages, ms: walkMs },
    deepIsExact,
    first: { api: [], raw: [] },
    deep: { api: [], raw: [] },
    deepCursor: cursor!,
    deepPosition: { occurredAt: position!.occurredAt.toISOString(), id: position!.id },
    correlation: { api: [], raw: [] },
    offset: [],
    failures: 0,
    failureSamples: [],
    cpuSeconds: 0,
  };
  for (let i = 0; i < job.samples + WARMUP; i++) {
    const on = i >= WARMUP;
    const correlationId = job.correlationIds[Math.floor(random() * job.correlationIds.length)]!;
    await api({ first: PAGE }, on ? result.first.api : null);
    await raw(firstSql, [], on ? result.first.raw : null);
    await api({ first: PAGE, after: cursor }, on ? result.deep.api : null);
    await raw(deepSql, [position!.occurredAt, position!.id], on ? result.deep.raw : null);
    await api({ first: PAGE, filter: { correlationId } }, on ? result.correlation.api : null);
    await raw(corrSql, [correlationId], on ? result.correlation.raw : null);
  }
  for (let i = 0; i < job.offsetSamples; i++) await raw(offsetSql, [job.depth], result.offset);

  await conn.close();
  await db.end();
  result.failures = failures.count;
  result.failureSamples = failures.samples;
  result.cpuSeconds = ownCpuSeconds() - cpuStart;
  return result;
}

/**
 * Closed loop, as a dashboard's users load it: `clients` clients, each on its own connection,
 * sending the next page request as soon as the last is answered, for `durationMs` (after
 * `warmupMs`), per target and query: requests per second and latencies. Targets alternate for
 * each query and concurrency, so that drift on a shared machine falls on both.
 */
export async function runReadLoad(job: ReadLoadJob): Promise<ReadLoadResult> {
  const cpuStart = ownCpuSeconds();
  const random = rng(job.seed);
  const failures = new FailureLog();
  const out: ReadLoadResult = { runs: [], failures: 0, failureSamples: [], cpuSeconds: 0 };
  const variablesFor = (query: ReadLoadQuery, target: ReadLoadJob['targets'][number]) => {
    if (query === 'first') return { first: PAGE };
    if (query === 'deep') return { first: PAGE, after: target.deepCursor };
    const correlationId = job.correlationIds[Math.floor(random() * job.correlationIds.length)]!;
    return { first: PAGE, filter: { correlationId } };
  };
  for (const query of ['first', 'deep', 'correlation'] as const) {
    for (const clients of job.concurrency) {
      for (const target of job.targets) {
        const conns = Array.from(
          { length: clients },
          () => new GqlConnection(target.url, { apiKey: target.apiKey }),
        );
        const latencies: number[] = [];
        let counted = 0;
        let answered = 0;
        const started = performance.now();
        const measureFrom = started + job.warmupMs;
        const end = measureFrom + job.durationMs;
        await Promise.all(
          conns.map(async (conn) => {
            while (performance.now() < end) {
              const body = JSON.stringify({
                query: PAGE_QUERY,
                variables: variablesFor(query, target),
              });
              const t = performance.now();
              const r = await conn.post(job.tenant, body);
              const done = performance.now();
              const page = r.data?.auditEvents as Record<string, any> | undefined;
              if (page?.__typename !== 'AuditEventConnection' || page.edges.length !== PAGE) {
                failures.add(
                  `${target.name} ${query}: ${r.failure ?? JSON.stringify(r.errors ?? page).slice(0, 200)}`,
                );
              } else {
                answered++;
              }
              if (t >= measureFrom && done <= end) {
                latencies.push(done - t);
                counted++;
              }
            }
          }),
        );
        for (const c of conns) await c.close();
        out.runs.push({
          target: target.name,
          query,
          clients,
          requests: counted,
          answered,
          seconds: job.durationMs / 1000,
          latenciesMs: latencies,
        });
      }
    }
  }
  out.failures = failures.count;
  out.failureSamples = failures.samples;
  out.cpuSeconds = ownCpuSeconds() - cpuStart;
  return out;
}
