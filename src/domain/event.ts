import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import canonicalize from 'canonicalize';
import { z } from 'zod';
import { ValidationError, type ValidationIssue } from './errors.js';

export const OUTCOMES = ['SUCCESS', 'FAILURE', 'PENDING'] as const;
export type Outcome = (typeof OUTCOMES)[number];

/** Limits from the data model; exported so the GraphQL descriptions and tests quote the same numbers. */
export const LIMITS = {
  eventType: 100,
  category: 50,
  action: 50,
  correlationId: 255,
  actorType: 100,
  actorId: 255,
  resourceType: 100,
  resourceId: 255,
  resourceName: 255,
  severity: 20,
  errorCode: 50,
  errorMessage: 4096,
  namespace: 253,
  clusterId: 255,
  traceId: 255,
  spanId: 255,
  dataBytes: 256 * 1024,
  dataDepth: 10,
  durationMs: 2 ** 31 - 1,
} as const;

/** An event as a client sends it (GraphQL `AuditEventInput`), before validation. */
export interface AuditEventInput {
  id?: string | null;
  occurredAt: Date;
  eventType: string;
  category: string;
  action: string;
  outcome: Outcome;
  correlationId: string;
  actor: { type: string; id: string; ip?: string | null };
  resource: { type: string; id: string; name?: string | null };
  parentEventId?: string | null;
  severity?: string | null;
  durationMs?: number | null;
  errorCode?: string | null;
  errorMessage?: string | null;
  namespace?: string | null;
  clusterId?: string | null;
  traceId?: string | null;
  spanId?: string | null;
  data?: unknown;
}

/** A validated event, shaped like its row. `data` is kept serialised: it is measured, written and hashed as text. */
export interface AuditEventRecord {
  id: string;
  occurredAt: Date;
  receivedAt: Date;
  eventType: string;
  category: string;
  action: string;
  outcome: Outcome;
  correlationId: string;
  actorType: string;
  actorId: string;
  actorIp: string | null;
  resourceType: string;
  resourceId: string;
  resourceName: string | null;
  parentEventId: string | null;
  severity: string | null;
  durationMs: number | null;
  errorCode: string | null;
  errorMessage: string | null;
  namespace: string | null;
  clusterId: string | null;
  traceId: string | null;
  spanId: string | null;
  dataJson: string | null;
  /**
   * True when `dataJson` is RFC 8785 canonical JSON (validation writes it so): the hash chain
   * then takes it as it is. Records made elsewhere leave it unset and are canonicalised anew.
   */
  dataCanonical?: boolean;
}

/**
 * A record back from JSON (a dead letter, a journal entry, a subscription message): its two
 * instants were written as ISO text.
 */
export function recordFromJson(
  r: Omit<AuditEventRecord, 'occurredAt' | 'receivedAt'> & {
    occurredAt: string | Date;
    receivedAt: string | Date;
  },
): AuditEventRecord {
  return { ...r, occurredAt: new Date(r.occurredAt), receivedAt: new Date(r.receivedAt) };
}

/**
 * A stored row's exact key (its primary key). The idempotency key is the id alone: an id is one
 * event per tenant, so the same id again, under any occurredAt, is a duplicate.
 */
export function eventKey(id: string, occurredAt: Date): string {
  return `${occurredAt.getTime()}|${id}`;
}

const text = (max: number) =>
  z.string().min(1, 'must not be empty').max(max, `at most ${max} characters`);
const optText = (max: number) => z.string().max(max, `at most ${max} characters`).nullish();
const uuid = z.guid('must be a UUID');

const eventSchema = z.object({
  id: uuid.nullish(),
  occurredAt: z.date(),
  eventType: text(LIMITS.eventType),
  category: text(LIMITS.category),
  action: text(LIMITS.action),
  outcome: z.enum(OUTCOMES),
  correlationId: text(LIMITS.correlationId),
  actor: z.object({
    type: text(LIMITS.actorType),
    id: text(LIMITS.actorId),
    ip: z
      .string()
      // No zone ids (fe80::1%eth0): they make no sense in an audit record and have no length bound.
      .refine(
        (v) => v.length <= 45 && !v.includes('%') && isIP(v) !== 0,
        'must be an IPv4 or IPv6 address',
      )
      .nullish(),
  }),
  resource: z.object({
    type: text(LIMITS.resourceType),
    id: text(LIMITS.resourceId),
    name: optText(LIMITS.resourceName),
  }),
  parentEventId: uuid.nullish(),
  severity: optText(LIMITS.severity),
  durationMs: z
    .number()
    .int('must be an integer')
    .min(0, 'must be ≥ 0')
    .max(LIMITS.durationMs, `must be ≤ ${LIMITS.durationMs}`)
    .nullish(),
  errorCode: optText(LIMITS.errorCode),
  errorMessage: optText(LIMITS.errorMessage),
  namespace: optText(LIMITS.namespace),
  clusterId: optText(LIMITS.clusterId),
  traceId: optText(LIMITS.traceId),
  spanId: optText(LIMITS.spanId),
  data: z.unknown().optional(),
});

