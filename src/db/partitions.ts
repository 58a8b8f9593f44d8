import { ValidationError, type ValidationIssue } from '../domain/errors.js';
import { CONTROL_SCHEMA } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { Database, Sql } from './client.js';

/** First instant of the UTC month containing `d`. */
export function monthStart(d: Date): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
}

export function addMonths(d: Date, n: number): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + n, 1));
}

/** `audit_events_y2026m03`: one name per UTC month, sortable. */
export function partitionName(month: Date): string {
  const m = String(month.getUTCMonth() + 1).padStart(2, '0');
  return `audit_events_y${month.getUTCFullYear()}m${m}`;
}

/** `audit_events_y2026m03` → the first instant of that month (epoch ms); null for other names. */
export function monthOfPartition(name: string): number | null {
  const m = /^audit_events_y(\d{4})m(\d{2})$/.exec(name);
  if (!m) return null;
  const month = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, 1));
  return partitionName(month) === name ? month.getTime() : null;
}

/** A span of `occurred_at`: `from` inclusive, `to` exclusive; a missing end is unbounded. */
export interface TimeWindow {
  from?: Date;
  to?: Date;
}

/**
 * Cuts `range` into windows that each overlap at most `size` of the given `months` (first
 * instants, epoch ms), in walk order (`ascending` in time, or newest first), and that together
 * cover the whole range, gaps and both open ends included: a month missing from `months` (a
 * stale list) still falls inside some window, so a walk over the windows misses no row. The
 * walk's first window is the one that holds `size` months from the walk's starting side.
 * With no month in the range, one window: the range itself.
 */
export function monthWindows(
  months: readonly number[],
  range: TimeWindow,
  size: number,
  ascending: boolean,
): TimeWindow[] {
  const lo = range.from?.getTime() ?? Number.NEGATIVE_INFINITY;
  const hi = range.to?.getTime() ?? Number.POSITIVE_INFINITY;
  if (lo >= hi) return [];
  const inRange = [...new Set(months)]
    .filter((m) => m < hi && addMonths(new Date(m), 1).getTime() > lo)
    .sort((a, b) => a - b);
  const per = Math.max(1, Math.floor(size));
  // Chunks of `per` months, counted from the side the walk starts on.
  const starts: number[] = [];
  if (ascending) {
    for (let i = per; i < inRange.length; i += per) starts.push(inRange[i]!);
  } else {
    for (let i = inRange.length - per; i > 0; i -= per) starts.unshift(inRange[i]!);
  }
  // Boundaries strictly inside (lo, hi), ascending: each is the first instant of a chunk's month.
  const cuts = starts.filter((b) => b > lo && b < hi);
  const edges = [lo, ...cuts, hi];
  const windows: TimeWindow[] = [];
  for (let i = 0; i + 1 < edges.length; i++) {
    const from = edges[i]!;
    const to = edges[i + 1]!;
    windows.push({
      ...(Number.isFinite(from) ? { from: new Date(from) } : {}),
      ...(Number.isFinite(to) ? { to: new Date(to) } : {}),
    });
  }
  return ascending ? windows : windows.reverse();
}

/** A partition attached to a tenant's `audit_events`, as the catalog lists it. */
export interface AttachedPartition {
  name: string;
  /** First instant of its month (epoch ms); null for a name the service does not give. */
  month: number | null;
  /** The planner's row estimate (pg_class.reltuples): -1 for a partition never analysed. */
  tuples: number;
}

/**
 * Every read of PostgreSQL's partition catalog (`pg_inherits`) for a tenant's `audit_events`.
 *
 * The months that have a partition attached, per tenant schema, are kept for `ttlMs`: readers
 * walk them in windows (see monthWindows, which stays correct when the list is stale), and
 * admission counts them. The partition manager of this process updates it as it creates
 * partitions; other instances' changes arrive within `ttlMs`. The other reads are never cached:
 * they run on the caller's connection or transaction when it passes one.
 */
