import { CONTROL_SCHEMA, type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Database } from './client.js';
import { addMonths, monthWindows, PartitionCatalog } from './partitions.js';

/** A tenant as the administration sees it. */
export interface TenantInfo {
  tenantId: TenantId;
  schemaName: string;
  createdAt: Date;
  /** The last tenant migration applied to its schema. */
  migration: string | null;
}

export interface TenantUsage {
  /** Events stored: exact up to `COUNT_CAP`, an estimate (planner statistics) above. */
  events: number;
  eventsExact: boolean;
  partitions: number;
  /** First instant of the oldest partition's month, and the end of the newest one's. */
  from: Date | null;
  until: Date | null;
}

/** Events counted exactly per tenant before the planner's estimate is used instead. */
export const COUNT_CAP = 10_000;

/**
 * Read-only queries of tenant administration: the tenants, and what each holds. Counting all
 * rows of a large tenant would read all of it, so counts are exact up to COUNT_CAP and taken
 * from pg_class.reltuples (kept by ANALYZE and autovacuum) beyond.
 */
export class TenantDirectory {
  private readonly catalog: PartitionCatalog;

  constructor(
    private readonly db: Database,
    /** READ_WINDOW_PARTITIONS: months one counting statement may read. */
    private readonly windowPartitions = 6,
  ) {
    this.catalog = new PartitionCatalog(db);
  }

  /** Tenants in id order, after `after` (exclusive); one more than `first` tells of a next page. */
  async list(first: number, after: string | null): Promise<TenantInfo[]> {
    const rows = await this.db.query<{
      tenant_id: string;
      schema_name: string;
      created_at: Date;
      migration: string | null;
    }>(
      `/* tenants.page */ select tenant_id, schema_name, created_at, migration
       from ${CONTROL_SCHEMA}.tenants where ($1::text is null or tenant_id > $1)
       order by tenant_id limit $2`,
      [after, first + 1],
    );
    return rows.map((r) => ({
      tenantId: r.tenant_id as TenantId,
      schemaName: r.schema_name,
      createdAt: new Date(r.created_at),
      migration: r.migration,
    }));
  }

  async exists(tenant: TenantId): Promise<boolean> {
    const rows = await this.db.query(
      `/* tenants.exists */ select 1 from ${CONTROL_SCHEMA}.tenants where tenant_id = $1`,
      [tenant],
    );
    return rows.length > 0;
  }

  async get(tenant: TenantId): Promise<TenantInfo | null> {
    const [r] = await this.db.query<{
      tenant_id: string;
      schema_name: string;
      created_at: Date;
      migration: string | null;
    }>(
      `/* tenants.getInfo */ select tenant_id, schema_name, created_at, migration
       from ${CONTROL_SCHEMA}.tenants where tenant_id = $1`,
      [tenant],
    );
    return r
      ? {
          tenantId: r.tenant_id as TenantId,
          schemaName: r.schema_name,
          createdAt: new Date(r.created_at),
          migration: r.migration,
        }
      : null;
  }

  /** Event count and partition range of one tenant's table. */
  async usage(tenant: TenantId): Promise<TenantUsage> {
    const table = `"${tenantSchema(tenant)}".audit_events`;
    const parts = await this.catalog.attached(tenantSchema(tenant));
    if (parts.length === 0) {
      return { events: 0, eventsExact: true, partitions: 0, from: null, until: null };
    }
    const months = parts.map((p) => p.month).filter((m) => m !== null);
    const from = months.length > 0 ? new Date(Math.min(...months)) : null;
    const until = months.length > 0 ? addMonths(new Date(Math.max(...months)), 1) : null;
    // Counted a window of months at a time, newest first, until the cap: one statement over
    // every partition would lock each of them (and their indexes) at once.
    let exact = 0;
    for (const w of monthWindows(months, {}, this.windowPartitions, false)) {
      const params: unknown[] = [COUNT_CAP + 1 - exact];
      const where: string[] = [];
      if (w.from) where.push(`occurred_at >= $${params.push(w.from.toISOString())}::timestamptz`);
      if (w.to) where.push(`occurred_at < $${params.push(w.to.toISOString())}::timestamptz`);
      const [counted] = await this.db.query<{ n: number }>(
        `/* tenants.count */ select count(*)::int as n from (
           select 1 from ${table} ${where.length ? `where ${where.join(' and ')}` : ''} limit $1) s`,
        params,
      );
      exact += counted?.n ?? 0;
      if (exact > COUNT_CAP) break;
    }
    if (exact <= COUNT_CAP) {
      return { events: exact, eventsExact: true, partitions: parts.length, from, until };
    }
    // reltuples is -1 for a partition never analysed.
    const estimate = parts.reduce((n, p) => n + Math.max(0, p.tuples), 0);
    return {
      events: Math.max(COUNT_CAP + 1, Math.round(estimate)),
      eventsExact: false,
      partitions: parts.length,
      from,
      until,
    };
  }
}
