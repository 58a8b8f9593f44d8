import {
  and,
  asc,
  desc,
  eq,
  getTableColumns,
  gt,
  gte,
  inArray,
  lt,
  lte,
  type SQL,
  sql,
} from 'drizzle-orm';
import { type Database, sqlState } from '../db/client.js';
import {
  addMonths,
  monthStart,
  monthWindows,
  PartitionCatalog,
  type TimeWindow,
} from '../db/partitions.js';
import { type TenantTables, tenantTables } from '../db/tenant-tables.js';
import type { AuditEventFilter, AuditEventOrder } from '../domain/filter.js';
import type { KeysetPosition } from '../domain/keyset-cursor.js';

export type AuditEventRow = TenantTables['auditEvents']['$inferSelect'];

/** SQLSTATE of a relation that does not exist. */
const UNDEFINED_TABLE = '42P01';

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

/** One side of a keyset position on the time line: `greater` = at or after `at`. */
interface Bound {
  at: Date;
  greater: boolean;
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
 *
 * No statement reads more than `windowPartitions` of a tenant's months. A statement that could
 * not prune would plan (and lock, with each of its indexes) every partition the tenant has, in
 * PostgreSQL's lock table that the whole server shares; so pages, look-ups by id and existence
 * checks walk the tenant's months in windows (see monthWindows), nearest first, one short
 * statement each, and stop as soon as they have their answer. The windows come from the
 * partition catalog (cached), and cover the whole time line whatever it says, so a month it does
 * not know yet is still read.
 */
export class AuditEventReader {
  private readonly tables = new Map<string, TenantTables>();
  private readonly catalog: Pick<PartitionCatalog, 'months'>;
  private readonly windowPartitions: number;

  constructor(
    private readonly db: Database,
    opts: {
      /** The instance's partition catalog (a private one by default). */
      catalog?: Pick<PartitionCatalog, 'months'>;
      /** READ_WINDOW_PARTITIONS. */
      windowPartitions?: number;
    } = {},
  ) {
    this.catalog = opts.catalog ?? new PartitionCatalog(db);
    this.windowPartitions = opts.windowPartitions ?? 6;
  }

  /**
   * The windows a page walks, in the order it reads them: the page's own time range (filter and
   * cursors) cut into spans of at most `windowPartitions` months, starting at the page's start.
   */
  async pageWindows(q: KeysetPageQuery): Promise<TimeWindow[]> {
    const bounds: Bound[] = [];
    if (q.after) bounds.push(this.side(q.after, 'after', q.order));
    if (q.before) bounds.push(this.side(q.before, 'before', q.order));
    return this.windows(q.schema, q.filter, bounds, this.readsAscending(q));
  }

  /**
   * One window's statement, unexecuted: `page()` runs it for each window it walks, and tests
   * EXPLAIN its `toSQL()` to prove that an index is used and partitions are pruned. Without a
   * window it is the page's statement over every month (tests compare the two).
   */
  pageQuery(q: KeysetPageQuery, window?: TimeWindow) {
    const t = this.tablesOf(q.schema).auditEvents;
    // Reading backward means reading the reversed order, then restoring it.
    const dir = this.readsAscending(q) ? asc : desc;
    return this.db.orm
      .select()
      .from(t)
      .where(and(...this.pageConditions(q, window)))
      .orderBy(dir(t.occurredAt), dir(t.id))
      .limit(q.limit + 1);
  }

  /** What a page's rows satisfy: the filter, its cursors, and (if given) one window's months. */
  private pageConditions(q: KeysetPageQuery, window?: TimeWindow): SQL[] {
    const t = this.tablesOf(q.schema).auditEvents;
    const conditions = [...this.filterConditions(t, q.filter)];
    if (q.after) conditions.push(...this.beyond(t, q.after, 'after', q.order));
    if (q.before) conditions.push(...this.beyond(t, q.before, 'before', q.order));
    if (window) conditions.push(...this.within(t, window));
    return conditions;
  }