export interface ValidationContext {
  now: Date;
  retentionDays: number;
  maxFutureSkewMs: number;
  maxEvents: number;
}

/**
 * Depth of a JSON value (a scalar is 0, `{}` is 1, `{"a":{}}` is 2), counted no further than
 * `limit`: hostile input nested a million levels deep costs `limit` levels of recursion, no more.
 */
export function jsonDepth(value: unknown, limit: number): number {
  if (value === null || typeof value !== 'object') return 0;
  if (limit <= 0) return 1;
  let deepest = 0;
  const children = Array.isArray(value) ? value : Object.values(value);
  for (const child of children) {
    const d = jsonDepth(child, limit - 1);
    if (d > deepest) deepest = d;
    if (deepest >= limit) break;
  }
  return deepest + 1;
}

/**
 * What PostgreSQL text and jsonb cannot hold: the NUL character, and UTF-16 that is not
 * well-formed (a lone surrogate). Checked on every string, keys included, of a value (events,
 * and the filters that are compared with them in SQL).
 */
export function unstorableText(value: unknown, limit = 64): string | null {
  if (typeof value === 'string') {
    if (value.includes('\u0000')) return 'must not contain the NUL character';
    if (!value.isWellFormed()) return 'must be well-formed Unicode (no lone surrogates)';
    return null;
  }
  if (value && typeof value === 'object' && !(value instanceof Date) && limit > 0) {
    for (const [k, v] of Object.entries(value)) {
      const problem = unstorableText(k, 0) ?? unstorableText(v, limit - 1);
      if (problem) return problem;
    }
  }
  return null;
}

/**
 * Event types the service writes itself (access records, key and tenant administration,
 * lifecycle): they are built internally and never pass through validateEvents, so refusing the
 * namespace here keeps a caller from storing a record that reads as the service's own.
 */
export const RESERVED_EVENT_TYPE_PREFIX = 'auditgraph.';

/** Why a caller may not use this event type (any case of the reserved prefix), or null. */
function reservedEventType(eventType: unknown): string | null {
  if (typeof eventType !== 'string') return null;
  if (!eventType.toLowerCase().startsWith(RESERVED_EVENT_TYPE_PREFIX)) return null;
  return `the ${RESERVED_EVENT_TYPE_PREFIX} namespace is reserved for the service's own records`;
}

/**
 * The path (`data.a.b`, `data.list[2]`) of the first number in `value` that does not survive
 * the round trip through jsonb and JSON exactly: a non-finite one (`1e999` parses as Infinity,
 * which JSON cannot write) or one beyond ±(2^53 − 1), where doubles no longer hold every integer
 * and the value read back may differ from the one sent. Such numbers are to be sent as strings.
 * `value` is already bounded in depth by the caller.
 */
function inexactNumber(value: unknown, path: string): string | null {
  if (typeof value === 'number') {
    return Number.isFinite(value) && Math.abs(value) <= Number.MAX_SAFE_INTEGER ? null : path;
  }
  if (value === null || typeof value !== 'object') return null;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = inexactNumber(value[i], `${path}[${i}]`);
      if (found) return found;
    }
    return null;
  }
  for (const [k, v] of Object.entries(value)) {
    const found = inexactNumber(v, `${path}.${k}`);
    if (found) return found;
  }
  return null;
}

function checkData(data: unknown, issues: ValidationIssue[], index: number): string | null {
  if (data === undefined || data === null) return null;
  if (typeof data !== 'object' || Array.isArray(data)) {
    issues.push({ index, field: 'data', message: 'must be a JSON object' });
    return null;
  }
  const depth = jsonDepth(data, LIMITS.dataDepth + 1);
  if (depth > LIMITS.dataDepth) {
    issues.push({
      index,
      field: 'data',
      message: `nesting deeper than ${LIMITS.dataDepth} levels`,
    });
    return null;
  }
  const text = unstorableText(data);
  if (text) {
    // Rejected here rather than refused by the database later (a dead letter that can never be replayed).
    issues.push({ index, field: 'data', message: text });
    return null;
  }
  const inexact = inexactNumber(data, 'data');
  if (inexact) {
    issues.push({
      index,
      field: inexact,
      message: `a number beyond ±${Number.MAX_SAFE_INTEGER} or not finite cannot be stored exactly; send it as a string`,
    });
    return null;
  }
  // Canonical (RFC 8785) from the start: the hash chain uses this text as it is.
  const json = canonicalize(data) as string;
  if (Buffer.byteLength(json, 'utf8') > LIMITS.dataBytes) {
    issues.push({
      index,
      field: 'data',
      message: `larger than ${LIMITS.dataBytes} bytes serialised`,
    });
    return null;
  }
  return json;
}

