import type { CanonicalEventObject, ChainedFields, ChainedRow } from '../domain/chain.js';
import type { CheckpointJson, TrustedKeyJson } from '../domain/checkpoint.js';

/**
 * The export's file formats, as pure functions: the service writes lines with these, and the
 * offline verifier reads them back with the parsers below, so the two cannot drift apart.
 *
 * - JSON Lines: one event per line (`ExportedEvent`: GraphQL `AuditEvent`'s field names, hashes
 *   as lowercase hex), then one trailer line `{"trailer": {...}}`.
 * - CSV: a header row, one row per event, then the trailer as one line `#trailer,<JSON>`. Records
 *   end with LF; every text cell is quoted (`"` doubled), so an empty quoted cell is the empty
 *   string and an empty unquoted cell is null — the hash covers that difference. Text cells may
 *   hold line breaks inside their quotes (RFC 4180). `data` is the event's JSON as a text cell.
 */

/** Names the layout of lines and trailer; a verifier refuses versions it does not know. */
export const EXPORT_FORMAT_VERSION = 'auditgraph-export-v1';

export type ExportFormat = 'jsonl' | 'csv';

/**
 * One exported event (JSON Lines), with the field names of GraphQL `AuditEvent`: the object its
 * hash covers, and its place in the chain.
 */
export interface ExportedEvent extends CanonicalEventObject {
  chainSeq: number | null;
  prevHash: string | null;
  hash: string | null;
  /** The batch (transaction) that stored the event. Not covered by the hash. */
  batchId: string;
}

/** A stored row as the exporter reads it (the drizzle row of `audit_events`). */
export interface ExportSourceRow extends ChainedFields {
  chainSeq: number | null;
  prevHash: Uint8Array | null;
  hash: Uint8Array | null;
  batchId: string;
}

/** Per-month figures of an export, in its trailer. */
export interface ExportMonthSummary {
  /** First instant of the UTC month (ISO 8601). */
  month: string;
  /** The snapshot: no row past this chain position was exported (the checkpoint's position). */
  throughSeq: number;
  count: number;
  firstSeq: number | null;
  lastSeq: number | null;
  lastHash: string | null;
}

/** The last line of every export: what it holds and what vouches for it. */
export interface ExportTrailer {
  format: typeof EXPORT_FORMAT_VERSION;
  tenant: string;
  exportedAt: string;
  /** The filter as applied (validated; dates as ISO 8601); `{}` for everything. */
  filter: Record<string, unknown>;
  /** True when no filter was given: every month then holds its whole chain up to the snapshot. */
  complete: boolean;
  count: number;
  firstHash: string | null;
  lastHash: string | null;
  months: ExportMonthSummary[];
  /** The covering checkpoint of each month (the newest when the export started). */
  checkpoints: CheckpointJson[];
  /** Checkpoint signatures. */
  algorithm: 'Ed25519';
  /** The key the deployment signed with when the export was made. */
  keyId: string;
  publicKeyPem: string;
  /**
   * The key of every covering checkpoint, and the current one, each with the period it was
   * trusted in (absent from exports made before keys were rotated).
   */
  keys?: TrustedKeyJson[];
  /** Event hashes: HMAC-SHA-256 when the deployment keys its chain (CHAIN_HMAC_SECRET). */
  hashAlgorithm: 'SHA-256' | 'HMAC-SHA-256';
  hmac: boolean;
  canonicalization: 'RFC 8785 (JCS)';
  chainVersion: string;
  /** Plain words on what the snapshot includes. */
  snapshot: string;
}

/** CSV columns, in order: JSON paths of `ExportedEvent` (nested objects flattened with dots). */
export const CSV_COLUMNS = [
  'id',
  'occurredAt',
  'receivedAt',
  'eventType',
  'category',
  'action',
  'outcome',
  'correlationId',
  'actor.type',
  'actor.id',
  'actor.ip',
  'resource.type',
  'resource.id',
  'resource.name',
  'parentEventId',
  'severity',
  'durationMs',
  'errorCode',
  'errorMessage',
  'namespace',
  'clusterId',
  'traceId',
  'spanId',
  'data',
  'chainSeq',
  'prevHash',
  'hash',
  'batchId',
] as const;

