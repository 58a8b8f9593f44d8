import { CONTROL_SCHEMA } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { Database } from './client.js';

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

/**
 * Keeps one partition of `audit_events` per UTC month. A partition is created as a plain table
 * and then ATTACHed — which needs only SHARE UPDATE EXCLUSIVE on the parent, so writers keep
 * going — in a short transaction of its own under an advisory lock and a lock_timeout, never
 * inside a batch's transaction (two writers upgrading locks there would deadlock).
 */
export class PartitionManager {
  /** `schema|epochMs` of months known to have a partition. */
  private readonly known = new Set<string>();

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    private readonly lockTimeoutMs = 5_000,
  ) {}

  /**
   * Makes sure every month touched by `dates` has a partition. Cheap when all are known. Returns
   * the months (epoch ms) retention has dropped: they are never created again — an event of such
   * a month (accepted before the drop, or replayed from the dead-letter queue) is refused, so a
   * month's chain cannot restart behind its recorded drop.
   */
  async ensureFor(schema: string, dates: Iterable<Date>): Promise<Set<number>> {
    const months = new Map<number, Date>();
    for (const d of dates) {
      const m = monthStart(d);
      if (!this.known.has(`${schema}|${m.getTime()}`)) months.set(m.getTime(), m);
    }
    const dropped = new Set<number>();
    for (const m of [...months.values()].sort((a, b) => a.getTime() - b.getTime())) {
      if (!(await this.ensureMonth(schema, m))) dropped.add(m.getTime());
    }
    return dropped;
  }

  /** The current month and `ahead` months after it. */
  async ensureAhead(schema: string, ahead: number, now = new Date()): Promise<void> {
    const first = monthStart(now);
    const dates = Array.from({ length: ahead + 1 }, (_, i) => addMonths(first, i));
    await this.ensureFor(schema, dates);
  }

  /** Forgets what it knows of a schema (after "no partition found": someone dropped one). */
  forget(schema: string): void {
    for (const key of this.known) if (key.startsWith(`${schema}|`)) this.known.delete(key);
  }

  /** Creates the month's partition unless it exists; false when retention dropped the month. */
  private async ensureMonth(schema: string, month: Date): Promise<boolean> {
    const name = partitionName(month);
    const from = month.toISOString();
    const to = addMonths(month, 1).toISOString();
    const created = await this.db.transaction(async (tx): Promise<boolean | 'dropped'> => {
      await tx.query(`select set_config('lock_timeout', $1, true)`, [`${this.lockTimeoutMs}ms`]);
      await tx.query(`/* partitions.lock */ select pg_advisory_xact_lock(hashtext($1))`, [
        `auditgraph:partitions:${schema}`,
      ]);
      const [found] = await tx.query<{ attached: boolean }>(
        `/* partitions.find */
         select exists (
           select 1 from pg_inherits i
           join pg_class c on c.oid = i.inhrelid
           join pg_namespace n on n.oid = c.relnamespace
           where i.inhparent = $1::regclass and n.nspname = $2 and c.relname = $3
         ) as attached`,
        [`"${schema}".audit_events`, schema, name],
      );
      if (found?.attached) return false;
      const [drop] = await tx.query<{ one: number }>(
        `/* partitions.dropped */
         select 1 as one from ${CONTROL_SCHEMA}.retention_drops
          where tenant_id = $1 and month = $2 limit 1`,
        [schema.slice(2), from],
      );
      if (drop) return 'dropped';
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
    });
    if (created === 'dropped') return false;
    this.known.add(`${schema}|${month.getTime()}`);
    if (created) this.log.info({ schema, partition: name, from, to }, 'partition created');
    return true;
  }
}