export class PartitionCatalog {
  private readonly cache = new Map<string, { months: number[]; at: number }>();
  private readonly loading = new Map<string, Promise<number[]>>();

  constructor(
    private readonly db: Sql,
    private readonly ttlMs = 10_000,
  ) {}

  /** First instants (epoch ms) of the months with a partition, ascending. */
  async months(schema: string, opts: { fresh?: boolean } = {}): Promise<readonly number[]> {
    const hit = this.cache.get(schema);
    if (!opts.fresh && hit && Date.now() - hit.at < this.ttlMs) return hit.months;
    return this.load(schema);
  }

  /** This process attached (or found) the month's partition. */
  add(schema: string, month: number): void {
    const hit = this.cache.get(schema);
    if (!hit || hit.months.includes(month)) return;
    hit.months = [...hit.months, month].sort((a, b) => a - b);
  }

  forget(schema: string): void {
    this.cache.delete(schema);
  }

  /** The partitions attached now, in no order (none when the schema has no `audit_events`). */
  async attached(schema: string, sql: Sql = this.db): Promise<AttachedPartition[]> {
    const rows = await sql.query<{ relname: string; tuples: number }>(
      `/* partitions.list */
       select c.relname, c.reltuples::float8 as tuples
         from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = to_regclass($1)`,
      [`"${schema}".audit_events`],
    );
    return rows.map((r) => ({
      name: r.relname,
      month: monthOfPartition(r.relname),
      tuples: Number(r.tuples),
    }));
  }

  /** Whether the partition `name` is attached, and how many are, read in `sql` (a transaction). */
  async find(
    sql: Sql,
    schema: string,
    name: string,
  ): Promise<{ attached: boolean; partitions: number }> {
    const [found] = await sql.query<{ attached: boolean; partitions: number }>(
      `/* partitions.find */
       select exists (
         select 1 from pg_inherits i
         join pg_class c on c.oid = i.inhrelid
         join pg_namespace n on n.oid = c.relnamespace
         where i.inhparent = to_regclass($1) and n.nspname = $2 and c.relname = $3
       ) as attached,
       (select count(*)::int from pg_inherits where inhparent = to_regclass($1)) as partitions`,
      [`"${schema}".audit_events`, schema, name],
    );
    return { attached: found?.attached === true, partitions: found?.partitions ?? 0 };
  }

  private load(schema: string): Promise<number[]> {
    let p = this.loading.get(schema);
    if (!p) {
      const startedAt = Date.now();
      p = this.attached(schema)
        .then((parts) => {
          const months = parts
            .map((part) => part.month)
            .filter((m): m is number => m !== null)
            .sort((a, b) => a - b);
          this.cache.set(schema, { months, at: startedAt });
          return months;
        })
        .finally(() => this.loading.delete(schema));
      this.loading.set(schema, p);
    }
    return p;
  }
}

/** Ceilings on a tenant's partitions; 0 switches one off. */
export interface PartitionLimits {
  /** MAX_PARTITIONS_PER_TENANT: partitions a tenant may have (months ahead are always created). */
  maxPerTenant: number;
  /** MAX_NEW_PARTITIONS_PER_CALL: months without a partition one write may bring. */
  maxNewPerCall: number;
}

/** Why a month of a write gets no partition (the batch writer refuses its rows with it). */
export type MonthRefusal = 'dropped' | 'limit';

/**
 * Keeps one partition of `audit_events` per UTC month. A partition is created as a plain table
 * and then ATTACHed — which needs only SHARE UPDATE EXCLUSIVE on the parent, so writers keep
 * going — in a short transaction of its own under an advisory lock and a lock_timeout, never
 * inside a batch's transaction (two writers upgrading locks there would deadlock).
 *
 * Every partition costs catalog rows, and a statement that cannot prune takes a lock on each
 * (and on each of its indexes) from PostgreSQL's lock table, which every database of the server
 * shares: so a tenant has at most `maxPerTenant` partitions. `admit` refuses a write that would
 * need more (or more new months at once than `maxNewPerCall`) before anything is accepted, and
 * the creation itself counts again under the lock, so no race between instances gets past it.
 */
