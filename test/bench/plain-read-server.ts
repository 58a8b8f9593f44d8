/**
 * The read path's physical limit on this stack: a plain `node:http` server that parses the same
 * POST body as the service's page query (`{ query, variables: { first, after, filter } }`; the
 * query text is not looked at), runs the same keyset SQL through `pg` (a pool of the service's
 * default size), and writes the same JSON for the same fields (PAGE_QUERY's), cursors as
 * base64url of the position. No GraphQL, no auth, no access record, no signature. Run as its own
 * process by scenario 3 (BENCH_DATABASE_URL, BENCH_SCHEMA); logs
 * `{"msg":"listening","port":…}` like the service.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';

const schema = process.env.BENCH_SCHEMA!;
const pool = new pg.Pool({
  connectionString: process.env.BENCH_DATABASE_URL,
  max: 10,
  application_name: 'auditgraph-bench-plain',
});
const table = `"${schema.replaceAll('"', '""')}".audit_events`;
const order = 'order by occurred_at desc, id desc';
const MAX_BODY = 64 * 1024;

interface Row {
  id: string;
  occurred_at: Date;
  received_at: Date;
  event_type: string;
  category: string;
  action: string;
  outcome: string;
  correlation_id: string;
  actor_type: string;
  actor_id: string;
  actor_ip: string | null;
  resource_type: string;
  resource_id: string;
  resource_name: string | null;
  parent_event_id: string | null;
  severity: string | null;
  duration_ms: number | null;
  error_code: string | null;
  error_message: string | null;
  namespace: string | null;
  cluster_id: string | null;
  trace_id: string | null;
  span_id: string | null;
  data: unknown;
  batch_id: string;
}

const cursorOf = (r: Row) =>
  Buffer.from(JSON.stringify([r.occurred_at.toISOString(), r.id])).toString('base64url');

function node(r: Row) {
  return {
    id: r.id,
    occurredAt: r.occurred_at.toISOString(),
    receivedAt: r.received_at.toISOString(),
    eventType: r.event_type,
    category: r.category,
    action: r.action,
    outcome: r.outcome,
    correlationId: r.correlation_id,
    actor: { type: r.actor_type, id: r.actor_id, ip: r.actor_ip },
    resource: { type: r.resource_type, id: r.resource_id, name: r.resource_name },
    parentEventId: r.parent_event_id,
    severity: r.severity,
    durationMs: r.duration_ms,
    errorCode: r.error_code,
    errorMessage: r.error_message,
    namespace: r.namespace,
    clusterId: r.cluster_id,
    traceId: r.trace_id,
    spanId: r.span_id,
    data: r.data,
    batchId: r.batch_id,
  };
}

async function page(variables: {
  first?: number;
  after?: string | null;
  filter?: { correlationId?: string };
}) {
  const first = Math.min(Math.max(variables.first ?? 50, 1), 500);
  const where: string[] = [];
  const params: unknown[] = [];
  if (variables.after) {
    const [at, id] = JSON.parse(Buffer.from(variables.after, 'base64url').toString()) as [
      string,
      string,
    ];
    params.push(new Date(at), id);
    where.push(`(occurred_at, id) < ($1, $2) and occurred_at <= $1`);
  }
  if (variables.filter?.correlationId) {
    params.push(variables.filter.correlationId);
    where.push(`correlation_id = $${params.length}`);
  }
  const sql = `select * from ${table} ${where.length ? `where ${where.join(' and ')}` : ''} ${order} limit ${first + 1}`;
  const { rows } = await pool.query<Row>(sql, params);
  const more = rows.length > first;
  const edges = rows.slice(0, first).map((r) => ({ cursor: cursorOf(r), node: node(r) }));
  return {
    data: {
      auditEvents: {
        __typename: 'AuditEventConnection',
        edges,
        pageInfo: {
          hasNextPage: more,
          // As the service answers it: a cursor means there is something before it.
          hasPreviousPage: Boolean(variables.after),
          startCursor: edges[0]?.cursor ?? null,
          endCursor: edges.at(-1)?.cursor ?? null,
        },
      },
    },
  };
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  let size = 0;
  req.on('data', (c: Buffer) => {
    size += c.length;
    if (size > MAX_BODY) req.destroy();
    else chunks.push(c);
  });
  req.on('end', () => {
    let body: { variables?: Parameters<typeof page>[0] };
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400).end();
      return;
    }
    page(body.variables ?? {}).then(
      (out) => {
        const text = JSON.stringify(out);
        res.writeHead(200, {
          'content-type': 'application/json; charset=utf-8',
          'content-length': Buffer.byteLength(text),
        });
        res.end(text);
      },
      (err: unknown) => {
        res.writeHead(500).end(String(err));
      },
    );
  });
});
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  console.log(JSON.stringify({ level: 30, msg: 'listening', port }));
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => void pool.end().then(() => process.exit(0)));
});
