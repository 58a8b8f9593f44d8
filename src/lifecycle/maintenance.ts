import type { Connection, Database, Sql } from '../db/client.js';
import { addMonths, type PartitionManager, partitionName } from '../db/partitions.js';
import { type CheckpointJson, checkpointToJson } from '../domain/checkpoint.js';
import { CONTROL_SCHEMA, type TenantId, tenantIdProblem, tenantSchema } from '../domain/tenant.js';
import type { ChainAuditor } from '../integrity/chain-auditor.js';
import type { CheckpointService } from '../integrity/checkpoints.js';
import type { Logger } from '../logger.js';
import { holdsLockKey, type LegalHold, type LegalHoldStore } from './legal-holds.js';
import type { TenantRetention } from './tenant-retention.js';

const DAY_MS = 86_400_000;

/** How long what a batch settled of a journal entry is kept (journal_settlements). */
const JOURNAL_SETTLEMENT_KEEP_MS = 7 * DAY_MS;

/** The session-level advisory lock that makes one instance at a time the maintenance leader. */
export const MAINTENANCE_LOCK = 'auditgraph:maintenance';

/** The first periodic run comes after at most this long, so frequent restarts still run it. */
const FIRST_RUN_MAX_DELAY_MS = 10 * 60_000;

/** A month removed by a run (as recorded in retention_drops). */
export interface DroppedMonth {
  month: Date;
  partition: string;
  /** Rows the partition held when it was dropped (counted in the drop's transaction). */
  rowCount: number;
  /** The month's chain head at the cut (0 and null for a month without events). */
  chainSeq: number;
  chainHash: string | null;
  /** The signed checkpoint of that head, as recorded in retention_drops. */
  checkpoint: CheckpointJson | null;
}

/** A month past retention that a run kept because of legal holds. */
export interface HeldMonth {
  month: Date;
  partition: string;
  /** The active legal holds that cover an event of the month. */
  holdIds: string[];
}

/** Something a run could not do (logged at error as well). */
export interface MaintenanceProblem {
  /** The month it concerns; null for the tenant as a whole. */
  month: Date | null;
  message: string;
}

/** What a run did for one tenant. */
export interface TenantMaintenanceReport {
  tenant: TenantId;
  retentionDays: number;
  retentionSource: 'TENANT' | 'DEFAULT';
  /** Months whose whole range ends at or before this instant are past retention. */
  cutoff: Date;
  /** Partitions created ahead by this run. */
  partitionsCreated: string[];
  dropped: DroppedMonth[];
  /** Months past retention kept because a legal hold covers one of their events. */
  held: HeldMonth[];
  /** What failed; the month is tried again on the next run. */
  problems: MaintenanceProblem[];
}

/** What a run did: whether it led, and per tenant. */
export interface MaintenanceReport {
  /** False when another instance holds the maintenance lock: this run did nothing. */
  leader: boolean;
  instanceId: string;
  /** The instant retention was measured from. */
  now: Date;
  startedAt: Date;
  finishedAt: Date;
  /** Why nothing was done, when nothing was. */
  note: string | null;
  tenants: TenantMaintenanceReport[];
}

/** What the job works with (app.ts wires the instance's own). */
export interface MaintenanceDeps {
  db: Database;
  /** The instance's partition manager (the write path's): told to forget dropped months. */
  partitions: PartitionManager;
  checkpoints: Pick<CheckpointService, 'checkpointTenant' | 'store'>;
  /** Re-computes a month's chain before it is dropped: a broken month is evidence, and stays. */
  chain: Pick<ChainAuditor, 'verify'>;
  holds: LegalHoldStore;
  retention: TenantRetention;
  /** Counts dropped rows as `expired` in the tenant's stats (auditStats, metrics). */
  stats: { recordExpired(tenant: TenantId, events: number): void };
  log: Logger;
  instanceId: string;
  /** MAINTENANCE_INTERVAL_MS; 0: only runs on request. */
  intervalMs: number;
  /** PARTITIONS_AHEAD. */
  partitionsAhead: number;
  /** lock_timeout of a drop's transaction (DETACH needs ACCESS EXCLUSIVE on the table). */
  lockTimeoutMs?: number;
  /** Told of every finished run (metrics). */
  onReport?: (report: MaintenanceReport) => void;
}