/**
 * Validates a whole call. Either every event is valid and comes back as a record, or a
 * ValidationError lists every problem (event index, field, message) and nothing is accepted.
 */
export function validateEvents(
  inputs: readonly AuditEventInput[],
  ctx: ValidationContext,
): AuditEventRecord[] {
  if (inputs.length === 0) throw ValidationError.single('events', 'at least one event is required');
  if (inputs.length > ctx.maxEvents) {
    throw ValidationError.single(
      'events',
      `at most ${ctx.maxEvents} events per call (MAX_EVENTS_PER_CALL)`,
    );
  }
  const issues: ValidationIssue[] = [];
  const records: AuditEventRecord[] = [];
  const oldest = ctx.now.getTime() - ctx.retentionDays * 86_400_000;
  const newest = ctx.now.getTime() + ctx.maxFutureSkewMs;

  inputs.forEach((input, index) => {
    const before = issues.length;
    const parsed = eventSchema.safeParse(input);
    if (!parsed.success) {
      for (const i of parsed.error.issues) {
        issues.push({ index, field: i.path.join('.') || '(event)', message: i.message });
      }
    }
    for (const [field, value] of Object.entries(input)) {
      if (field === 'data') continue;
      if (value && typeof value === 'object' && !(value instanceof Date)) {
        for (const [sub, v] of Object.entries(value)) {
          const problem = unstorableText(v);
          if (problem) issues.push({ index, field: `${field}.${sub}`, message: problem });
        }
      } else {
        const problem = unstorableText(value);
        if (problem) issues.push({ index, field, message: problem });
      }
    }
    const reserved = reservedEventType(input.eventType);
    if (reserved) issues.push({ index, field: 'eventType', message: reserved });
    const dataJson = checkData(input.data, issues, index);
    const t = input.occurredAt instanceof Date ? input.occurredAt.getTime() : Number.NaN;
    if (Number.isNaN(t)) {
      if (parsed.success)
        issues.push({ index, field: 'occurredAt', message: 'must be a valid date-time' });
    } else if (t < oldest) {
      issues.push({
        index,
        field: 'occurredAt',
        message: `older than the retention window of ${ctx.retentionDays} days`,
      });
    } else if (t > newest) {
      issues.push({
        index,
        field: 'occurredAt',
        message: `more than ${ctx.maxFutureSkewMs} ms in the future`,
      });
    }
    if (issues.length > before || !parsed.success) return;
    const e = parsed.data;
    records.push({
      id: (e.id ?? randomUUID()).toLowerCase(),
      occurredAt: e.occurredAt,
      receivedAt: ctx.now,
      eventType: e.eventType,
      category: e.category,
      action: e.action,
      outcome: e.outcome,
      correlationId: e.correlationId,
      actorType: e.actor.type,
      actorId: e.actor.id,
      actorIp: e.actor.ip ?? null,
      resourceType: e.resource.type,
      resourceId: e.resource.id,
      resourceName: e.resource.name ?? null,
      parentEventId: e.parentEventId?.toLowerCase() ?? null,
      severity: e.severity ?? null,
      durationMs: e.durationMs ?? null,
      errorCode: e.errorCode ?? null,
      errorMessage: e.errorMessage ?? null,
      namespace: e.namespace ?? null,
      clusterId: e.clusterId ?? null,
      traceId: e.traceId ?? null,
      spanId: e.spanId ?? null,
      dataJson,
      dataCanonical: true,
    });
  });
  if (issues.length > 0) throw new ValidationError(issues);
  return records;
}

/** Rough in-memory size of a record, for the process-wide byte bound of the buffers. */
export function recordBytes(r: AuditEventRecord): number {
  let n = 200; // fixed fields, object overhead
  n += r.eventType.length + r.category.length + r.action.length + r.correlationId.length;
  n += r.actorType.length + r.actorId.length + r.resourceType.length + r.resourceId.length;
  n += (r.resourceName?.length ?? 0) + (r.errorMessage?.length ?? 0) + (r.dataJson?.length ?? 0);
  n += (r.namespace?.length ?? 0) + (r.clusterId?.length ?? 0) + (r.traceId?.length ?? 0);
  n += (r.spanId?.length ?? 0) + (r.errorCode?.length ?? 0) + (r.severity?.length ?? 0);
  return n * 2; // UTF-16 in memory
}
