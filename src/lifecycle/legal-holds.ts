import { randomUUID } from 'node:crypto';
import type { Database, Sql } from '../db/client.js';
import { addMonths } from '../db/partitions.js';
import { columnList, legalHolds } from '../db/tenant-tables.js';
import { ValidationError, type ValidationIssue } from '../domain/errors.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';

/**
 * Legal holds of a tenant: while a hold is active, retention keeps every month that holds an
 * event it covers. A hold covers either every event of one correlation id, or every event whose
 * occurredAt lies in [occurredFrom, occurredTo). Holds are released, never deleted: the table
 * keeps who placed and released each one and why.
 */

/** A row of `legal_holds`; active while `releasedAt` is null. */
export interface LegalHold {
  id: string;
  correlationId: string | null;
  /** Inclusive start of a range hold. */
  occurredFrom: Date | null;
  /** Exclusive end of a range hold. */
  occurredTo: Date | null;
  reason: string;
  placedAt: Date;
  placedBy: string;
  releasedAt: Date | null;
  releasedBy: string | null;
  releaseReason: string | null;
}

/** A placement as asked for (validated by validateHold). */
export interface PlaceHoldInput {
  correlationId?: string | null;
  occurredFrom?: Date | null;
  occurredTo?: Date | null;
  reason: string;
  /** Who places it, e.g. `api_key:<label>` or `anonymous` (AUTH_MODE=dev). */
  placedBy: string;
}

/** What a validated placement holds: exactly one scope, and a trimmed reason. */
export type HoldScope =
  | { kind: 'correlation'; correlationId: string }
  | { kind: 'range'; occurredFrom: Date; occurredTo: Date };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const REASON_MAX = 1000;
const CORRELATION_MAX = 255;
const BY_MAX = 200;

/**
 * The advisory lock that orders placing a hold against retention dropping a month of the same
 * tenant: the drop re-checks holds under it, so a hold committed before the drop is seen by it.
 */
export function holdsLockKey(schema: string): string {
  return `auditgraph:holds:${schema}`;
}

/** Why `s` cannot be stored as text (NUL, lone surrogate), or null. */
function unstorable(s: string): string | null {
  if (s.includes('\u0000')) return 'must not contain the NUL character';
  if (!s.isWellFormed()) return 'must be well-formed Unicode (no lone surrogates)';
  return null;
}

/** Checks a reason (trimmed, 1–1000 characters, storable); pushes problems under `field`. */
function checkReason(raw: string, field: string, issues: ValidationIssue[]): string {
  const reason = raw.trim();
  if (reason.length < 1 || reason.length > REASON_MAX) {
    issues.push({ index: null, field, message: `must be 1 to ${REASON_MAX} characters` });
  } else {
    const problem = unstorable(reason);
    if (problem) issues.push({ index: null, field, message: problem });
  }
  return reason;
}

/**
 * Validates a placement: a reason of 1–1000 characters and exactly one scope — a correlation id
 * (1–255 characters), or a range with occurredFrom < occurredTo. Every problem is reported at
 * once, with field paths as in the GraphQL input (`input.reason`…). Throws ValidationError.
 */
export function validateHold(input: Omit<PlaceHoldInput, 'placedBy'>): {
  scope: HoldScope;
  reason: string;
} {
  const issues: ValidationIssue[] = [];
  const reason = checkReason(input.reason, 'input.reason', issues);
  const hasCorrelation = input.correlationId !== undefined && input.correlationId !== null;
  const from = input.occurredFrom ?? null;
  const to = input.occurredTo ?? null;
  const hasRange = from !== null || to !== null;
  let scope: HoldScope | null = null;
  if (hasCorrelation && hasRange) {
    issues.push({
      index: null,
      field: 'input',
      message: 'give either correlationId or occurredFrom and occurredTo, not both',
    });
  } else if (!hasCorrelation && !hasRange) {
    issues.push({
      index: null,
      field: 'input',
      message: 'give a correlationId, or occurredFrom and occurredTo',
    });
  } else if (hasCorrelation) {
    const id = input.correlationId as string;
    if (id.length < 1 || id.length > CORRELATION_MAX) {
      issues.push({
        index: null,
        field: 'input.correlationId',
        message: `must be 1 to ${CORRELATION_MAX} characters`,
      });
    } else {
      const problem = unstorable(id);
      if (problem) issues.push({ index: null, field: 'input.correlationId', message: problem });
      else scope = { kind: 'correlation', correlationId: id };
    }
  } else {
    const bad = (d: Date | null) => d === null || Number.isNaN(d.getTime());
    if (bad(from)) {
      issues.push({
        index: null,
        field: 'input.occurredFrom',
        message: 'is required with occurredTo',
      });
    }
    if (bad(to)) {
      issues.push({
        index: null,
        field: 'input.occurredTo',
        message: 'is required with occurredFrom',
      });
    }
    if (!bad(from) && !bad(to)) {
      if (from!.getTime() >= to!.getTime()) {
        issues.push({
          index: null,
          field: 'input.occurredTo',
          message: 'must be later than occurredFrom',
        });
      } else {
        scope = { kind: 'range', occurredFrom: from!, occurredTo: to! };
      }
    }
  }
  if (issues.length > 0 || !scope) throw new ValidationError(issues);
  return { scope, reason };
}