type DropOutcome =
  | { kind: 'dropped'; drop: DroppedMonth }
  | { kind: 'held'; holds: LegalHold[] }
  | { kind: 'gone' };

/** A month could not be dropped for a reason that a later run may not have. */
class NotDropped extends Error {}

/**
 * The maintenance job: for every tenant (or one), creates partitions ahead and removes whole
 * months past the tenant's retention — DETACH then DROP of the month's partition, never
 * row-by-row deletes (the events are immutable; a DELETE would be refused anyway). Each drop is
 * recorded in `auditgraph.retention_drops` with its row count and the signed checkpoint of the
 * month's chain at the cut. A month holding an event under an active legal hold is kept, and
 * the report and the log say which holds keep it.
 *
 * Leader-elected: a run holds a session-level advisory lock on a connection of its own for its
 * whole length; an instance that cannot take it reports `leader: false` and does nothing. On one
 * instance, runs (periodic and on request) follow each other, never overlap.
 */
export class MaintenanceJob {
  private timer: NodeJS.Timeout | undefined;
  private firstTimer: NodeJS.Timeout | undefined;
  /** The run in progress or queued last on this instance (runs never overlap here). */
  private queue: Promise<unknown> = Promise.resolve();
  private periodic: Promise<unknown> | undefined;
  private stopping = false;
  constructor(readonly deps: MaintenanceDeps) {}

  /** Starts the periodic run (every MAINTENANCE_INTERVAL_MS; nothing when it is 0). */
  start(): void {
    const { intervalMs, log } = this.deps;
    this.stopping = false;
    if (intervalMs <= 0 || this.timer) return;
    const tick = () => {
      this.periodic ??= this.runOnce()
        .catch((err: unknown) => log.error({ err }, 'maintenance run failed; will run again'))
        .finally(() => {
          this.periodic = undefined;
        });
    };
    this.firstTimer = setTimeout(tick, Math.min(intervalMs, FIRST_RUN_MAX_DELAY_MS));
    this.firstTimer.unref();
    this.timer = setInterval(tick, intervalMs);
    this.timer.unref();
  }

