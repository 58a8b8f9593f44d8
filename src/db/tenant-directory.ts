import { CONTROL_SCHEMA, type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Database } from './client.js';
import { monthOfPartition, monthWindows } from './partitions.js';

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

const PARTITION = /^audit_events_y(\d{4})m(\d{2})$/;

/**
 * Read-only queries of tenant administration: the tenants, and what each holds. Counting all
 * rows of a large tenant would read all of it, so counts are exact up to COUNT_CAP and taken
 * from pg_class.reltuples (kept by ANALYZE and autovacuum) beyond.
 */
export class TenantDirectory {
  constructor(
    private readonly db: Database,
    /** READ_WINDOW_PARTITIONS: months one counting statement may read. */
    private readonly windowPartitions = 6,
  ) {}

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
    const parts = await this.db.query<{ name: string; tuples: number }>(
      `/* tenants.partitions */ select c.relname as name, c.reltuples::float8 as tuples
       from pg_inherits i join pg_class c on c.oid = i.inhrelid
       where i.inhparent = to_regclass($1)`,
      [table],
    );
    if (parts.length === 0) {
      return { events: 0, eventsExact: true, partitions: 0, from: null, until: null };
    }
    let from: Date | null = null;
    let until: Date | null = null;
    for (const p of parts) {
      const m = PARTITION.exec(p.name);
      if (!m) continue;
      const start = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, 1));
      const end = new Date(Date.UTC(Number(m[1]), Number(m[2]), 1));
      if (!from || start < from) from = start;
      if (!until || end > until) until = end;
    }
    // Counted a window of months at a time, newest first, until the cap: one statement over
    // every partition would lock each of them (and their indexes) at once.
    const months = parts.map((p) => monthOfPartition(p.name)).filter((m) => m !== null);
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
    const estimate = parts.reduce((n, p) => n + Math.max(0, Number(p.tuples)), 0);
    return {
      events: Math.max(COUNT_CAP + 1, Math.round(estimate)),
      eventsExact: false,
      partitions: parts.length,
      from,
      until,
    };
  }
}
