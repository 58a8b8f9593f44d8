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
import { type Checkpoint, type TrustedKey, untrustedBecause } from '../domain/checkpoint.js';
import { LimitExceededError } from '../domain/errors.js';
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
export interface VerifyOptions {
  /** Told how far the run is after each window of positions. */
  onProgress?: (p: VerifyProgress) => void;
  /**
   * The caller went away (the HTTP request closed, the subscription was completed): the run stops
   * before its next statement and rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

export class ChainAuditor {
  /** Verifications running now, per tenant, on this instance. */
  private readonly active = new Map<string, number>();

  constructor(
    private readonly db: Database,
    private readonly hasher: ChainHasher,
    private readonly checkpoints: CheckpointService,
    private readonly log: Logger,
    /** MAX_VERIFICATIONS_PER_TENANT: runs of one tenant at once on this instance. */
    readonly maxPerTenant = 1,
    /** Told of every finished verification (metrics). */
    private readonly onVerified?: (tenant: TenantId, result: ChainVerification) => void,
  ) {}

  /** Verifications running now on this instance: of one tenant, or of all. */
  running(tenant?: TenantId): number {
    if (tenant !== undefined) return this.active.get(tenant) ?? 0;
    let n = 0;
    for (const v of this.active.values()) n += v;
    return n;
  }

  /**
   * Verifies the tenant's chains over [from, to). Each run re-reads whole months, so a tenant has
   * at most `maxPerTenant` at once: beyond that this throws LimitExceededError at once (before
   * returning a promise, so a caller can refuse before it answers anything else). Refusing
   * rather than queueing keeps the work a caller can start bounded by what it can see running —
   * a queue would keep the database busy for callers long gone.
   */
  verify(
    tenant: TenantId,
    from: Date,
    to: Date,
    opts: VerifyOptions = {},
  ): Promise<ChainVerification> {
    const now = this.active.get(tenant) ?? 0;
    if (now >= this.maxPerTenant) {
      throw new LimitExceededError(
        'MAX_VERIFICATIONS_PER_TENANT',
        this.maxPerTenant,
        'chain verifications running for this tenant on this instance',
      );
    }
    this.active.set(tenant, now + 1);
    const release = () => {
      const left = (this.active.get(tenant) ?? 1) - 1;
      if (left > 0) this.active.set(tenant, left);
      else this.active.delete(tenant);
    };
    return this.verifyNow(tenant, from, to, opts).finally(release);
  }

  private async verifyNow(
    tenant: TenantId,
    from: Date,
    to: Date,
    { onProgress, signal }: VerifyOptions,
  ): Promise<ChainVerification> {
    const started = Date.now();
    // Checked before every statement: a run whose caller left ends within one window.
    const stillWanted = () => {
      if (signal?.aborted) {
        this.log.info(
          { tenant, elapsedMs: Date.now() - started },
          'audit chain verification stopped: the caller went away',
        );
        signal.throwIfAborted();
      }
    };
    stillWanted();
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
    const first = monthStart(from);
    const chained = await this.checkpoints.store.chainMonths(tenant, first, to);
    const dropped = await this.db.query<{ month: Date }>(
      `/* verify.dropped */
       select month from ${CONTROL_SCHEMA}.retention_drops
        where tenant_id = $1 and month >= $2 and month < $3`,
      [tenant, first.toISOString(), to.toISOString()],
    );
    stillWanted();
    const droppedMonths = new Set(dropped.map((d) => new Date(d.month).getTime()));
    const months = [...new Set([...chained.map((m) => m.getTime()), ...droppedMonths])]
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
      const { verified, broken } = await this.verifyMonth(tenant, month, stillWanted, (count) =>
        report({
          month,
          monthIndex,
          months: months.length,
          eventsVerified: result.eventsVerified + count,
        }),
      );
      result.months.push(verified);
      result.eventsVerified += verified.eventsVerified;
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

  /**
   * Walks one month's chain a window of positions at a time, held against its checkpoints;
   * `stillWanted` is called before each statement, `progress` after each window with the
   * month's events verified so far.
   */
  private async verifyMonth(
    tenant: TenantId,
    month: Date,
    stillWanted: () => void,
    progress: (eventsVerified: number) => void,
  ): Promise<{ verified: MonthVerification; broken: ChainBreak | null }> {
    const schema = tenantSchema(tenant);
    const t = tenantTables(schema);
    stillWanted();
    const stored = await this.checkpoints.list(tenant, month);
    const { claims, bad } = this.trusted(stored, await this.checkpoints.trustedKeys());
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
      stillWanted();
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
      progress(walker.count);
    }
    let broken = bad ?? walker.finish();
    stillWanted();
    if (!broken) broken = await this.unchained(schema, month, next);
    const verified: MonthVerification = {
      month,
      status: broken ? 'BROKEN' : 'OK',
      eventsVerified: walker.count,
      lastSeq: walker.lastSeq,
      lastHash: walker.lastSeq > 0 ? walker.lastHash.toString('hex') : null,
      checkpoints: claims.length,
    };
    return { verified, broken };
  }

  /** Checkpoints whose signature holds become claims; one that does not is itself a break. */
  private trusted(
    stored: Checkpoint[],
    keys: readonly TrustedKey[],
  ): { claims: CheckpointClaim[]; bad: ChainBreak | null } {
    const claims: CheckpointClaim[] = [];
    for (const c of stored) {
      const why = untrustedBecause(keys, c);
      if (why) {
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
            message: `the checkpoint at position ${c.seq} is not vouched for: ${why}`,
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
