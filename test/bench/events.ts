import { randomUUID } from 'node:crypto';
import {
  auditEventColumnsByField,
  EVENT_FIELDS as EVENT_COLUMNS,
} from '../../src/db/tenant-tables.js';

/**
 * Benchmark events: every event field a real producer fills, with a ~500-byte `data`, about
 * 900 bytes as GraphQL input JSON and ~700 bytes as a row. The same generator feeds the API, the
 * COPY and INSERT baselines and the read data set, so every side writes the same rows.
 */
export interface BenchEvent {
  id: string;
  occurredAt: Date;
  eventType: string;
  category: string;
  action: string;
  outcome: 'SUCCESS' | 'FAILURE' | 'PENDING';
  correlationId: string;
  actor: { type: string; id: string; ip: string };
  resource: { type: string; id: string; name: string };
  severity: string;
  durationMs: number;
  errorCode: string | null;
  errorMessage: string | null;
  namespace: string;
  clusterId: string;
  traceId: string;
  spanId: string;
  data: Record<string, unknown>;
}

/** A small deterministic PRNG (mulberry32), so runs generate comparable data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STEPS = ['checkout', 'build', 'test', 'package', 'deploy', 'verify', 'notify'];
const ACTIONS = ['start', 'complete', 'retry', 'approve', 'update'];
const WORDS =
  'audit trail entry recorded by the workflow engine for the nightly pipeline run while the operator reviewed deployment status across regions and clusters'.split(
    ' ',
  );

function hex(random: () => number, length: number): string {
  let s = '';
  while (s.length < length)
    s += Math.floor(random() * 0x100000000)
      .toString(16)
      .padStart(8, '0');
  return s.slice(0, length);
}

/** One event. `random` drives content; ids are always fresh UUIDs. */
export function makeEvent(
  random: () => number,
  occurredAt: Date,
  correlationId: string,
): BenchEvent {
  const step = STEPS[Math.floor(random() * STEPS.length)]!;
  const action = ACTIONS[Math.floor(random() * ACTIONS.length)]!;
  const failed = random() < 0.1;
  const wf = Math.floor(random() * 500);
  const words: string[] = [];
  for (let i = 0; i < 22; i++) words.push(WORDS[Math.floor(random() * WORDS.length)]!);
  return {
    id: randomUUID(),
    occurredAt,
    eventType: `workflow.execution.${step}.${action}`,
    category: 'workflow',
    action,
    outcome: failed ? 'FAILURE' : 'SUCCESS',
    correlationId,
    actor: {
      type: 'user',
      id: `user-${Math.floor(random() * 5000)}`,
      ip: `10.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}.${Math.floor(random() * 256)}`,
    },
    resource: { type: 'workflow', id: `wf-${wf}`, name: `nightly pipeline ${wf}` },
    severity: failed ? 'error' : 'info',
    durationMs: Math.floor(random() * 60_000),
    errorCode: failed ? 'E_STEP_FAILED' : null,
    errorMessage: failed ? `step ${step} exited with status 1` : null,
    namespace: `team-${Math.floor(random() * 20)}`,
    clusterId: `cluster-eu-${Math.floor(random() * 4)}`,
    traceId: hex(random, 32),
    spanId: hex(random, 16),
    data: {
      workflow: { id: `wf-${wf}`, name: `nightly-pipeline-${wf}`, version: 1 + (wf % 9) },
      step: { name: step, index: STEPS.indexOf(step), attempt: 1 + Math.floor(random() * 3) },
      request: {
        method: 'POST',
        path: `/api/v1/workflows/wf-${wf}/executions/${hex(random, 12)}`,
        userAgent: 'auditgraph-bench/1.0 (linux; x64)',
      },
      labels: { env: 'prod', region: 'eu-west-1', team: `team-${wf % 20}` },
      changes: [{ field: 'status', from: 'running', to: failed ? 'failed' : 'succeeded' }],
      message: words.join(' '),
    },
  };
}

/** The event as `AuditEventInput` JSON (what a client sends). */
export function inputJson(e: BenchEvent): string {
  return JSON.stringify({
    id: e.id,
    occurredAt: e.occurredAt.toISOString(),
    eventType: e.eventType,
    category: e.category,
    action: e.action,
    outcome: e.outcome,
    correlationId: e.correlationId,
    actor: e.actor,
    resource: e.resource,
    severity: e.severity,
    durationMs: e.durationMs,
    errorCode: e.errorCode,
    errorMessage: e.errorMessage,
    namespace: e.namespace,
    clusterId: e.clusterId,
    traceId: e.traceId,
    spanId: e.spanId,
    data: e.data,
  });
}

/** The columns of `audit_events`, in the order the baselines write them. */
/** The fields a bench row sets: the event's own, and the batch it belongs to. */
const ROW_FIELDS = [...EVENT_COLUMNS, 'batchId'] as const;

/** The columns a bench row fills, in table order (from the table definition). */
export const ROW_COLUMNS: readonly string[] = ROW_FIELDS.map(
  (f) => auditEventColumnsByField[f].name,
);