  /**
   * One page, in one statement in the common case: the page's first window of months and, after
   * a cursor, the probe for the far side of that cursor (`hasPreviousPage` going forward,
   * `hasNextPage` going backward) in the cursor's own month, as one `UNION ALL`. That month is
   * the first of the page's window too, so the statement reads no more months than the window
   * alone; and the probe is inclusive of the cursor's own position, so it is answered there
   * unless the cursor's event is gone (retention). Only then, and for a page that needs more
   * windows than its first, are further statements sent.
   */
  async page(q: KeysetPageQuery): Promise<KeysetPage> {
    const t = this.tablesOf(q.schema).auditEvents;
    const cursor = q.direction === 'forward' ? q.after : q.before;
    const farSide = q.direction === 'forward' ? 'before' : 'after';
    const probe = cursor
      ? {
          conditions: [
            ...this.filterConditions(t, q.filter),
            ...this.beyond(t, cursor, farSide, q.order, true),
          ],
          bound: this.side(cursor, farSide, q.order),
        }
      : undefined;
    const probeWindows = probe
      ? await this.windows(q.schema, q.filter, [probe.bound], probe.bound.greater)
      : [];
    const pageWindows = await this.pageWindows(q);

    const rows: AuditEventRow[] = [];
    let hasFar = false;
    for (const [i, w] of pageWindows.entries()) {
      const limit = q.limit - rows.length;
      if (i === 0 && probe && cursor && probeWindows.length > 0) {
        const month = monthStart(cursor.occurredAt);
        const near = { from: month, to: addMonths(month, 1) };
        const found = await this.pageSelect(q, limit, w).unionAll(
          this.db.orm
            .select({ ...getTableColumns(t), probe: sql<boolean>`true`.as('probe') })
            .from(t)
            .where(and(...probe.conditions, ...this.within(t, near)))
            .limit(1),
        );
        hasFar = found.some((r) => r.probe);
        // A union's rows come in no promised order: the page's are put back in it.
        const ours = found.filter((r) => !r.probe).map(({ probe: _, ...row }) => row);
        rows.push(...ours.sort(this.comparator(q)));
      } else {
        rows.push(...(await this.pageQuery({ ...q, limit }, w)));
      }
      if (rows.length > q.limit) break;
    }
    const more = rows.length > q.limit;
    if (more) rows.length = q.limit;
    if (q.direction === 'backward') rows.reverse();

    // The far side, where the first statement did not answer it: nearest the cursor first.
    if (probe && !hasFar) {
      for (const w of probeWindows) {
        if (await this.exists(t, [...probe.conditions, ...this.within(t, w)])) {
          hasFar = true;
          break;
        }
      }
    }
    return q.direction === 'forward'
      ? { rows, hasNextPage: more, hasPreviousPage: hasFar }
      : { rows, hasNextPage: hasFar, hasPreviousPage: more };
  }

  /** pageQuery's statement with a `probe` column, false (the page side of page's union). */
  private pageSelect(q: KeysetPageQuery, limit: number, w: TimeWindow) {
    const t = this.tablesOf(q.schema).auditEvents;
    const dir = this.readsAscending(q) ? asc : desc;
    return this.db.orm
      .select({ ...getTableColumns(t), probe: sql<boolean>`false`.as('probe') })
      .from(t)
      .where(and(...this.pageConditions(q, w)))
      .orderBy(dir(t.occurredAt), dir(t.id))
      .limit(limit + 1);
  }

  /** The order the page's statements read rows in (see readsAscending). */
  private comparator(q: KeysetPageQuery) {
    const sign = this.readsAscending(q) ? 1 : -1;
    return (a: AuditEventRow, b: AuditEventRow): number => {
      const byTime = a.occurredAt.getTime() - b.occurredAt.getTime();
      if (byTime !== 0) return sign * byTime;
      return a.id === b.id ? 0 : sign * (a.id < b.id ? -1 : 1);
    };
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
   * An event by id. Without `occurredAt`, the tenant's id table says where the id's event is
   * stored, so the read is exact (one partition) and cannot be redirected to another event under
   * the same id. An id it does not know (rows written without it, by an older version) is looked
   * for month by month, oldest first, a window of months per statement.
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
    const windows = at ? [{}] : await this.windows(schema, {}, [], true);
    for (const w of windows) {
      const rows = await this.db.orm
        .select()
        .from(t)
        .where(and(eq(t.id, id), at ? eq(t.occurredAt, at) : undefined, ...this.within(t, w)))
        .orderBy(asc(t.receivedAt), asc(t.occurredAt))
        .limit(1);
      if (rows[0]) return rows[0];
    }
    return null;
  }

