import { ValidationError, type ValidationIssue } from './errors.js';
import {
  type AuditEventRecord,
  jsonDepth,
  LIMITS,
  OUTCOMES,
  type Outcome,
  unstorableText,
} from './event.js';
import { instantRangeProblem } from './instant.js';
import { isServiceEventType } from './service-event.js';

/** The filter of `auditEvents` and of the live tail. Every present condition must hold. */
export interface AuditEventFilter {
  correlationId?: string | null;
  eventTypes?: string[] | null;
  category?: string | null;
  action?: string | null;
  outcome?: Outcome | null;
  actorType?: string | null;
  actorId?: string | null;
  resourceType?: string | null;
  resourceId?: string | null;
  /** Inclusive lower bound on occurredAt. */
  occurredAfter?: Date | null;
  /** Exclusive upper bound on occurredAt. */
  occurredBefore?: Date | null;
  severity?: string | null;
  /** Events whose data contains this JSON object (jsonb `@>`). */
  dataContains?: Record<string, unknown> | null;
}

export const FILTER_LIMITS = { eventTypes: 50, dataContainsBytes: 8 * 1024, dataContainsDepth: 5 };

export type AuditEventOrder = 'OCCURRED_AT_ASC' | 'OCCURRED_AT_DESC';

const stringLimits: Partial<Record<keyof AuditEventFilter, number>> = {
  correlationId: LIMITS.correlationId,
  category: LIMITS.category,
  action: LIMITS.action,
  actorType: LIMITS.actorType,
  actorId: LIMITS.actorId,
  resourceType: LIMITS.resourceType,
  resourceId: LIMITS.resourceId,
  severity: LIMITS.severity,
};

/** Checks a filter from the network; returns it with absent fields removed. */
export function validateFilter(filter: AuditEventFilter | null | undefined): AuditEventFilter {
  if (!filter) return {};
  const issues: ValidationIssue[] = [];
  const out: AuditEventFilter = {};
  for (const [key, max] of Object.entries(stringLimits) as [keyof AuditEventFilter, number][]) {
    const v = filter[key];
    if (v === undefined || v === null) continue;
    // NUL or a lone surrogate: PostgreSQL cannot take it as a parameter (and no stored event
    // can hold one, so it could match nothing).
    const text = typeof v === 'string' ? unstorableText(v) : null;
    if (typeof v !== 'string' || v.length === 0 || v.length > max) {
      issues.push({ index: null, field: `filter.${key}`, message: `1 to ${max} characters` });
    } else if (text) {
      issues.push({ index: null, field: `filter.${key}`, message: text });
    } else {
      (out as Record<string, unknown>)[key] = v;
    }
  }
  if (filter.eventTypes) {
    const text = unstorableText(filter.eventTypes, 1);
    if (filter.eventTypes.length === 0 || filter.eventTypes.length > FILTER_LIMITS.eventTypes) {
      issues.push({
        index: null,
        field: 'filter.eventTypes',
        message: `between 1 and ${FILTER_LIMITS.eventTypes} entries`,
      });
    } else if (filter.eventTypes.some((t) => t.length === 0 || t.length > LIMITS.eventType)) {
      issues.push({
        index: null,
        field: 'filter.eventTypes',
        message: `each 1 to ${LIMITS.eventType} characters`,
      });
    } else if (text) {
      issues.push({ index: null, field: 'filter.eventTypes', message: `each ${text}` });
    } else {
      out.eventTypes = [...new Set(filter.eventTypes)].sort();
    }
  }
  if (filter.outcome) {
    if (!OUTCOMES.includes(filter.outcome)) {
      issues.push({ index: null, field: 'filter.outcome', message: 'unknown outcome' });
    } else out.outcome = filter.outcome;
  }
  for (const key of ['occurredAfter', 'occurredBefore'] as const) {
    const d = filter[key];
    if (!d) continue;
    // The DateTime scalar refuses these already; a filter built another way is held to the same.
    const problem = d instanceof Date ? instantRangeProblem(d) : 'must be a date-time';
    if (problem) issues.push({ index: null, field: `filter.${key}`, message: problem });
    else out[key] = d;
  }
  if (out.occurredAfter && out.occurredBefore && out.occurredAfter >= out.occurredBefore) {
    issues.push({
      index: null,
      field: 'filter.occurredBefore',
      message: 'must be later than occurredAfter',
    });
  }
  if (filter.dataContains !== undefined && filter.dataContains !== null) {
    const v = filter.dataContains;
    const depth = jsonDepth(v, FILTER_LIMITS.dataContainsDepth + 1);
    // Only walked once its depth is known to be small.
    const inexact = () => unstorableText(v) ?? inexactNumber(v);
    if (typeof v !== 'object' || Array.isArray(v)) {
      issues.push({ index: null, field: 'filter.dataContains', message: 'must be a JSON object' });
    } else if (depth > FILTER_LIMITS.dataContainsDepth) {
      issues.push({
        index: null,
        field: 'filter.dataContains',
        message: `nesting deeper than ${FILTER_LIMITS.dataContainsDepth} levels`,
      });
    } else if (inexact()) {
      issues.push({ index: null, field: 'filter.dataContains', message: inexact()! });
    } else if (JSON.stringify(v).length > FILTER_LIMITS.dataContainsBytes) {
      issues.push({
        index: null,
        field: 'filter.dataContains',
        message: `larger than ${FILTER_LIMITS.dataContainsBytes} bytes`,
      });
    } else out.dataContains = v;
  }
  if (issues.length) throw new ValidationError(issues);
  return out;
}

