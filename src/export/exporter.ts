import { CHAIN_VERSION } from '../domain/chain.js';
import {
  type Checkpoint,
  checkpointToJson,
  type TrustedKey,
  trustedKeyToJson,
} from '../domain/checkpoint.js';
import type { AuditEventFilter } from '../domain/filter.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { AccessEventType } from '../ingest/access-log.js';
import type { CheckpointService } from '../integrity/checkpoints.js';
import type { AuditEventReader } from '../query/audit-event-reader.js';
import {
  csvHeader,
  EXPORT_FORMAT_VERSION,
  type ExportFormat,
  type ExportMonthSummary,
  type ExportSourceRow,
  type ExportTrailer,
  eventLine,
  exportedEvent,
  trailerLine,
} from './format.js';
import { isEmptyFilter } from './params.js';

/**
 * Most chain positions (so rows) read per statement. Memory holds about two pages (one being
 * formatted, one read ahead) whatever the export's size. Measured on a million-row export: with
 * 2,000-row pages the rows outlived the young generation and were promoted, and RSS saw-toothed
 * 200 MB above its start between full collections; at 1,000 it stays within ~20 MB.
 */
export const EXPORT_PAGE_SIZE = 1_000;

/** The first window of an export: small, until the size of its rows is known. */
const FIRST_WINDOW = 16;

/**
 * Text one page may come to (UTF-16 code units, about bytes). Events can carry up to 256 KiB of
 * data: windows shrink so that a page of large events stays within this, and grow (×4 a page, up
 * to EXPORT_PAGE_SIZE) while events are small.
 */
const PAGE_BUDGET_CHARS = 4 * 1024 * 1024;

/**
 * Text handed on at a time (UTF-16 code units, about bytes). Kept well below V8's large-object
 * size, so each chunk dies young in the scavenger instead of piling up in the old generation
 * until a full collection (a page as one string — a megabyte or more — made RSS saw-tooth by
 * hundreds of megabytes on a million-row export).
 */
const CHUNK_CHARS = 64 * 1024;

/** The event type of the service's records of reads (AUDIT_READS), an export's among them. */
const READ_RECORD_TYPE: AccessEventType = 'auditgraph.access.read';

/** What an export covers, fixed when it starts. */
export interface ExportSnapshot {
  tenant: TenantId;
  filter: AuditEventFilter;
  /** No filter: every month's chain is exported whole, up to its snapshot position. */
  complete: boolean;
  exportedAt: Date;
  /** Months in chain order (oldest first) that the filter's time bounds overlap. */
  months: SnapshotMonth[];
  /** The deployment's checkpoint keys when the export started. */
  keys: TrustedKey[];
}

export interface SnapshotMonth {
  month: Date;
  /** Last chain position exported: the covering checkpoint's (else the head's, unhashed chains). */
  throughSeq: number;
  /** The newest checkpoint of the month when the export started; null for an unhashed chain. */
  checkpoint: Checkpoint | null;
}

const SNAPSHOT_NOTE =
  'Each month holds its chain up to throughSeq, the position its covering checkpoint (signed when ' +
  'the export started) vouches for; events committed after the export started are not included, ' +
  "nor are the service's own read records committed after the month's newest checkpoint. " +
  'With a filter, only matching events of that range are included (complete: false).';

/**
 * Streams a tenant's events in chain order — month ascending, then `chain_seq` ascending — one
 * page at a time, as JSON Lines or CSV, followed by a trailer that lets the export be verified
 * offline. Nothing here knows HTTP: the caller pipes `lines()` into a response (or a file) with
 * backpressure, which is what keeps memory flat at any size.
 */
export class AuditExporter {
  constructor(
    private readonly reader: AuditEventReader,
    private readonly checkpoints: CheckpointService,
    private readonly opts: { hmac: boolean; pageSize?: number },
  ) {}

  /**
   * Fixes what the export covers: signs the tenant's current chain heads (so the newest events
   * are vouched for too; a month that moved only by read records keeps its checkpoint), then
   * takes the newest checkpoint of each month that still has a chain (months dropped by
   * retention have none) as its bound. Rows up to a checkpoint's position
   * were committed before it was signed, and stored events never change, so reading them page by
   * page later, without one long transaction, still sees exactly them.
   */
  async snapshot(
    tenant: TenantId,
    filter: AuditEventFilter,
    now = new Date(),
  ): Promise<ExportSnapshot> {
    // The service's read records alone (each export writes one) do not call for a new checkpoint.
    await this.checkpoints.checkpointTenant(tenant, now, { unlessOnly: [READ_RECORD_TYPE] });
    const chains = await this.checkpoints.store.chainSnapshot(tenant);
    const months: SnapshotMonth[] = chains
      .filter((c) => overlaps(c.month, filter))
      .map((c) => ({
        month: c.month,
        // A month without a checkpoint has an unhashed chain (CHAIN_HASHING=off): it is exported
        // up to its head as read now, and the verifier reports its events as unverifiable.
        throughSeq: c.checkpoint ? c.checkpoint.seq : c.headSeq,
        checkpoint: c.checkpoint,
      }));
    const keys = await this.checkpoints.trustedKeys();
    return { tenant, filter, complete: isEmptyFilter(filter), exportedAt: now, months, keys };
  }

