import type { Database, Sql } from '../db/client.js';
import { UnknownTenantError, ValidationError } from '../domain/errors.js';
import { CONTROL_SCHEMA, type TenantId } from '../domain/tenant.js';
import { asError, type Logger } from '../logger.js';

/** The smallest retention a tenant may have, and the highest MAX_RETENTION_DAYS, in days. */
export const RETENTION_MIN_DAYS = 1;
export const RETENTION_MAX_DAYS = 36_500;

/** A tenant's retention: its own (`auditgraph.tenants.retention_days`) or the default. */
export interface RetentionSetting {
  /** What applies. */
  days: number;
  /** RETENTION_DAYS. */
  defaultDays: number;
  /** MAX_RETENTION_DAYS: the most a tenant may set, and the oldest an accepted event may be. */
  maxDays: number;
  /** The tenant's own setting; null means the default applies. */
  tenantDays: number | null;
  source: 'TENANT' | 'DEFAULT';
}

/** One month removed by retention, as recorded in `auditgraph.retention_drops`. */
export interface RetentionDrop {
  id: string;
  month: Date;
  partitionName: string;
  rowCount: number;
  chainSeq: number;
  chainHash: string | null;
  checkpoint: unknown;
  retentionDays: number;
  droppedAt: Date;
  instanceId: string;
}

interface Cached {
  days: number;
  expiresAt: number;
}

/**
 * Per-tenant retention. The write path asks `days()` on every createAuditEvents call, so it is
 * cached per tenant (CACHE_MS, 30 s): a change made on another instance reaches this one within
 * that time. The cache never makes a write wait on a slow or unreachable database longer than
 * a short look-up timeout: a stale value is served while it is refreshed, and with no value at
 * all the default applies (logged) — accepting writes while the database is down is promised
 * elsewhere, and the default is what the tenant had before it set its own.
 */