/** The event as row values, in ROW_COLUMNS order (timestamps as ISO text, data as JSON text). */
export function rowValues(e: BenchEvent, receivedAt: Date, batchId: string): (string | null)[] {
  const row: Record<(typeof ROW_FIELDS)[number], string | null> = {
    id: e.id,
    occurredAt: e.occurredAt.toISOString(),
    receivedAt: receivedAt.toISOString(),
    eventType: e.eventType,
    category: e.category,
    action: e.action,
    outcome: e.outcome,
    correlationId: e.correlationId,
    actorType: e.actor.type,
    actorId: e.actor.id,
    actorIp: e.actor.ip,
    resourceType: e.resource.type,
    resourceId: e.resource.id,
    resourceName: e.resource.name,
    parentEventId: null,
    severity: e.severity,
    durationMs: String(e.durationMs),
    errorCode: e.errorCode,
    errorMessage: e.errorMessage,
    namespace: e.namespace,
    clusterId: e.clusterId,
    traceId: e.traceId,
    spanId: e.spanId,
    data: JSON.stringify(e.data),
    batchId,
  };
  return ROW_FIELDS.map((f) => row[f]);
}

/** One line of COPY text format: tab-separated, `\N` for null, backslash escapes. */
export function copyLine(values: readonly (string | null)[]): string {
  return `${values.map((v) => (v === null ? '\\N' : copyEscape(v))).join('\t')}\n`;
}

function copyEscape(v: string): string {
  return /[\\\t\n\r]/.test(v)
    ? v
        .replaceAll('\\', '\\\\')
        .replaceAll('\t', '\\t')
        .replaceAll('\n', '\\n')
        .replaceAll('\r', '\\r')
    : v;
}

/**
 * A multi-row `INSERT … VALUES` of `rows` rows into `schema.audit_events` (25 parameters a row;
 * 1000 rows is 25,000, under PostgreSQL's 65,535).
 */
export function insertStatement(schema: string, rows: number): string {
  const n = ROW_COLUMNS.length;
  const tuples: string[] = [];
  for (let r = 0; r < rows; r++) {
    const p: string[] = [];
    for (let c = 0; c < n; c++) p.push(`$${r * n + c + 1}`);
    tuples.push(`(${p.join(',')})`);
  }
  return `insert into "${schema}".audit_events (${ROW_COLUMNS.join(', ')}) values ${tuples.join(',')}`;
}

/** A `createAuditEvents` request body carrying exactly these events (their own ids). */
export function createBody(ack: 'BUFFERED' | 'COMMITTED', events: readonly BenchEvent[]): string {
  return `{"query":${JSON.stringify(CREATE_MUTATION)},"variables":{"input":{"ack":"${ack}","events":[${events.map(inputJson).join(',')}]}}}`;
}

export const ID_PLACEHOLDER = '00000000-0000-4000-8000-00000000beef';

/**
 * A `createAuditEvents` request body whose event ids are filled in fresh on every call: the JSON
 * is built once, split at the id placeholders, and joined with new UUIDs (cheap on the load side).
 */
export class BodyTemplate {
  private readonly parts: string[];

  constructor(query: string, ack: 'BUFFERED' | 'COMMITTED', events: readonly BenchEvent[]) {
    const inputs = events.map((e) => inputJson({ ...e, id: ID_PLACEHOLDER }));
    const body = `{"query":${JSON.stringify(query)},"variables":{"input":{"ack":"${ack}","events":[${inputs.join(',')}]}}}`;
    this.parts = body.split(ID_PLACEHOLDER);
  }

  /** The body with fresh ids. */
  render(): string {
    let s = this.parts[0]!;
    for (let i = 1; i < this.parts.length; i++) s += randomUUID() + this.parts[i]!;
    return s;
  }

  get events(): number {
    return this.parts.length - 1;
  }
}

export const CREATE_MUTATION = `mutation Create($input: CreateAuditEventsInput!) {
  createAuditEvents(input: $input) {
    __typename
    ... on CreateAuditEventsPayload { accepted stored duplicates buffered }
    ... on BackpressureError { retryAfterMs }
    ... on RateLimitedError { retryAfterMs }
    ... on CommitTimeoutError { pending }
    ... on ValidationError { issues { index field message } }
    ... on AuditError { message retryable }
  }
}`;

export const FLUSH_MUTATION = `mutation Flush($timeoutMs: Int) {
  flushAudit(input: { timeoutMs: $timeoutMs }) {
    __typename
    ... on FlushAuditPayload { stored duplicates deadLettered waitedFor durationMs }
    ... on FlushTimeoutError { pending lastError }
    ... on AuditError { message retryable }
  }
}`;

export const STATS_QUERY = `{
  auditStats {
    __typename
    ... on AuditStats { accepted stored duplicates pending deadLettered discarded identityHolds }
    
  }
}`;

/** Every field of an event, for reads that are compared with `select *`. */
export const EVENT_FIELDS = `id: eventId occurredAt receivedAt eventType category action outcome correlationId
  actor { type id: actorId ip } resource { type id: resourceId name } parentEventId severity durationMs errorCode
  errorMessage namespace clusterId traceId spanId data batchId`;

export const PAGE_QUERY = `query Page($first: Int, $after: String, $filter: AuditEventFilter) {
  auditEvents(first: $first, after: $after, filter: $filter) {
    __typename
    ... on AuditEventConnection {
      edges { cursor node { ${EVENT_FIELDS} } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}`;

/** Only positions, to walk deep by cursor without shipping whole rows to the client. */
export const WALK_QUERY = `query Walk($first: Int, $after: String) {
  auditEvents(first: $first, after: $after) {
    __typename
    ... on AuditEventConnection { edges { node { id: eventId occurredAt } } pageInfo { hasNextPage endCursor } }
    
  }
}`;