/** Prefix of the CSV trailer line (a comment line: no event row can start with `#`). */
export const CSV_TRAILER_PREFIX = '#trailer,';

const hex = (b: Uint8Array | null): string | null => (b ? Buffer.from(b).toString('hex') : null);

/** A stored row as an exported event. */
export function exportedEvent(r: ExportSourceRow): ExportedEvent {
  // One literal, not canonicalObject() spread into another: on the export's hot path the copy
  // doubled the garbage per row, and the service's RSS during a 1M-row export rose from +45 MB
  // to +250 MB. A property test (test/unit/chain.test.ts) holds this to canonicalObject().
  return {
    id: r.id,
    occurredAt: r.occurredAt.toISOString(),
    receivedAt: r.receivedAt.toISOString(),
    eventType: r.eventType,
    category: r.category,
    action: r.action,
    outcome: r.outcome,
    correlationId: r.correlationId,
    actor: { type: r.actorType, id: r.actorId, ip: r.actorIp },
    resource: { type: r.resourceType, id: r.resourceId, name: r.resourceName },
    parentEventId: r.parentEventId,
    severity: r.severity,
    durationMs: r.durationMs,
    errorCode: r.errorCode,
    errorMessage: r.errorMessage,
    namespace: r.namespace,
    clusterId: r.clusterId,
    traceId: r.traceId,
    spanId: r.spanId,
    data: r.data ?? null,
    chainSeq: r.chainSeq === null ? null : Number(r.chainSeq),
    prevHash: hex(r.prevHash),
    hash: hex(r.hash),
    batchId: r.batchId,
  };
}

/** One JSON Lines line (with its LF). JSON escapes every control character, so it is one line. */
export function jsonlLine(e: ExportedEvent): string {
  return `${JSON.stringify(e)}\n`;
}

/** The CSV header row (with its LF). */
export function csvHeader(): string {
  return `${CSV_COLUMNS.join(',')}\n`;
}

const quote = (s: string): string => `"${s.replaceAll('"', '""')}"`;
const textCell = (s: string | null): string => (s === null ? '' : quote(s));
const numberCell = (n: number | null): string => (n === null ? '' : String(n));

/** One CSV row (with its LF): text quoted, null empty and unquoted, numbers bare. */
export function csvLine(e: ExportedEvent): string {
  return `${[
    textCell(e.id),
    textCell(e.occurredAt),
    textCell(e.receivedAt),
    textCell(e.eventType),
    textCell(e.category),
    textCell(e.action),
    textCell(e.outcome),
    textCell(e.correlationId),
    textCell(e.actor.type),
    textCell(e.actor.id),
    textCell(e.actor.ip),
    textCell(e.resource.type),
    textCell(e.resource.id),
    textCell(e.resource.name),
    textCell(e.parentEventId),
    textCell(e.severity),
    numberCell(e.durationMs),
    textCell(e.errorCode),
    textCell(e.errorMessage),
    textCell(e.namespace),
    textCell(e.clusterId),
    textCell(e.traceId),
    textCell(e.spanId),
    e.data === null || e.data === undefined ? '' : quote(JSON.stringify(e.data)),
    numberCell(e.chainSeq),
    textCell(e.prevHash),
    textCell(e.hash),
    textCell(e.batchId),
  ].join(',')}\n`;
}

/** One event line in the given format. */
export function eventLine(format: ExportFormat, e: ExportedEvent): string {
  return format === 'jsonl' ? jsonlLine(e) : csvLine(e);
}

/** Prefix of the CSV line that ends an export which failed while it was sent. */
export const CSV_ERROR_PREFIX = '#error,';

/** What ends an export, in place of its trailer, when it failed after its first bytes were sent. */
export interface ExportFailure {
  type: 'InternalError';
  message: string;
  retryable: true;
  requestId: string;
}

/**
 * The line that ends a failed export (with its LF): `{"error": {...}}` in JSON Lines,
 * `#error,<JSON>` in CSV. Its status (200) was sent before the failure, so the failure is said in
 * the body; the file has no trailer, and the verifier reports it as failed.
 */
export function errorLine(format: ExportFormat, error: ExportFailure): string {
  return format === 'jsonl'
    ? `${JSON.stringify({ error })}\n`
    : `${CSV_ERROR_PREFIX}${JSON.stringify(error)}\n`;
}

