import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import {
  type BenchEvent,
  copyLine,
  insertStatement,
  makeEvent,
  ROW_COLUMNS,
  rng,
  rowValues,
} from '../events.js';
import { ownCpuSeconds } from '../util.js';
import type { SqlLoadJob, SqlLoadResult } from '../worker-protocol.js';

/** Rows per COPY chunk, and rows per batch id (the service's BATCH_SIZE). */
const CHUNK = 1000;
const BATCH = 500;
/** Above this many rows COPY data is generated while streaming instead of beforehand. */
const PREGENERATE_MAX = 400_000;

/** Correlation runs interleaved at a time: a run's events are spread, not consecutive. */
const INTERLEAVE = 50;

/**
 * Row `k` of `n`: occurredAt rises from `from` to `to` (with jitter inside its slot), and each
 * correlation id gets `perCorrelation` events, 50 runs interleaved.
 */
function eventAt(job: SqlLoadJob, random: () => number, k: number): BenchEvent {
  const slot = (job.to - job.from) / job.rows;
  const at = Math.floor(job.from + k * slot + random() * slot);
  const block = Math.floor(k / (job.perCorrelation * INTERLEAVE));
  const correlation = `run-${job.seed}-${block * INTERLEAVE + (k % INTERLEAVE)}`;
  return makeEvent(random, new Date(Math.min(at, job.to)), correlation);
}

function* copyChunks(job: SqlLoadJob): Generator<Buffer> {
  const random = rng(job.seed);
  const receivedAt = new Date();
  let batchId = randomUUID();
  for (let k = 0; k < job.rows; k += CHUNK) {
    let text = '';
    for (let i = k; i < Math.min(job.rows, k + CHUNK); i++) {
      if (i % BATCH === 0) batchId = randomUUID();
      text += copyLine(rowValues(eventAt(job, random, i), receivedAt, batchId));
    }
    yield Buffer.from(text);
  }
}

/**
 * The database's own limits, measured on the same table definition: `COPY FROM STDIN` on one
 * connection, or multi-row `INSERT` statements on several. Data is generated before the clock
 * starts (except for large COPY loads, where it is generated while streaming).
 */
export async function runSqlLoad(job: SqlLoadJob): Promise<SqlLoadResult> {
  const cpuStart = ownCpuSeconds();
  const connections = job.kind === 'insert' ? (job.connections ?? 4) : 1;
  const clients = await Promise.all(
    Array.from({ length: connections }, async () => {
      const c = new pg.Client({
        connectionString: job.databaseUrl,
        application_name: 'auditgraph-bench-raw',
      });
      await c.connect();
      return c;
    }),
  );
  const table = `"${job.schema}".audit_events`;
  let seconds: number;

  if (job.kind === 'copy') {
    const chunks = job.rows <= PREGENERATE_MAX ? [...copyChunks(job)] : null;
    const started = performance.now();
    const stream = clients[0]!.query(
      copyFrom(`copy ${table} (${ROW_COLUMNS.join(', ')}) from stdin`),
    );
    await pipeline(Readable.from(chunks ?? copyChunks(job)), stream);
    seconds = (performance.now() - started) / 1000;
  } else {
    const perStatement = job.rowsPerStatement ?? 1000;
    const random = rng(job.seed);
    const receivedAt = new Date();
    const statements: unknown[][] = [];
    for (let k = 0; k < job.rows; k += perStatement) {
      const batchId = randomUUID();
      const params: unknown[] = [];
      for (let i = k; i < Math.min(job.rows, k + perStatement); i++) {
        params.push(...rowValues(eventAt(job, random, i), receivedAt, batchId));
      }
      statements.push(params);
    }
    const text = insertStatement(job.schema, perStatement);
    const lastRows = job.rows % perStatement;
    const lastText = lastRows ? insertStatement(job.schema, lastRows) : text;
    const full = perStatement * ROW_COLUMNS.length;
    let next = 0;
    const started = performance.now();
    await Promise.all(
      clients.map(async (c) => {
        for (let s = next++; s < statements.length; s = next++) {
          const params = statements[s]!;
          // Named: parsed and planned once per connection. Unnamed, planning a 1000-row VALUES
          // list took longer than executing it (EXPLAIN ANALYZE here: ~50 ms vs ~46 ms).
          const last = params.length !== full;
          await c.query({
            name: last ? 'insert_last' : 'insert',
            text: last ? lastText : text,
            values: params,
          });
        }
      }),
    );
    seconds = (performance.now() - started) / 1000;
  }

  const [size] = (
    await clients[0]!.query<{ bytes: string }>(
      `select avg(pg_column_size(t.*))::int as bytes from (select * from ${table} limit 2000) t`,
    )
  ).rows;
  await Promise.all(clients.map((c) => c.end()));
  return {
    rows: job.rows,
    seconds,
    rowBytes: Number(size?.bytes ?? 0),
    cpuSeconds: ownCpuSeconds() - cpuStart,
  };
}