export class TenantRetention {
  private readonly cache = new Map<TenantId, Cached>();
  private readonly loading = new Map<TenantId, Promise<number>>();
  /** Bumped by set(): a look-up that started before a change must not cache the old value. */
  private readonly versions = new Map<TenantId, number>();

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    private readonly opts: {
      defaultDays: number;
      /** MAX_RETENTION_DAYS (default RETENTION_MAX_DAYS). */
      maxDays?: number;
      cacheMs?: number;
      lookupTimeoutMs?: number;
    },
  ) {}

  private get maxDays(): number {
    return this.opts.maxDays ?? RETENTION_MAX_DAYS;
  }

  private get cacheMs(): number {
    return this.opts.cacheMs ?? 30_000;
  }

  /** The setting that `tenantDays` (a tenant row's retention_days) amounts to. */
  settingOf(tenantDays: number | null): RetentionSetting {
    return {
      days: tenantDays ?? this.opts.defaultDays,
      defaultDays: this.opts.defaultDays,
      maxDays: this.maxDays,
      tenantDays,
      source: tenantDays === null ? 'DEFAULT' : 'TENANT',
    };
  }

  /**
   * How old an event the tenant may write now, in days, from the cache (the write path's
   * question): its retention, but never more than MAX_RETENTION_DAYS — a setting made before
   * that ceiling existed keeps its months (retention drops by the setting itself), yet cannot
   * make writes spread over more months than the ceiling allows.
   */
  async days(tenant: TenantId): Promise<number> {
    return Math.min(await this.retentionDays(tenant), this.maxDays);
  }

  private async retentionDays(tenant: TenantId): Promise<number> {
    const hit = this.cache.get(tenant);
    if (hit && hit.expiresAt > Date.now()) return hit.days;
    const loading = this.load(tenant);
    if (hit) {
      // Stale but known: answer now, refresh behind the caller's back.
      loading.catch(() => {});
      return hit.days;
    }
    const timeoutMs = this.opts.lookupTimeoutMs ?? 1_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    try {
      const r = await Promise.race([loading, timedOut]);
      if (r !== 'timeout') return r;
      this.log.warn(
        { tenant, timeoutMs, defaultDays: this.opts.defaultDays },
        'tenant retention look-up is slow; the default retention applies to this call',
      );
    } catch (err) {
      this.log.warn(
        { tenant, err: asError(err), defaultDays: this.opts.defaultDays },
        'tenant retention could not be read; the default retention applies for now',
      );
      // Do not ask a database that is down on every call: retry after a few seconds.
      this.cache.set(tenant, { days: this.opts.defaultDays, expiresAt: Date.now() + 5_000 });
    } finally {
      clearTimeout(timer);
    }
    return this.opts.defaultDays;
  }

  /** The tenant's setting read now (not cached); UnknownTenantError when it does not exist. */
  async get(tenant: TenantId, sql: Sql = this.db): Promise<RetentionSetting> {
    const [row] = await sql.query<{ retention_days: number | null }>(
      `/* retention.get */ select retention_days from ${CONTROL_SCHEMA}.tenants where tenant_id = $1`,
      [tenant],
    );
    if (!row) throw new UnknownTenantError(tenant);
    const setting = this.settingOf(row.retention_days);
    this.remember(tenant, setting.days);
    return setting;
  }

  /**
   * Sets the tenant's retention (1..MAX_RETENTION_DAYS days), or returns it to the default (`null`).
   * Returns the setting before and after. Applies on this instance at once; other instances
   * pick it up within the cache time.
   */
  async set(
    tenant: TenantId,
    days: number | null,
  ): Promise<{ before: RetentionSetting; after: RetentionSetting }> {
    if (
      days !== null &&
      (!Number.isInteger(days) || days < RETENTION_MIN_DAYS || days > this.maxDays)
    ) {
      throw ValidationError.single(
        'input.days',
        `must be a whole number of days from ${RETENTION_MIN_DAYS} to ${this.maxDays} ` +
          '(MAX_RETENTION_DAYS), or null for the default',
      );
    }
    const result = await this.db.transaction(async (tx) => {
      const [old] = await tx.query<{ retention_days: number | null }>(
        `/* retention.lock */ select retention_days from ${CONTROL_SCHEMA}.tenants
          where tenant_id = $1 for update`,
        [tenant],
      );
      if (!old) throw new UnknownTenantError(tenant);
      await tx.query(
        `/* retention.set */ update ${CONTROL_SCHEMA}.tenants set retention_days = $2
          where tenant_id = $1`,
        [tenant, days],
      );
      return { before: this.settingOf(old.retention_days), after: this.settingOf(days) };
    });
    this.versions.set(tenant, (this.versions.get(tenant) ?? 0) + 1);
    this.remember(tenant, result.after.days);
    this.log.info(
      { tenant, before: result.before, after: result.after },
      'tenant retention changed',
    );
    return result;
  }

  /** Months of the tenant removed by retention, newest first (at most `limit`). */
  async drops(tenant: TenantId, limit = 120): Promise<RetentionDrop[]> {
    const rows = await this.db.query<{
      id: string;
      month: Date | string;
      partition_name: string;
      row_count: string | number;
      chain_seq: string | number;
      chain_hash: string | null;
      checkpoint: unknown;
      retention_days: number;
      dropped_at: Date | string;
      instance_id: string;
    }>(
      `/* retention.drops */
       select id, month, partition_name, row_count, chain_seq, chain_hash, checkpoint,
              retention_days, dropped_at, instance_id
         from ${CONTROL_SCHEMA}.retention_drops
        where tenant_id = $1 order by month desc, dropped_at desc limit $2`,
      [tenant, limit],
    );
    return rows.map((r) => ({
      id: r.id,
      month: new Date(r.month),
      partitionName: r.partition_name,
      rowCount: Number(r.row_count),
      chainSeq: Number(r.chain_seq),
      chainHash: r.chain_hash,
      checkpoint: r.checkpoint,
      retentionDays: r.retention_days,
      droppedAt: new Date(r.dropped_at),
      instanceId: r.instance_id,
    }));
  }

  private load(tenant: TenantId): Promise<number> {
    let p = this.loading.get(tenant);
    if (!p) {
      const version = this.versions.get(tenant) ?? 0;
      p = this.db
        .query<{ retention_days: number | null }>(
          `/* retention.lookup */ select retention_days from ${CONTROL_SCHEMA}.tenants
            where tenant_id = $1`,
          [tenant],
        )
        .then(([row]) => {
          // A tenant not yet provisioned gets the default, which is what it starts with.
          const days = row?.retention_days ?? this.opts.defaultDays;
          if ((this.versions.get(tenant) ?? 0) === version) this.remember(tenant, days);
          return days;
        })
        .catch((err: unknown) => {
          const stale = this.cache.get(tenant);
          if (stale) {
            // Keep serving what is known, and do not ask a failing database on every call.
            stale.expiresAt = Date.now() + 5_000;
            this.log.warn(
              { tenant, err: asError(err), days: stale.days },
              'tenant retention could not be refreshed; the last known value still applies',
            );
          }
          throw err;
        })
        .finally(() => this.loading.delete(tenant));
      this.loading.set(tenant, p);
    }
    return p;
  }

  private remember(tenant: TenantId, days: number): void {
    this.cache.set(tenant, { days, expiresAt: Date.now() + this.cacheMs });
  }
}
