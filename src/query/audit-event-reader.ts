import { and, asc, desc, eq, gt, gte, inArray, lt, lte, type SQL, sql } from 'drizzle-orm';
import type { Database } from '../db/client.js';
import { addMonths } from '../db/partitions.js';
import { type TenantTables, tenantTables } from '../db/tenant-tables.js';
import type { AuditEventFilter, AuditEventOrder } from '../domain/filter.js';
import type { KeysetPosition } from '../domain/keyset-cursor.js';

export type AuditEventRow = TenantTables['auditEvents']['$inferSelect'];

export interface KeysetPageQuery {
  schema: string;
  filter: AuditEventFilter;
  order: AuditEventOrder;
  /** `forward` reads `first` rows after `after`; `backward` reads `last` rows before `before`. */
  direction: 'forward' | 'backward';
  limit: number;
  after?: KeysetPosition;
  before?: KeysetPosition;
}

/** One window of positions of a month's hash chain, in chain order (see `chainPage`). */
export interface ChainPageQuery {
  schema: string;
  filter: AuditEventFilter;
  /** First instant of the UTC month whose chain is read. */
  month: Date;
  /** Exclusive lower bound on `chain_seq`. */
  afterSeq: number;
  /** Inclusive upper bound on `chain_seq`. */
  throughSeq: number;
}

/** A month's chain at one moment: see `chainSnapshot`. */
export interface ChainMonthSnapshot {
  month: Date;
  headSeq: number;
  /** The newest signed checkpoint of the month (its tenant is the schema's), if any. */
  checkpoint: {
    seq: number;
    hash: Buffer;
    signedAt: Date;
    keyId: string;
    signature: Buffer;
  } | null;
}

export interface KeysetPage {
  rows: AuditEventRow[];
  hasNextPage: boolean;
  hasPreviousPage: boolean;
}

/**
 * Keyset pagination over `(occurred_at, id)`. Every position condition is written twice: as the
 * exact row comparison, and as a plain bound on `occurred_at` — only the latter lets PostgreSQL
 * prune partitions (a row comparison alone scans every partition's index).
 */
export class AuditEventReader {
  private readonly tables = new Map<string, TenantTables>();

  constructor(private readonly db: Database) {}

  /**
   * The page's main statement, unexecuted: `page()` runs it, and tests EXPLAIN its `toSQL()`
   * to prove that an index is used and partitions are pruned.
   */
  pageQuery(q: KeysetPageQuery) {
    const t = this.tablesOf(q.schema).auditEvents;
    const conditions = [...this.filterConditions(t, q.filter)];
    if (q.after) conditions.push(...this.beyond(t, q.after, 'after', q.order));
    if (q.before) conditions.push(...this.beyond(t, q.before, 'before', q.order));
    // Reading backward means reading the reversed order, then restoring it.
    const ascending = (q.order === 'OCCURRED_AT_ASC') === (q.direction === 'forward');
    const dir = ascending ? asc : desc;
    return this.db.orm
      .select()
      .from(t)
      .where(and(...conditions))
      .orderBy(dir(t.occurredAt), dir(t.id))
      .limit(q.limit + 1);
  }

  async page(q: KeysetPageQuery): Promise<KeysetPage> {
    const t = this.tablesOf(q.schema).auditEvents;
    const rows = await this.pageQuery(q);
    const more = rows.length > q.limit;
    if (more) rows.pop();
    if (q.direction === 'backward') rows.reverse();

    // The far side of the page's own cursor: is there anything there (within the filter)?
    const opposite = q.direction === 'forward' ? q.after : q.before;
    const oppositeSide = q.direction === 'forward' ? 'before' : 'after';
    const hasOpposite = opposite
      ? await this.exists(t, [
          ...this.filterConditions(t, q.filter),
          ...this.beyond(t, opposite, oppositeSide, q.order, true),
        ])
      : false;
    return q.direction === 'forward'
      ? { rows, hasNextPage: more, hasPreviousPage: hasOpposite }
      : { rows, hasNextPage: hasOpposite, hasPreviousPage: more };
  }

  /**
   * The statement of one chain page, unexecuted (tests may EXPLAIN its `toSQL()`): the month's
   * rows with `afterSeq < chain_seq <= throughSeq` that satisfy the filter, in chain order. The
   * plain bounds on `occurred_at` prune to the month's partition, whose `chain_seq` index gives
   * the order; rows without a chain position (never written by the service) are not included.
   *
   * A page is a window of positions, not a LIMIT: positions are dense (1..n), so a window of w
   * positions holds at most w rows whatever plan PostgreSQL picks. With LIMIT and an open upper
   * bound, a partition without statistics yet (just after a bulk load) was planned as a bitmap
   * scan of everything left in the month, sorted, for every page — quadratic over a month.
   */
  chainPageQuery(q: ChainPageQuery) {
    const t = this.tablesOf(q.schema).auditEvents;
    return this.db.orm
      .select()
      .from(t)
      .where(
        and(
          gte(t.occurredAt, q.month),
          lt(t.occurredAt, addMonths(q.month, 1)),
          gt(t.chainSeq, q.afterSeq),
          lte(t.chainSeq, q.throughSeq),
          ...this.filterConditions(t, q.filter),
        ),
      )
      .orderBy(asc(t.chainSeq));
  }