  /** Stops the timer; a run in progress stops after its current month and is awaited. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.firstTimer);
    clearInterval(this.timer);
    this.timer = undefined;
    this.firstTimer = undefined;
    await this.queue.catch(() => {});
  }

  /**
   * Runs maintenance now: every tenant, or only `tenant`; retention measured from `now` (default:
   * the current time). Waits for a run already in progress on this instance first.
   */
  runOnce(opts: { tenant?: TenantId; now?: Date } = {}): Promise<MaintenanceReport> {
    const run = this.queue
      .then(() => this.run(opts))
      .then((report) => {
        this.deps.onReport?.(report);
        return report;
      });
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * The active holds that keep `month` of `schema`. A subclass may override it only to show, in
   * a test, that retention would drop a held month without it (a negative control).
   */
  protected heldBy(sql: Sql, schema: string, month: Date): Promise<LegalHold[]> {
    return this.deps.holds.holdsCovering(schema, month, sql);
  }

  private async run(opts: { tenant?: TenantId; now?: Date }): Promise<MaintenanceReport> {
    const { db, log, instanceId } = this.deps;
    const startedAt = new Date();
    const now = opts.now ?? startedAt;
    const report = (leader: boolean, note: string | null, tenants: TenantMaintenanceReport[]) => ({
      leader,
      instanceId,
      now,
      startedAt,
      finishedAt: new Date(),
      note,
      tenants,
    });
    if (this.stopping) return report(false, 'the instance is stopping', []);
    return db.withConnection(async (conn) => {
      const [got] = await conn.query<{ locked: boolean }>(
        `/* maintenance.try_lock */ select pg_try_advisory_lock(hashtext($1)) as locked`,
        [MAINTENANCE_LOCK],
      );
      if (!got?.locked) {
        log.info('maintenance: another instance holds the maintenance lock; nothing done here');
        return report(false, 'another instance is running maintenance', []);
      }
      const tenants: TenantMaintenanceReport[] = [];
      try {
        for (const t of await this.tenants(conn, opts.tenant)) {
          if (this.stopping) break;
          tenants.push(await this.maintainTenant(conn, t.tenant, t.retentionDays, now));
        }
      } finally {
        // Unlocked before the connection goes back to the pool; if this fails, withConnection
        // discards the connection, and the lock ends with its session.
        await conn.query(`/* maintenance.unlock */ select pg_advisory_unlock(hashtext($1))`, [
          MAINTENANCE_LOCK,
        ]);
      }
      const r = report(true, null, tenants);
      log.info(
        {
          tenants: tenants.length,
          dropped: tenants.reduce((n, t) => n + t.dropped.length, 0),
          held: tenants.reduce((n, t) => n + t.held.length, 0),
          problems: tenants.reduce((n, t) => n + t.problems.length, 0),
          ms: r.finishedAt.getTime() - startedAt.getTime(),
        },
        'maintenance run finished',
      );
      return r;
    });
  }

  /** Tenants to maintain with their own retention setting (null: the default). */
  private async tenants(
    sql: Sql,
    only: TenantId | undefined,
  ): Promise<{ tenant: TenantId; retentionDays: number | null }[]> {
    const rows = await sql.query<{ tenant_id: string; retention_days: number | null }>(
      `/* maintenance.tenants */
       select tenant_id, retention_days from ${CONTROL_SCHEMA}.tenants
        where $1::text is null or tenant_id = $1 order by tenant_id`,
      [only ?? null],
    );
    const out: { tenant: TenantId; retentionDays: number | null }[] = [];
    for (const r of rows) {
      if (tenantIdProblem(r.tenant_id)) {
        this.deps.log.error(
          { tenant: r.tenant_id },
          'control schema holds an invalid tenant id; not maintained',
        );
        continue;
      }
      out.push({ tenant: r.tenant_id as TenantId, retentionDays: r.retention_days });
    }
    return out;
  }

  /**
   * One tenant's run: partitions ahead, then each month past retention, oldest first. Kept as
   * one function on purpose: the months go in order, and whether the next is tried depends on
   * how the last one ended (a failure stops the later ones until the next run).
   */
  private async maintainTenant(
    conn: Connection,
    tenant: TenantId,
    tenantDays: number | null,
    now: Date,
  ): Promise<TenantMaintenanceReport> {
    const { partitions, retention, checkpoints, stats, log, partitionsAhead } = this.deps;
    const schema = tenantSchema(tenant);
    const setting = retention.settingOf(tenantDays);
    const report: TenantMaintenanceReport = {
      tenant,
      retentionDays: setting.days,
      retentionSource: setting.source,
      cutoff: new Date(now.getTime() - setting.days * DAY_MS),
      partitionsCreated: [],
      dropped: [],
      held: [],
      problems: [],
    };
    const problem = (month: Date | null, thrown: unknown) => {
      const err = thrown instanceof Error ? thrown : new Error(String(thrown));
      report.problems.push({ month, message: err.message });
      log.error(
        { tenant, month: month?.toISOString() ?? null, err },
        month ? 'maintenance: month not dropped; tried again next run' : 'maintenance failed',
      );
    };

    // Partitions ahead. The partition manager's memory is dropped first so that the months are
    // checked in the catalog (a month someone removed by hand is created again).
    let months: Date[];
    try {
      const before = new Set((await this.attachedMonths(conn, schema)).map(partitionName));
      partitions.forget(schema);
      await partitions.ensureAhead(schema, partitionsAhead, now);
      months = await this.attachedMonths(conn, schema);
      report.partitionsCreated = months.map(partitionName).filter((n) => !before.has(n));
    } catch (err) {
      problem(null, err);
      return report;
    }

    await this.pruneSettlements(conn, schema, now).catch((err: unknown) => problem(null, err));

    // Retention: whole months whose end is at or before the cutoff, oldest first.
    const past = months.filter((m) => addMonths(m, 1).getTime() <= report.cutoff.getTime());
    let signed = false;
    for (const month of past) {
      if (this.stopping) break;
      const partition = partitionName(month);
      try {
        const holds = await this.heldBy(conn, schema, month);
        if (holds.length > 0) {
          this.keep(report, month, holds);
          continue;
        }
        // A month whose chain does not verify is evidence of tampering: dropping it would
        // destroy that evidence, so it stays (and says why) until someone has looked at it.
        const verified = await this.deps.chain.verify(tenant, month, new Date(month.getTime() + 1));
        const broken = verified.firstBreak;
        if (broken) {
          problem(
            month,
            new Error(
              `${partition}: its hash chain does not verify (${broken.kind} at position ` +
                `${broken.seq}${broken.eventId ? `, event ${broken.eventId}` : ''}): kept as ` +
                'evidence; investigate it, then remove the month by hand if it must go',
            ),
          );
          continue;
        }
        if (!signed) {
          // The checkpoint at the cut: every head that moved is signed before anything goes.
          await checkpoints.checkpointTenant(tenant);
          signed = true;
        }
        const outcome = await this.drop(conn, tenant, month, setting.days);
        if (outcome.kind === 'held') {
          // A hold was placed between the first look and the drop's transaction.
          this.keep(report, month, outcome.holds);
          continue;
        }
        if (outcome.kind === 'gone') {
          log.info({ tenant, partition }, 'maintenance: partition already gone; nothing to drop');
          continue;
        }
        report.dropped.push(outcome.drop);
        partitions.forget(schema);
        stats.recordExpired(tenant, outcome.drop.rowCount);
        log.info(
          {
            tenant,
            partition,
            month: month.toISOString(),
            rowCount: outcome.drop.rowCount,
            chainSeq: outcome.drop.chainSeq,
            chainHash: outcome.drop.chainHash,
            retentionDays: setting.days,
            cutoff: report.cutoff.toISOString(),
          },
          'retention dropped a month',
        );
      } catch (err) {
        problem(month, err);
        // Months go in order: a failure leaves the later ones for the next run too.
        break;
      }
    }
    return report;
  }

  /**
   * What batches settled of journal entries matters only until the journal lets go of them,
   * which it does within moments of the commit; a week covers any outage before recovery.
   */
  private async pruneSettlements(conn: Connection, schema: string, now: Date): Promise<void> {
    await conn.query(
      `/* maintenance.journal_settlements_prune */
       delete from "${schema}".journal_settlements where committed_at < $1`,
      [new Date(now.getTime() - JOURNAL_SETTLEMENT_KEEP_MS)],
    );
  }

  private keep(report: TenantMaintenanceReport, month: Date, holds: LegalHold[]): void {
    const held: HeldMonth = {
      month,
      partition: partitionName(month),
      holdIds: holds.map((h) => h.id),
    };
    report.held.push(held);
    this.deps.log.warn(
      {
        tenant: report.tenant,
        partition: held.partition,
        month: month.toISOString(),
        holds: held.holdIds,
        retentionDays: report.retentionDays,
      },
      'retention keeps a month past retention: it holds events under legal hold',
    );
  }

  /**
   * Drops one month in one transaction: re-check holds (under the tenant's holds lock), lock the
   * month's chain head (writers of the month wait on it, so the count is exact), count, DETACH,
   * record the drop with the signed checkpoint of the final head, delete the head and the month's
   * ids, DROP. Any failure — a lock_timeout included — rolls all of it back.
   *
   * Longer than most functions here on purpose: it is one transaction whose steps depend on
   * the locks taken at its start, and reading them in one place, in order, is what shows that.
   */
  private drop(
    conn: Connection,
    tenant: TenantId,
    month: Date,
    retentionDays: number,
  ): Promise<DropOutcome> {
    const schema = tenantSchema(tenant);
    // Identifiers: the tenant's schema (a checked tenant id) and a name derived from a Date.
    const name = partitionName(month);
    const monthIso = month.toISOString();
    return conn.transaction(async (tx) => {
      await tx.query(`select set_config('lock_timeout', $1, true)`, [
        `${this.deps.lockTimeoutMs ?? 5_000}ms`,
      ]);
      // The partition manager's lock (no ATTACH of the same month meanwhile), then the holds lock.
      await tx.query(`/* retention.partition_lock */ select pg_advisory_xact_lock(hashtext($1))`, [
        `auditgraph:partitions:${schema}`,
      ]);
      await tx.query(`/* retention.holds_lock */ select pg_advisory_xact_lock(hashtext($1))`, [
        holdsLockKey(schema),
      ]);
      const holds = await this.heldBy(tx, schema, month);
      if (holds.length > 0) return { kind: 'held', holds };
      const found = await this.deps.partitions.catalog.find(tx, schema, name);
      if (!found.attached) return { kind: 'gone' };
      const [head] = await tx.query<{ seq: string | number; hash: Uint8Array | null }>(
        `/* retention.head */ select seq, hash from "${schema}".chain_heads
          where month = $1 for update`,
        [monthIso],
      );
      const [counted] = await tx.query<{ n: string | number }>(
        `/* retention.count */ select count(*) as n from "${schema}"."${name}"`,
      );
      const rowCount = Number(counted?.n ?? 0);
      const chainSeq = Number(head?.seq ?? 0);
      const chainHash = head?.hash ? Buffer.from(head.hash).toString('hex') : null;
      let checkpoint: CheckpointJson | null = null;
      if (chainSeq > 0) {
        const cp = await this.deps.checkpoints.store.newest(tenant, month, tx);
        if (!cp || cp.seq !== chainSeq || cp.hash.toString('hex') !== chainHash) {
          throw new NotDropped(
            `${name}: its chain head (position ${chainSeq}) has no signed checkpoint; ` +
              'the month is kept until one is signed',
          );
        }
        checkpoint = checkpointToJson(cp);
      }
      if (rowCount !== chainSeq) {
        // The chain verified just before, so this is a row that appeared since (or an empty
        // month's head): worth a loud note, not a reason to keep the month.
        this.deps.log.warn(
          { tenant, partition: name, rowCount, chainSeq },
          'retention: the month holds a different number of rows than its chain has positions',
        );
      }
      await tx.query(
        `/* retention.detach */ alter table "${schema}".audit_events detach partition "${schema}"."${name}"`,
      );
      await tx.query(
        `/* retention.record */
         insert into ${CONTROL_SCHEMA}.retention_drops
           (tenant_id, month, partition_name, row_count, chain_seq, chain_hash, checkpoint,
            retention_days, instance_id)
         values ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)`,
        [
          tenant,
          monthIso,
          name,
          rowCount,
          chainSeq,
          chainHash,
          checkpoint ? JSON.stringify(checkpoint) : null,
          retentionDays,
          this.deps.instanceId,
        ],
      );
      await tx.query(
        `/* retention.head_delete */ delete from "${schema}".chain_heads where month = $1`,
        [monthIso],
      );
      // The month's ids go with its events (the exact key: an id the table places in another
      // month stays), so an id becomes free again once nothing stored holds it.
      await tx.query(
        `/* retention.ids_delete */
         delete from "${schema}".event_ids i using "${schema}"."${name}" p
          where i.id = p.id and i.occurred_at = p.occurred_at`,
      );
      await tx.query(`/* retention.drop */ drop table "${schema}"."${name}"`);
      return {
        kind: 'dropped',
        drop: { month, partition: name, rowCount, chainSeq, chainHash, checkpoint },
      };
    });
  }

  /**
   * First instants of the months that have a partition attached, oldest first. Only partitions
   * named exactly as the service names them count; anything else is left alone (and logged).
   */
  private async attachedMonths(sql: Sql, schema: string): Promise<Date[]> {
    const months: Date[] = [];
    for (const p of await this.deps.partitions.catalog.attached(schema, sql)) {
      if (p.month === null) {
        this.deps.log.warn(
          { schema, partition: p.name },
          'maintenance: a partition not named by the service; left alone',
        );
        continue;
      }
      months.push(new Date(p.month));
    }
    return months.sort((a, b) => a.getTime() - b.getTime());
  }
}
