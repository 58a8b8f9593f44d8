import { ValidationError, type ValidationIssue } from '../domain/errors.js';
import { OUTCOMES, type Outcome } from '../domain/event.js';
import { type AuditEventFilter, FILTER_LIMITS, validateFilter } from '../domain/filter.js';
import { parseInstant } from '../domain/instant.js';
import type { ExportFormat } from './format.js';

/**
 * The query string of `GET /export`, checked as strictly as GraphQL checks `auditEvents`:
 * the `filter` parameter is the JSON form of `AuditEventFilter` (same field names, DateTime as
 * ISO 8601 with a zone), type-checked here the way GraphQL's input coercion would, then held to
 * the same rules by `validateFilter`. Unknown or repeated parameters are refused, not ignored: an
 * export that silently ignored a misspelt filter would hand out more than was asked for.
 */

/** Longest `filter` parameter (decoded): dataContains alone may take FILTER_LIMITS bytes. */
export const MAX_FILTER_PARAM_BYTES = FILTER_LIMITS.dataContainsBytes + 4 * 1024;

/** Longest request target (path and query) the export accepts. */
export const MAX_EXPORT_URL_BYTES = 3 * MAX_FILTER_PARAM_BYTES;

export interface ExportParams {
  format: ExportFormat;
  filter: AuditEventFilter;
  /** `gzip=1` / `gzip=0` when given; otherwise Accept-Encoding decides. */
  gzip: boolean | null;
}

const PARAMS = new Set(['format', 'filter', 'gzip']);
const FORMATS: readonly ExportFormat[] = ['jsonl', 'csv'];

const issue = (field: string, message: string): ValidationIssue => ({
  index: null,
  field,
  message,
});

/** Parses the export's query string; throws ValidationError listing every problem. */
export function parseExportParams(search: URLSearchParams): ExportParams {
  const issues: ValidationIssue[] = [];
  for (const key of new Set(search.keys())) {
    if (!PARAMS.has(key)) {
      issues.push(issue(key, `unknown parameter; expected ${[...PARAMS].join(', ')}`));
    } else if (search.getAll(key).length > 1) {
      issues.push(issue(key, 'given more than once'));
    }
  }
  if (issues.length) throw new ValidationError(issues);

  const formatText = search.get('format') ?? 'jsonl';
  const format = FORMATS.find((f) => f === formatText);
  if (!format) issues.push(issue('format', `must be one of ${FORMATS.join(', ')}`));

  let gzip: boolean | null = null;
  const gzipText = search.get('gzip');
  if (gzipText !== null) {
    if (['1', 'true'].includes(gzipText)) gzip = true;
    else if (['0', 'false'].includes(gzipText)) gzip = false;
    else issues.push(issue('gzip', 'must be 1, true, 0 or false'));
  }

  let filter: AuditEventFilter = {};
  const filterText = search.get('filter');
  if (filterText !== null) {
    try {
      filter = filterFromJson(filterText);
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err;
      issues.push(...err.issues);
    }
  }
  if (issues.length) throw new ValidationError(issues);
  return { format: format!, filter, gzip };
}

const STRING_FIELDS = [
  'correlationId',
  'category',
  'action',
  'actorType',
  'actorId',
  'resourceType',
  'resourceId',
  'severity',
] as const;

const KNOWN_FIELDS = new Set<string>([
  ...STRING_FIELDS,
  'eventTypes',
  'outcome',
  'occurredAfter',
  'occurredBefore',
  'dataContains',
]);

/**
 * The JSON text of an `AuditEventFilter` as a validated filter (absent and null fields removed).
 * Throws ValidationError (fields named `filter.<name>`) for bad JSON, unknown fields, wrong types
 * and everything `validateFilter` refuses.
 */
export function filterFromJson(text: string): AuditEventFilter {
  if (Buffer.byteLength(text, 'utf8') > MAX_FILTER_PARAM_BYTES) {
    throw ValidationError.single('filter', `larger than ${MAX_FILTER_PARAM_BYTES} bytes`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw ValidationError.single('filter', 'is not valid JSON');
  }
  return filterFromValue(value);
}

/** A parsed JSON value as a validated filter (see filterFromJson). */
export function filterFromValue(value: unknown): AuditEventFilter {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw ValidationError.single('filter', 'must be a JSON object');
  }
  const raw = value as Record<string, unknown>;
  const issues: ValidationIssue[] = [];
  const out: AuditEventFilter = {};
  for (const key of Object.keys(raw)) {
    if (!KNOWN_FIELDS.has(key)) issues.push(issue(`filter.${key}`, 'unknown field'));
  }
  for (const key of STRING_FIELDS) {
    const v = raw[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') issues.push(issue(`filter.${key}`, 'must be a string'));
    else out[key] = v;
  }
  const types = raw.eventTypes;
  if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || types.some((t) => typeof t !== 'string')) {
      issues.push(issue('filter.eventTypes', 'must be a list of strings'));
    } else out.eventTypes = types as string[];
  }
  const outcome = raw.outcome;
  if (outcome !== undefined && outcome !== null) {
    if (typeof outcome !== 'string' || !OUTCOMES.includes(outcome as Outcome)) {
      issues.push(issue('filter.outcome', `must be one of ${OUTCOMES.join(', ')}`));
    } else out.outcome = outcome as Outcome;
  }
  for (const key of ['occurredAfter', 'occurredBefore'] as const) {
    const v = raw[key];
    if (v === undefined || v === null) continue;
    // GraphQL's DateTime rule, from the same place.
    const d = parseInstant(v);
    if (d instanceof Date) out[key] = d;
    else issues.push(issue(`filter.${key}`, d.problem));
  }
  const contains = raw.dataContains;
  if (contains !== undefined && contains !== null) {
    if (typeof contains !== 'object' || Array.isArray(contains)) {
      issues.push(issue('filter.dataContains', 'must be a JSON object'));
    } else out.dataContains = contains as Record<string, unknown>;
  }
  if (issues.length) throw new ValidationError(issues);
  return validateFilter(out);
}

/** True when the filter has no condition: the export then holds whole chains. */
export function isEmptyFilter(filter: AuditEventFilter): boolean {
  return Object.values(filter).every((v) => v === undefined || v === null);
}

/**
 * Whether an `Accept-Encoding` header accepts gzip: `gzip`, `x-gzip` or `*` with a non-zero
 * quality, unless gzip itself is refused with `q=0` (RFC 9110 §12.5.3).
 */
export function acceptsGzip(header: string | undefined): boolean {
  if (!header) return false;
  let star = false;
  for (const part of header.split(',')) {
    const [name = '', ...params] = part.trim().toLowerCase().split(';');
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    const quality = q ? Number(q.slice(2)) : 1;
    const accepted = Number.isFinite(quality) && quality > 0;
    if (name.trim() === 'gzip' || name.trim() === 'x-gzip') return accepted;
    if (name.trim() === '*') star = accepted;
  }
  return star;
}