/** The trailer line in the given format (with its LF). */
export function trailerLine(format: ExportFormat, trailer: ExportTrailer): string {
  return format === 'jsonl'
    ? `${JSON.stringify({ trailer })}\n`
    : `${CSV_TRAILER_PREFIX}${JSON.stringify(trailer)}\n`;
}

// ---- reading exports back (the verifier) ----

/** A line that is not what the format says; `field` names the part that is wrong. */
export class ExportFormatError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'ExportFormatError';
  }
}

const HASH_HEX = /^[0-9a-f]{64}$/;

function field<T>(
  obj: Record<string, unknown>,
  key: string,
  path: string,
  check: (v: unknown) => v is T,
  expected: string,
): T {
  if (!Object.hasOwn(obj, key)) throw new ExportFormatError(path, 'missing');
  const v = obj[key];
  if (!check(v)) throw new ExportFormatError(path, `expected ${expected}`);
  return v;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isStringOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';
const isIntOrNull = (v: unknown): v is number | null =>
  v === null || (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0);
const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v);
const isHashOrNull = (v: unknown): v is string | null =>
  v === null || (typeof v === 'string' && HASH_HEX.test(v));

/**
 * An instant as the export writes it (`Date#toISOString`). Any other spelling of the same
 * instant is refused: the hash covers this exact text, and a reformatted file (a spreadsheet's
 * "helpful" date conversion) should be named as such rather than reported as tampering.
 */
function instant(obj: Record<string, unknown>, key: string): Date {
  const text = field(obj, key, key, isString, 'an ISO 8601 string');
  const d = new Date(text);
  if (Number.isNaN(d.getTime()) || d.toISOString() !== text) {
    throw new ExportFormatError(key, 'expected an instant written as YYYY-MM-DDTHH:MM:SS.sssZ');
  }
  return d;
}

/**
 * An exported event (parsed JSON) as the chain sees it: the hashed fields plus its place in the
 * chain. Throws ExportFormatError naming the first field that is missing or of the wrong type.
 */
export function chainedRowFromExport(value: unknown): ChainedRow {
  if (!isObject(value)) throw new ExportFormatError('(line)', 'expected a JSON object');
  const o = value;
  const actor = field(o, 'actor', 'actor', isObject, 'an object');
  const resource = field(o, 'resource', 'resource', isObject, 'an object');
  const chainSeq = field(o, 'chainSeq', 'chainSeq', isIntOrNull, 'a non-negative integer or null');
  const prevHash = field(o, 'prevHash', 'prevHash', isHashOrNull, '64 hex digits or null');
  const hash = field(o, 'hash', 'hash', isHashOrNull, '64 hex digits or null');
  if (!Object.hasOwn(o, 'data')) throw new ExportFormatError('data', 'missing');
  return {
    id: field(o, 'id', 'id', isString, 'a string'),
    occurredAt: instant(o, 'occurredAt'),
    receivedAt: instant(o, 'receivedAt'),
    eventType: field(o, 'eventType', 'eventType', isString, 'a string'),
    category: field(o, 'category', 'category', isString, 'a string'),
    action: field(o, 'action', 'action', isString, 'a string'),
    outcome: field(o, 'outcome', 'outcome', isString, 'a string'),
    correlationId: field(o, 'correlationId', 'correlationId', isString, 'a string'),
    actorType: field(actor, 'type', 'actor.type', isString, 'a string'),
    actorId: field(actor, 'id', 'actor.id', isString, 'a string'),
    actorIp: field(actor, 'ip', 'actor.ip', isStringOrNull, 'a string or null'),
    resourceType: field(resource, 'type', 'resource.type', isString, 'a string'),
    resourceId: field(resource, 'id', 'resource.id', isString, 'a string'),
    resourceName: field(resource, 'name', 'resource.name', isStringOrNull, 'a string or null'),
    parentEventId: field(o, 'parentEventId', 'parentEventId', isStringOrNull, 'a string or null'),
    severity: field(o, 'severity', 'severity', isStringOrNull, 'a string or null'),
    durationMs: field(o, 'durationMs', 'durationMs', isIntOrNull, 'an integer or null'),
    errorCode: field(o, 'errorCode', 'errorCode', isStringOrNull, 'a string or null'),
    errorMessage: field(o, 'errorMessage', 'errorMessage', isStringOrNull, 'a string or null'),
    namespace: field(o, 'namespace', 'namespace', isStringOrNull, 'a string or null'),
    clusterId: field(o, 'clusterId', 'clusterId', isStringOrNull, 'a string or null'),
    traceId: field(o, 'traceId', 'traceId', isStringOrNull, 'a string or null'),
    spanId: field(o, 'spanId', 'spanId', isStringOrNull, 'a string or null'),
    data: o.data,
    chainSeq,
    prevHash: prevHash === null ? null : Buffer.from(prevHash, 'hex'),
    hash: hash === null ? null : Buffer.from(hash, 'hex'),
  };
}