  /**
   * How many events of the correlation id the tenant has stored, counted up to `atMost` (the
   * count stops there, so its cost is bounded by what the caller waits for). 0 for a tenant whose
   * tables do not exist yet (auto-provisioned on its first write).
   */
  async countCorrelation(schema: string, correlationId: string, atMost: number): Promise<number> {
    const t = this.tablesOf(schema).auditEvents;
    const some = this.db.orm
      .select({ one: sql`1`.as('one') })
      .from(t)
      .where(eq(t.correlationId, correlationId))
      .limit(atMost)
      .as('some');
    try {
      const [row] = await this.db.orm.select({ n: sql<number>`count(*)::int` }).from(some);
      return row?.n ?? 0;
    } catch (err) {
      if (sqlState(err) === UNDEFINED_TABLE) return 0;
      throw err;
    }
  }

  /**
   * The head of each of the tenant's month chains: month (epoch ms of its first instant) → the
   * last position taken. Empty for a tenant whose tables do not exist yet. One short statement:
   * a tenant has one row per month it ever stored an event in.
   */
  async chainHeads(schema: string, month?: Date): Promise<Map<number, number>> {
    const t = this.tablesOf(schema).chainHeads;
    try {
      const rows = await this.db.orm
        .select({ month: t.month, seq: t.seq })
        .from(t)
        .where(month ? eq(t.month, month) : undefined);
      return new Map(rows.map((r) => [r.month.getTime(), Number(r.seq)]));
    } catch (err) {
      if (sqlState(err) === UNDEFINED_TABLE) return new Map();
      throw err;
    }
  }

  /** Whether the page's statements read `occurred_at` ascending. */
  private readsAscending(q: KeysetPageQuery): boolean {
    return (q.order === 'OCCURRED_AT_ASC') === (q.direction === 'forward');
  }

  /** The windows of `filter`'s time range narrowed by `bounds`, in walk order. */
  private async windows(
    schema: string,
    filter: AuditEventFilter,
    bounds: Bound[],
    ascending: boolean,
  ): Promise<TimeWindow[]> {
    let lo = filter.occurredAfter?.getTime() ?? Number.NEGATIVE_INFINITY;
    let hi = filter.occurredBefore?.getTime() ?? Number.POSITIVE_INFINITY;
    for (const b of bounds) {
      // The plain bounds of `beyond` are inclusive of the position's instant.
      if (b.greater) lo = Math.max(lo, b.at.getTime());
      else hi = Math.min(hi, b.at.getTime() + 1);
    }
    if (lo >= hi) return [];
    const months = await this.catalog.months(schema);
    return monthWindows(
      months,
      {
        ...(Number.isFinite(lo) ? { from: new Date(lo) } : {}),
        ...(Number.isFinite(hi) ? { to: new Date(hi) } : {}),
      },
      this.windowPartitions,
      ascending,
    );
  }

  /** Where `beyond(pos, side, order)` lies on the time line. */
  private side(pos: KeysetPosition, side: 'after' | 'before', order: AuditEventOrder): Bound {
    return { at: pos.occurredAt, greater: (side === 'after') === (order === 'OCCURRED_AT_ASC') };
  }

  private within(t: TenantTables['auditEvents'], w: TimeWindow): SQL[] {
    const c: SQL[] = [];
    if (w.from) c.push(gte(t.occurredAt, w.from));
    if (w.to) c.push(lt(t.occurredAt, w.to));
    return c;
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