interface HoldRow {
  id: string;
  correlation_id: string | null;
  occurred_from: Date | string | null;
  occurred_to: Date | string | null;
  reason: string;
  placed_at: Date | string;
  placed_by: string;
  released_at: Date | string | null;
  released_by: string | null;
  release_reason: string | null;
}

const date = (v: Date | string | null): Date | null => (v === null ? null : new Date(v));

function toHold(r: HoldRow): LegalHold {
  return {
    id: r.id,
    correlationId: r.correlation_id,
    occurredFrom: date(r.occurred_from),
    occurredTo: date(r.occurred_to),
    reason: r.reason,
    placedAt: new Date(r.placed_at),
    placedBy: r.placed_by,
    releasedAt: date(r.released_at),
    releasedBy: r.released_by,
    releaseReason: r.release_reason,
  };
}

const COLUMNS = columnList(legalHolds);

/**
 * The tenants' `legal_holds` tables. All SQL is schema-qualified with the schema of a checked
 * tenant id, and parameterised.
 */
export class LegalHoldStore {
  constructor(
    private readonly db: Database,
    private readonly log: Logger,
  ) {}

  /**
   * Places a hold (validated: ValidationError). Taken under the tenant's holds lock, so a
   * retention drop running at the same moment either sees this hold or finished before it.
   */
  async place(tenant: TenantId, input: PlaceHoldInput): Promise<LegalHold> {
    const { scope, reason } = validateHold(input);
    const schema = tenantSchema(tenant);
    const hold = await this.db.transaction(async (tx) => {
      await tx.query(`/* holds.lock */ select pg_advisory_xact_lock(hashtext($1))`, [
        holdsLockKey(schema),
      ]);
      const [row] = await tx.query<HoldRow>(
        `/* holds.insert */
         insert into "${schema}".legal_holds
           (id, correlation_id, occurred_from, occurred_to, reason, placed_by)
         values ($1, $2, $3, $4, $5, $6)
         returning ${COLUMNS}`,
        [
          randomUUID(),
          scope.kind === 'correlation' ? scope.correlationId : null,
          scope.kind === 'range' ? scope.occurredFrom.toISOString() : null,
          scope.kind === 'range' ? scope.occurredTo.toISOString() : null,
          reason,
          input.placedBy.slice(0, BY_MAX),
        ],
      );
      return toHold(row!);
    });
    this.log.info({ tenant, hold }, 'legal hold placed');
    return hold;
  }

  /**
   * Releases an active hold. An id that names no hold of the tenant, or a hold already
   * released, is a ValidationError (a release is never silently a no-op).
   */
  async release(
    tenant: TenantId,
    id: string,
    reasonRaw: string,
    releasedBy: string,
  ): Promise<LegalHold> {
    const issues: ValidationIssue[] = [];
    const reason = checkReason(reasonRaw, 'input.reason', issues);
    if (!UUID.test(id)) {
      issues.push({ index: null, field: 'input.id', message: 'no legal hold with this id' });
    }
    if (issues.length > 0) throw new ValidationError(issues);
    const schema = tenantSchema(tenant);
    const [row] = await this.db.query<HoldRow>(
      `/* holds.release */
       update "${schema}".legal_holds
          set released_at = now(), released_by = $2, release_reason = $3
        where id = $1 and released_at is null
       returning ${COLUMNS}`,
      [id.toLowerCase(), releasedBy.slice(0, BY_MAX), reason],
    );
    if (!row) {
      const [existing] = await this.db.query<HoldRow>(
        `/* holds.get */ select ${COLUMNS} from "${schema}".legal_holds where id = $1`,
        [id.toLowerCase()],
      );
      if (!existing) throw ValidationError.single('input.id', 'no legal hold with this id');
      throw ValidationError.single(
        'input.id',
        `the legal hold was already released at ${date(existing.released_at)?.toISOString()}`,
      );
    }
    const hold = toHold(row);
    this.log.info({ tenant, hold }, 'legal hold released');
    return hold;
  }

  /** The tenant's holds, oldest first: active ones (`true`), released ones (`false`), or all. */
  async list(tenant: TenantId, active: boolean | null = null): Promise<LegalHold[]> {
    const schema = tenantSchema(tenant);
    const rows = await this.db.query<HoldRow>(
      `/* holds.list */
       select ${COLUMNS} from "${schema}".legal_holds
        where $1::boolean is null or (released_at is null) = $1::boolean
        order by placed_at, id`,
      [active],
    );
    return rows.map(toHold);
  }

  /**
   * Active holds that cover any event of the UTC month starting at `month`: a range hold that
   * overlaps the month, or a correlation-id hold with at least one event of that correlation id
   * in the month. `sql` lets retention ask inside its own transaction.
   */
  async holdsCovering(schema: string, month: Date, sql: Sql = this.db): Promise<LegalHold[]> {
    const from = month.toISOString();
    const to = addMonths(month, 1).toISOString();
    const rows = await sql.query<HoldRow>(
      `/* holds.covering */
       select ${COLUMNS} from "${schema}".legal_holds h
        where h.released_at is null
          and ((h.correlation_id is null and h.occurred_from < $2 and h.occurred_to > $1)
            or (h.correlation_id is not null and exists (
                  select 1 from "${schema}".audit_events e
                   where e.correlation_id = h.correlation_id
                     and e.occurred_at >= $1 and e.occurred_at < $2)))
        order by h.placed_at, h.id`,
      [from, to],
    );
    return rows.map(toHold);
  }
}