/** One parsed CSV cell: its text, and whether it was quoted (an unquoted empty cell is null). */
export interface CsvCell {
  text: string;
  quoted: boolean;
}

/**
 * True when `text` (one or more physical lines) ends outside quotes, i.e. is a whole record.
 * Doubled quotes inside a quoted cell come in pairs, so counting quotes is enough.
 */
export function csvRecordComplete(text: string): boolean {
  let quotes = 0;
  for (let i = text.indexOf('"'); i !== -1; i = text.indexOf('"', i + 1)) quotes++;
  return quotes % 2 === 0;
}

/** Splits one CSV record (without its final LF) into cells; throws on malformed quoting. */
export function parseCsvRecord(text: string): CsvCell[] {
  const cells: CsvCell[] = [];
  let i = 0;
  for (;;) {
    if (text[i] === '"') {
      let value = '';
      let j = i + 1;
      for (;;) {
        const q = text.indexOf('"', j);
        if (q === -1) throw new ExportFormatError('(csv)', 'a quoted cell is not closed');
        value += text.slice(j, q);
        if (text[q + 1] === '"') {
          value += '"';
          j = q + 2;
        } else {
          i = q + 1;
          break;
        }
      }
      cells.push({ text: value, quoted: true });
    } else {
      const comma = text.indexOf(',', i);
      const end = comma === -1 ? text.length : comma;
      const raw = text.slice(i, end);
      if (raw.includes('"'))
        throw new ExportFormatError('(csv)', 'a quote inside an unquoted cell');
      cells.push({ text: raw, quoted: false });
      i = end;
    }
    if (i === text.length) return cells;
    if (text[i] !== ',') {
      throw new ExportFormatError('(csv)', 'text after a quoted cell (expected a comma)');
    }
    i++;
  }
}

/**
 * A CSV event row as the JSON object of an exported event, so that one reader
 * (`chainedRowFromExport`) checks both formats. Cells must be in `CSV_COLUMNS` order.
 */
export function exportedEventFromCsv(cells: readonly CsvCell[]): Record<string, unknown> {
  if (cells.length !== CSV_COLUMNS.length) {
    throw new ExportFormatError(
      '(csv)',
      `expected ${CSV_COLUMNS.length} cells, found ${cells.length}`,
    );
  }
  const text = (i: number): string | null => {
    const c = cells[i]!;
    return c.quoted ? c.text : c.text === '' ? null : c.text;
  };
  const num = (i: number): number | null | string => {
    const c = cells[i]!;
    if (c.quoted) return c.text; // the type check in chainedRowFromExport names it
    if (c.text === '') return null;
    return /^\d{1,15}$/.test(c.text) ? Number(c.text) : c.text;
  };
  const dataText = text(23);
  let data: unknown = null;
  if (dataText !== null) {
    try {
      data = JSON.parse(dataText);
    } catch {
      throw new ExportFormatError('data', 'not valid JSON');
    }
  }
  return {
    id: text(0),
    occurredAt: text(1),
    receivedAt: text(2),
    eventType: text(3),
    category: text(4),
    action: text(5),
    outcome: text(6),
    correlationId: text(7),
    actor: { type: text(8), id: text(9), ip: text(10) },
    resource: { type: text(11), id: text(12), name: text(13) },
    parentEventId: text(14),
    severity: text(15),
    durationMs: num(16),
    errorCode: text(17),
    errorMessage: text(18),
    namespace: text(19),
    clusterId: text(20),
    traceId: text(21),
    spanId: text(22),
    data,
    chainSeq: num(24),
    prevHash: text(25),
    hash: text(26),
    batchId: text(27),
  };
}
