import { and, asc, gt, gte, isNull, lt, lte, sql } from 'drizzle-orm';
import type { Database } from '../db/client.js';
import { addMonths, monthStart } from '../db/partitions.js';
import { tenantTables } from '../db/tenant-tables.js';
import {
  type ChainBreak,
  type ChainedRow,
  type ChainHasher,
  type CheckpointClaim,
  MonthChainWalker,
} from '../domain/chain.js';
import type { Checkpoint } from '../domain/checkpoint.js';
import { CONTROL_SCHEMA, type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { CheckpointService } from './checkpoints.js';

/**
 * Chain positions read per statement while walking a month: a window of positions, not a LIMIT,
 * so each statement is bounded whatever plan PostgreSQL picks (without statistics, right after a
 * bulk load, an open-ended `chain_seq > n ORDER BY … LIMIT` re-sorted the rest of the month on
 * every page), and memory stays flat whatever the month's size.
 */
const WINDOW = 1_000;
/** A long verification says how far it is every this many events. */
const PROGRESS_LOG_EVERY = 100_000;

export interface MonthVerification {
  month: Date;
  /** OK, BROKEN, or DROPPED (removed whole by retention; see retention_drops). */
  status: 'OK' | 'BROKEN' | 'DROPPED';
  /** Events whose link held. */
  eventsVerified: number;
  lastSeq: number;
  lastHash: string | null;
  /** Signed checkpoints the chain was held against. */
  checkpoints: number;
}

export interface ChainVerification {
  ok: boolean;
  from: Date;
  to: Date;
  eventsVerified: number;
  months: MonthVerification[];
  /** The first broken link, in month order; null when every month holds. */
  firstBreak: ChainBreak | null;
}

export interface VerifyProgress {
  month: Date;
  monthIndex: number;
  months: number;
  eventsVerified: number;
}

/**
 * Re-computes a tenant's chains over the database: every month that overlaps [from, to), whole,
 * streamed in chain order a page at a time, held against the month's signed checkpoints (their
 * signatures checked with this deployment's key). Reports the first broken link.
 */
export class ChainAuditor {
  /** One verification per tenant at a time on this instance: callers queue behind it. */
  private readonly running = new Map<string, Promise<unknown>>();
  /** Told of every finished verification (metrics). */
  onVerified: ((tenant: TenantId, result: ChainVerification) => void) | undefined;

  constructor(
    private readonly db: Database,
    private readonly hasher: ChainHasher,
    private readonly checkpoints: CheckpointService,
    private readonly log: Logger,
  ) {}

  verify(
    tenant: TenantId,
    from: Date,
    to: Date,
    onProgress?: (p: VerifyProgress) => void,
  ): Promise<ChainVerification> {
    const before = this.running.get(tenant) ?? Promise.resolve();
    const run = before
      .catch(() => undefined)
      .then(() => this.verifyNow(tenant, from, to, onProgress));
    this.running.set(tenant, run);
    void run
      .finally(() => {
        if (this.running.get(tenant) === run) this.running.delete(tenant);
      })
      .catch(() => undefined);
    return run;
  }

  private async verifyNow(
    tenant: TenantId,
    from: Date,
    to: Date,
    onProgress?: (p: VerifyProgress) => void,
  ): Promise<ChainVerification> {
    const started = Date.now();
    let nextLog = PROGRESS_LOG_EVERY;
    const report = (p: VerifyProgress) => {
      onProgress?.(p);
      if (p.eventsVerified >= nextLog) {
        nextLog += PROGRESS_LOG_EVERY;
        this.log.info(
          {
            tenant,
            month: p.month.toISOString(),
            monthIndex: p.monthIndex + 1,
            months: p.months,
            eventsVerified: p.eventsVerified,
            elapsedMs: Date.now() - started,
          },
          'verifying audit chain',
        );
      }
    };
    const schema = tenantSchema(tenant);
    const t = tenantTables(schema);
    const first = monthStart(from);
    const heads = await this.db.query<{ month: Date }>(
      `/* verify.months */
       select month from "${schema}".chain_heads where month >= $1 and month < $2
       union select month from "${schema}".chain_checkpoints where month >= $1 and month < $2`,
      [first.toISOString(), to.toISOString()],
    );
    const dropped = await this.db.query<{ month: Date }>(
      `/* verify.dropped */
       select month from ${CONTROL_SCHEMA}.retention_drops
        where tenant_id = $1 and month >= $2 and month < $3`,
      [tenant, first.toISOString(), to.toISOString()],
    );
    const droppedMonths = new Set(dropped.map((d) => new Date(d.month).getTime()));
    const months = [
      ...new Set([...heads.map((h) => new Date(h.month).getTime()), ...droppedMonths]),
    ]
      .sort((a, b) => a - b)
      .map((m) => new Date(m));

    const result: ChainVerification = {
      ok: true,
      from,
      to,
      eventsVerified: 0,
      months: [],
      firstBreak: null,
    };
    for (const [monthIndex, month] of months.entries()) {
      if (droppedMonths.has(month.getTime())) {
        result.months.push({
          month,
          status: 'DROPPED',
          eventsVerified: 0,
          lastSeq: 0,
          lastHash: null,
          checkpoints: 0,
        });
        continue;
      }
      const stored = await this.checkpoints.list(tenant, month);
      const { claims, bad } = this.trusted(stored);
      const walker = new MonthChainWalker(this.hasher, tenant, month, claims);
      const next = addMonths(month, 1);
      const inMonth = and(gte(t.auditEvents.occurredAt, month), lt(t.auditEvents.occurredAt, next));
      // The highest position stored, not the head: rows past a rewound head are still read.
      const [top] = await this.db.orm
        .select({ seq: sql<string | null>`max(${t.auditEvents.chainSeq})` })
        .from(t.auditEvents)
        .where(inMonth);
      const highest = top?.seq === null || top?.seq === undefined ? 0 : Number(top.seq);
      for (let after = 0; after < highest && !walker.broken; after += WINDOW) {
        const rows = await this.db.orm
          .select()
          .from(t.auditEvents)
          .where(
            and(
              inMonth,
              gt(t.auditEvents.chainSeq, after),
              lte(t.auditEvents.chainSeq, after + WINDOW),
            ),
          )
          .orderBy(asc(t.auditEvents.chainSeq));
        for (const r of rows) if (!walker.push(chainedRow(r))) break;
        report({
          month,
          monthIndex,
          months: months.length,
          eventsVerified: result.eventsVerified + walker.count,
        });
      }
      let broken = bad ?? walker.finish();
      if (!broken) broken = await this.unchained(schema, month, next);
      result.months.push({
        month,
        status: broken ? 'BROKEN' : 'OK',
        eventsVerified: walker.count,
        lastSeq: walker.lastSeq,
        lastHash: walker.lastSeq > 0 ? walker.lastHash.toString('hex') : null,
        checkpoints: claims.length,
      });
      result.eventsVerified += walker.count;
      if (broken && !result.firstBreak) {
        result.firstBreak = broken;
        result.ok = false;
        this.log.warn({ tenant, break: broken }, 'audit chain verification found a broken link');
      }
    }
    this.onVerified?.(tenant, result);
    this.log.info(
      {
        tenant,
        ok: result.ok,
        months: result.months.length,
        eventsVerified: result.eventsVerified,
        elapsedMs: Date.now() - started,
      },
      'audit chain verified',
    );
    return result;
  }

  /** Checkpoints whose signature holds become claims; one that does not is itself a break. */
  private trusted(stored: Checkpoint[]): { claims: CheckpointClaim[]; bad: ChainBreak | null } {
    const claims: CheckpointClaim[] = [];
    for (const c of stored) {
      if (!this.checkpoints.isValid(c)) {
        return {
          claims,
          bad: {
            month: c.month,
            seq: c.seq,
            eventId: null,
            occurredAt: null,
            kind: 'BAD_SIGNATURE',
            expectedHash: null,
            actualHash: c.hash.toString('hex'),
            message: `the checkpoint at position ${c.seq} is not signed by this deployment's key (${this.checkpoints.key.keyId})`,
          },
        };
      }
      claims.push(c);
    }
    return { claims, bad: null };
  }

  /** An event in the month without a chain position was slipped in around the writer. */
  private async unchained(schema: string, month: Date, next: Date): Promise<ChainBreak | null> {
    const t = tenantTables(schema).auditEvents;
    const [row] = await this.db.orm
      .select({ id: t.id, occurredAt: t.occurredAt, n: sql<number>`count(*) over ()` })
      .from(t)
      .where(and(gte(t.occurredAt, month), lt(t.occurredAt, next), isNull(t.chainSeq)))
      .limit(1);
    if (!row) return null;
    return {
      month,
      seq: 0,
      eventId: row.id,
      occurredAt: row.occurredAt,
      kind: 'UNCHAINED',
      expectedHash: null,
      actualHash: null,
      message: `${row.n} event(s) in this month have no place in the chain: they were not written by the service`,
    };
  }
}

/** A row as read by drizzle (bytea may arrive as Uint8Array from PGlite) as the walker sees it. */
export function chainedRow(r: {
  chainSeq: number | null;
  prevHash: Uint8Array | null;
  hash: Uint8Array | null;
  [k: string]: unknown;
}): ChainedRow {
  return {
    ...(r as unknown as ChainedRow),
    chainSeq: r.chainSeq === null ? null : Number(r.chainSeq),
    prevHash: r.prevHash ? Buffer.from(r.prevHash) : null,
    hash: r.hash ? Buffer.from(r.hash) : null,
  };
}