  /** One window of a month's chain (see chainPageQuery). */
  async chainPage(q: ChainPageQuery): Promise<AuditEventRow[]> {
    return this.chainPageQuery(q);
  }

  /**
   * Each month's chain as it stands: its head (last position written) and its newest signed
   * checkpoint, oldest month first. Only months with a head: retention deletes a dropped month's
   * head (its checkpoints stay, append-only, and must not make an export expect its events).
   * The newest checkpoint is found through the (month, seq) key per month, not by reading them all.
   */
  async chainSnapshot(schema: string): Promise<ChainMonthSnapshot[]> {
    const rows = await this.db.query<{
      month: Date | string;
      head_seq: string | number;
      seq: string | number | null;
      hash: Uint8Array | null;
      signed_at: Date | string | null;
      key_id: string | null;
      signature: Uint8Array | null;
    }>(
      `/* export.chain_snapshot */
       select h.month, h.seq as head_seq, c.seq, c.hash, c.signed_at, c.key_id, c.signature
         from "${schema}".chain_heads h
         left join lateral (
           select seq, hash, signed_at, key_id, signature from "${schema}".chain_checkpoints c
            where c.month = h.month order by c.seq desc limit 1) c on true
        where h.seq > 0
        order by h.month`,
    );
    return rows.map((r) => ({
      month: new Date(r.month),
      headSeq: Number(r.head_seq),
      checkpoint:
        r.seq === null || !r.hash || !r.signature || r.signed_at === null || r.key_id === null
          ? null
          : {
              seq: Number(r.seq),
              hash: Buffer.from(r.hash),
              signedAt: new Date(r.signed_at),
              keyId: r.key_id,
              signature: Buffer.from(r.signature),
            },
    }));
  }

  /**
   * An event by id. Without `occurredAt`, the tenant's id table says where the id's event is
   * stored, so the read is exact (one partition) and cannot be redirected to another event under
   * the same id. An id it does not know (rows written without it, by an older version) is looked
   * for in every month, the event received first winning.
   */
  async byId(schema: string, id: string, occurredAt?: Date): Promise<AuditEventRow | null> {
    const tables = this.tablesOf(schema);
    const t = tables.auditEvents;
    let at = occurredAt;
    if (!at) {
      const [place] = await this.db.orm
        .select({ occurredAt: tables.eventIds.occurredAt })
        .from(tables.eventIds)
        .where(eq(tables.eventIds.id, id))
        .limit(1);
      at = place?.occurredAt;
    }
    const rows = await this.db.orm
      .select()
      .from(t)
      .where(and(eq(t.id, id), at ? eq(t.occurredAt, at) : undefined))
      .orderBy(asc(t.receivedAt), asc(t.occurredAt))
      .limit(1);
    return rows[0] ?? null;
  }

  private async exists(t: TenantTables['auditEvents'], conditions: SQL[]): Promise<boolean> {
    const rows = await this.db.orm
      .select({ one: sql<number>`1` })
      .from(t)
      .where(and(...conditions))
      .limit(1);
    return rows.length > 0;
  }

  /**
   * Rows strictly past `pos` on one side in the given order (`after` = later in that order),
   * or, with `inclusive`, at or past it.
   */
  private beyond(
    t: TenantTables['auditEvents'],
    pos: KeysetPosition,
    side: 'after' | 'before',
    order: AuditEventOrder,
    inclusive = false,
  ): SQL[] {
    const greater = (side === 'after') === (order === 'OCCURRED_AT_ASC');
    const op = sql.raw(greater ? (inclusive ? '>=' : '>') : inclusive ? '<=' : '<');
    const at = pos.occurredAt.toISOString();
    return [
      sql`(${t.occurredAt}, ${t.id}) ${op} (${at}::timestamptz, ${pos.id}::uuid)`,
      greater ? gte(t.occurredAt, pos.occurredAt) : lte(t.occurredAt, pos.occurredAt),
    ];
  }

  private filterConditions(t: TenantTables['auditEvents'], f: AuditEventFilter): SQL[] {
    const c: SQL[] = [];
    if (f.correlationId) c.push(eq(t.correlationId, f.correlationId));
    if (f.eventTypes?.length) c.push(inArray(t.eventType, f.eventTypes));
    if (f.category) c.push(eq(t.category, f.category));
    if (f.action) c.push(eq(t.action, f.action));
    if (f.outcome) c.push(eq(t.outcome, f.outcome));
    if (f.actorType) c.push(eq(t.actorType, f.actorType));
    if (f.actorId) c.push(eq(t.actorId, f.actorId));
    if (f.resourceType) c.push(eq(t.resourceType, f.resourceType));
    if (f.resourceId) c.push(eq(t.resourceId, f.resourceId));
    if (f.severity) c.push(eq(t.severity, f.severity));
    if (f.occurredAfter) c.push(gte(t.occurredAt, f.occurredAfter));
    if (f.occurredBefore) c.push(lt(t.occurredAt, f.occurredBefore));
    if (f.dataContains) c.push(sql`${t.data} @> ${JSON.stringify(f.dataContains)}::jsonb`);
    return c;
  }

  private tablesOf(schema: string): TenantTables {
    let t = this.tables.get(schema);
    if (!t) {
      t = tenantTables(schema);
      this.tables.set(schema, t);
    }
    return t;
  }
}