  /**
   * The export's text in chunks of about CHUNK_CHARS (the CSV header leads the first, the
   * trailer ends the last).
   * Pull-based: the next page is read only while the consumer keeps up (one page is read ahead to
   * overlap the database with formatting). Stops between pages once `signal` is aborted.
   */
  async *lines(
    snap: ExportSnapshot,
    format: ExportFormat,
    signal?: AbortSignal,
  ): AsyncGenerator<string, void, undefined> {
    const schema = tenantSchema(snap.tenant);
    const maxWindow = this.opts.pageSize ?? EXPORT_PAGE_SIZE;
    let window = Math.min(FIRST_WINDOW, maxWindow);
    // The CSV header goes out with the first chunk, not before it: a caller that waits for the
    // first chunk before answering (see http/export-route.ts) then knows the first read succeeded.
    let head = format === 'csv' ? csvHeader() : '';
    let count = 0;
    let firstHash: string | null = null;
    let lastHash: string | null = null;
    const months: ExportMonthSummary[] = [];
    for (const m of snap.months) {
      const summary: ExportMonthSummary = {
        month: m.month.toISOString(),
        throughSeq: m.throughSeq,
        count: 0,
        firstSeq: null,
        lastSeq: null,
        lastHash: null,
      };
      months.push(summary);
      // Consecutive windows of positions up to the snapshot's: (0, w1], (w1, w1 + w2], …
      const windowFrom = (from: number) =>
        from < m.throughSeq ? { from, to: Math.min(from + window, m.throughSeq) } : null;
      const read = (w: { from: number; to: number }): Promise<ExportSourceRow[]> => {
        const p: Promise<ExportSourceRow[]> = this.reader.chainPage({
          schema,
          filter: snap.filter,
          month: m.month,
          afterSeq: w.from,
          throughSeq: w.to,
        });
        // The read-ahead may be abandoned when the consumer goes away: never an unhandled rejection.
        p.catch(() => {});
        return p;
      };
      let current = windowFrom(0);
      let next = current ? read(current) : null;
      while (current && next) {
        const rows = await next;
        signal?.throwIfAborted();
        // The read-ahead's window is sized by the pages before this one.
        current = windowFrom(current.to);
        next = current ? read(current) : null;
        let pageChars = 0;
        let chunk = '';
        for (const row of rows) {
          const e = exportedEvent(row);
          const line = eventLine(format, e);
          pageChars += line.length;
          chunk += line;
          if (chunk.length >= CHUNK_CHARS) {
            yield head + chunk;
            head = '';
            chunk = '';
          }
          summary.count++;
          summary.firstSeq ??= e.chainSeq;
          summary.lastSeq = e.chainSeq;
          summary.lastHash = e.hash;
          firstHash ??= e.hash;
          lastHash = e.hash;
        }
        count += rows.length;
        // An empty window (a selective filter) grows too: it held nothing to size rows by.
        const fits =
          rows.length > 0 ? Math.floor(PAGE_BUDGET_CHARS / (pageChars / rows.length)) : maxWindow;
        window = Math.max(1, Math.min(fits, window * 4, maxWindow));
        if (chunk) {
          yield head + chunk;
          head = '';
        }
      }
    }
    const trailer = this.trailer(snap, { count, firstHash, lastHash, months });
    yield head + trailerLine(format, trailer);
  }

  /** What lets the export be verified offline: what it covers, what it held, the key and how. */
  private trailer(
    snap: ExportSnapshot,
    seen: Pick<ExportTrailer, 'count' | 'firstHash' | 'lastHash' | 'months'>,
  ): ExportTrailer {
    const key = this.checkpoints.key;
    return {
      format: EXPORT_FORMAT_VERSION,
      tenant: snap.tenant,
      exportedAt: snap.exportedAt.toISOString(),
      filter: filterJson(snap.filter),
      complete: snap.complete,
      ...seen,
      checkpoints: snap.months.flatMap((m) =>
        m.checkpoint ? [checkpointToJson(m.checkpoint)] : [],
      ),
      algorithm: 'Ed25519',
      keyId: key.keyId,
      publicKeyPem: key.publicKeyPem,
      // The key of each covering checkpoint (and the current one), with its period.
      keys: snap.keys
        .filter(
          (k) => k.keyId === key.keyId || snap.months.some((m) => m.checkpoint?.keyId === k.keyId),
        )
        .map(trustedKeyToJson),
      hashAlgorithm: this.opts.hmac ? 'HMAC-SHA-256' : 'SHA-256',
      hmac: this.opts.hmac,
      canonicalization: 'RFC 8785 (JCS)',
      chainVersion: CHAIN_VERSION,
      snapshot: SNAPSHOT_NOTE,
    };
  }
}

/** Whether a month's range [month, next month) meets the filter's occurredAfter/Before bounds. */
function overlaps(month: Date, f: AuditEventFilter): boolean {
  const next = Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + 1, 1);
  if (f.occurredAfter && next <= f.occurredAfter.getTime()) return false;
  if (f.occurredBefore && month.getTime() >= f.occurredBefore.getTime()) return false;
  return true;
}

/** The filter as JSON (dates as ISO 8601): what the trailer records and the verifier re-parses. */
export function filterJson(f: AuditEventFilter): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(f)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => [k, v instanceof Date ? v.toISOString() : v]),
  );
}
