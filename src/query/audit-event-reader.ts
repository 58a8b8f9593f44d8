import { and, asc, desc, eq, gte, inArray, lt, lte, type SQL, sql } from 'drizzle-orm';
import type { Database } from '../db/client.js';
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

  /** An event by id; `occurredAt` narrows it to one partition. Earliest first if ids repeat. */
  async byId(schema: string, id: string, occurredAt?: Date): Promise<AuditEventRow | null> {
    const t = this.tablesOf(schema).auditEvents;
    const rows = await this.db.orm
      .select()
      .from(t)
      .where(and(eq(t.id, id), occurredAt ? eq(t.occurredAt, occurredAt) : undefined))
      .orderBy(asc(t.occurredAt))
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