/**
 * Why a JSON value holds a number that cannot be compared exactly with stored data: JSON text
 * such as `1e999` parses to Infinity (which JSON.stringify turns into `null`, so the filter
 * would silently look for nulls), and integers beyond 2^53 were already rounded on parsing.
 * The value's depth is bounded by the caller.
 */
function inexactNumber(value: unknown): string | null {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return 'numbers must be finite (1e999 is out of range)';
    if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
      return 'integers must lie within ±(2^53 − 1); send larger ones as strings';
    }
    return null;
  }
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) {
      const problem = inexactNumber(v);
      if (problem) return problem;
    }
  }
  return null;
}

/** A stable text form of a filter: equal filters give equal strings (cursor signatures rely on it). */
export function canonicalFilter(filter: AuditEventFilter): string {
  return canonicalJson(filter);
}

function canonicalJson(value: unknown): string {
  if (value instanceof Date) return JSON.stringify(value.getTime());
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined && v !== null)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * Whether a record satisfies a filter checked by validateFilter: the in-memory twin of the SQL
 * conditions of `auditEvents`, used by the live tail. `dataContains` follows jsonb `@>`
 * (see jsonContains).
 */
export function matchesFilter(
  record: AuditEventRecord,
  f: AuditEventFilter,
  /** The record's data already parsed, when the caller has it (the live tail parses once). */
  data?: unknown,
): boolean {
  if (f.correlationId && record.correlationId !== f.correlationId) return false;
  if (f.eventTypes?.length && !f.eventTypes.includes(record.eventType)) return false;
  if (f.category && record.category !== f.category) return false;
  if (f.action && record.action !== f.action) return false;
  if (f.outcome && record.outcome !== f.outcome) return false;
  if (f.actorType && record.actorType !== f.actorType) return false;
  if (f.actorId && record.actorId !== f.actorId) return false;
  if (f.resourceType && record.resourceType !== f.resourceType) return false;
  if (f.resourceId && record.resourceId !== f.resourceId) return false;
  if (f.severity && record.severity !== f.severity) return false;
  const at = record.occurredAt.getTime();
  if (f.occurredAfter && at < f.occurredAfter.getTime()) return false;
  if (f.occurredBefore && at >= f.occurredBefore.getTime()) return false;
  if (f.dataContains) {
    if (record.dataJson === null) return false;
    return jsonContains(data === undefined ? JSON.parse(record.dataJson) : data, f.dataContains);
  }
  return true;
}

/**
 * The live tail's rule: the filter's, and the service's own records (access records above all,
 * which reads themselves produce) only for a filter that names their type in `eventTypes`.
 * Otherwise every subscription opened would be echoed to every subscriber: messages growing
 * with the square of the subscribers, caused by a key that may only read.
 */
export function matchesLiveTail(
  record: AuditEventRecord,
  f: AuditEventFilter,
  data?: unknown,
): boolean {
  if (isServiceEventType(record.eventType) && !f.eventTypes?.includes(record.eventType)) {
    return false;
  }
  return matchesFilter(record, f, data);
}

const isJsonObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v);
const isContainer = (v: unknown) => v !== null && typeof v === 'object';

/**
 * PostgreSQL's jsonb containment (`a @> b`) on parsed JSON: an object contains an object whose
 * every key it has with a contained value; an array contains an array each of whose elements
 * is contained by some element of it (order and repetition ignored); scalars must be equal.
 * Structures must match below the top level (`{"t":["x"]}` does not contain `{"t":"x"}`).
 */
export function jsonContains(a: unknown, b: unknown): boolean {
  if (Array.isArray(b)) {
    if (!Array.isArray(a)) return false;
    return b.every((be) =>
      isContainer(be)
        ? a.some((ae) => Array.isArray(ae) === Array.isArray(be) && jsonContains(ae, be))
        : a.some((ae) => !isContainer(ae) && ae === be),
    );
  }
  if (isJsonObject(b)) {
    if (!isJsonObject(a)) return false;
    return Object.entries(b).every(([key, bv]) => {
      if (!Object.hasOwn(a, key)) return false;
      const av = a[key];
      if (!isContainer(bv)) return !isContainer(av) && av === bv;
      return isContainer(av) && Array.isArray(av) === Array.isArray(bv) && jsonContains(av, bv);
    });
  }
  return !isContainer(a) && a === b;
}