export class PartitionManager {
  /** `schema|epochMs` of months known to have a partition. */
  private readonly known = new Set<string>();
  readonly catalog: PartitionCatalog;
  private readonly lockTimeoutMs: number;
  private readonly limits: PartitionLimits;

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    opts: { lockTimeoutMs?: number; limits?: Partial<PartitionLimits>; catalogTtlMs?: number } = {},
  ) {
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 5_000;
    this.limits = {
      maxPerTenant: opts.limits?.maxPerTenant ?? 0,
      maxNewPerCall: opts.limits?.maxNewPerCall ?? 0,
    };
    this.catalog = new PartitionCatalog(db, opts.catalogTtlMs);
  }

  /**
   * Admission of one write: throws ValidationError, naming the first event of each month
   * concerned, when the months of `dates` that have no partition yet are more than
   * `maxNewPerCall`, or would take the tenant past `maxPerTenant`. Answers from the catalog
   * list (cached); a refusal is confirmed against a fresh read first, so a stale list never
   * refuses a write that fits.
   */
  async admit(schema: string, dates: readonly Date[]): Promise<void> {
    const { maxPerTenant, maxNewPerCall } = this.limits;
    if (maxPerTenant <= 0 && maxNewPerCall <= 0) return;
    const firstOf = new Map<number, number>();
    dates.forEach((d, i) => {
      const m = monthStart(d).getTime();
      if (!firstOf.has(m) && !this.known.has(`${schema}|${m}`)) firstOf.set(m, i);
    });
    if (firstOf.size === 0) return;
    const verdict = async (fresh: boolean) => {
      const existing = await this.catalog.months(schema, { fresh });
      const have = new Set(existing);
      const fresher = [...firstOf.entries()].filter(([m]) => !have.has(m));
      const overCall = maxNewPerCall > 0 && fresher.length > maxNewPerCall;
      const overTenant = maxPerTenant > 0 && existing.length + fresher.length > maxPerTenant;
      return { fresher, existing: existing.length, overCall, overTenant };
    };
    let v = await verdict(false);
    if (v.overCall || v.overTenant) v = await verdict(true);
    if (!v.overCall && !v.overTenant) return;
    const why = v.overCall
      ? `this call has events in ${v.fresher.length} months without a partition; at most ` +
        `${maxNewPerCall} new months per call (MAX_NEW_PARTITIONS_PER_CALL)`
      : `the tenant has ${v.existing} monthly partitions and this call would need ` +
        `${v.fresher.length} more; at most ${maxPerTenant} (MAX_PARTITIONS_PER_TENANT)`;
    const issues: ValidationIssue[] = v.fresher
      .sort((a, b) => a[0] - b[0])
      .map(([m, index]) => ({
        index,
        field: 'occurredAt',
        message: `month ${new Date(m).toISOString().slice(0, 7)} has no partition: ${why}`,
      }));
    this.log.warn(
      { schema, newMonths: v.fresher.length, partitions: v.existing, ...this.limits },
      'write refused: it would create too many partitions',
    );
    throw new ValidationError(issues);
  }

  /**
   * Makes sure every month touched by `dates` has a partition. Cheap when all are known. Returns
   * the months (epoch ms) that get none, and why: retention has dropped it (it is never created
   * again — an event of such a month, accepted before the drop or replayed from the dead-letter
   * queue, is refused, so a month's chain cannot restart behind its recorded drop), or the
   * tenant is at MAX_PARTITIONS_PER_TENANT.
   */
  async ensureFor(
    schema: string,
    dates: Iterable<Date>,
    opts: { ahead?: boolean } = {},
  ): Promise<Map<number, MonthRefusal>> {
    const months = new Map<number, Date>();
    for (const d of dates) {
      const m = monthStart(d);
      if (!this.known.has(`${schema}|${m.getTime()}`)) months.set(m.getTime(), m);
    }
    const refused = new Map<number, MonthRefusal>();
    for (const m of [...months.values()].sort((a, b) => a.getTime() - b.getTime())) {
      const outcome = await this.ensureMonth(schema, m, opts.ahead === true);
      if (outcome !== true) refused.set(m.getTime(), outcome);
    }
    return refused;
  }

  /**
   * The current month and `ahead` months after it. They are created whatever the ceiling (their
   * number is bounded by PARTITIONS_AHEAD): a tenant at the ceiling keeps writing in the present.
   */
  async ensureAhead(schema: string, ahead: number, now = new Date()): Promise<void> {
    const first = monthStart(now);
    const dates = Array.from({ length: ahead + 1 }, (_, i) => addMonths(first, i));
    await this.ensureFor(schema, dates, { ahead: true });
  }

  /** Forgets what it knows of a schema (after "no partition found": someone dropped one). */
  forget(schema: string): void {
    for (const key of this.known) if (key.startsWith(`${schema}|`)) this.known.delete(key);
    this.catalog.forget(schema);
  }

  /** Creates the month's partition unless it exists; otherwise says why it will not. */
  private async ensureMonth(
    schema: string,
    month: Date,
    ahead: boolean,
  ): Promise<true | MonthRefusal> {
    const name = partitionName(month);
    const from = month.toISOString();
    const to = addMonths(month, 1).toISOString();
    const created = await this.db.transaction(
      async (tx): Promise<boolean | MonthRefusal | { limit: number }> => {
        await tx.query(`select set_config('lock_timeout', $1, true)`, [`${this.lockTimeoutMs}ms`]);
        await tx.query(`/* partitions.lock */ select pg_advisory_xact_lock(hashtext($1))`, [
          `auditgraph:partitions:${schema}`,
        ]);
        const found = await this.catalog.find(tx, schema, name);
        if (found.attached) return false;
        const [drop] = await tx.query<{ one: number }>(
          `/* partitions.dropped */
           select 1 as one from ${CONTROL_SCHEMA}.retention_drops
            where tenant_id = $1 and month = $2 limit 1`,
          [schema.slice(2), from],
        );
        if (drop) return 'dropped';
        // Counted under the lock: every instance's creations of this tenant queue on it.
        const max = this.limits.maxPerTenant;
        if (!ahead && max > 0 && found.partitions >= max) return { limit: max };
        await tx.query(
          `create table if not exists "${schema}"."${name}"
             (like "${schema}".audit_events including defaults including constraints)`,
        );
        // Bounds are literals built from Date values above, not from input text.
        await tx.query(
          `alter table "${schema}".audit_events attach partition "${schema}"."${name}"
             for values from ('${from}') to ('${to}')`,
        );
        // Row triggers (no UPDATE, no DELETE) are cloned by ATTACH; a statement trigger is not,
        // and a TRUNCATE of this partition alone would fire only the partition's own.
        await tx.query(
          `create trigger audit_events_no_truncate before truncate on "${schema}"."${name}"
             for each statement execute function "${schema}".audit_truncate_refused()`,
        );
        return true;
      },
    );
    if (created === 'dropped') return 'dropped';
    if (typeof created === 'object') {
      this.log.error(
        { schema, partition: name, maxPartitionsPerTenant: created.limit },
        'partition not created: the tenant is at MAX_PARTITIONS_PER_TENANT',
      );
      return 'limit';
    }
    this.known.add(`${schema}|${month.getTime()}`);
    this.catalog.add(schema, month.getTime());
    if (created) this.log.info({ schema, partition: name, from, to }, 'partition created');
    return true;
  }
}
