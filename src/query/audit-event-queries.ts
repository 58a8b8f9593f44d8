import { ReplayTooLargeError, ValidationError } from '../domain/errors.js';
import { type AuditEventFilter, type AuditEventOrder, validateFilter } from '../domain/filter.js';
import type { CursorScope, KeysetCursorCodec, TailPosition } from '../domain/keyset-cursor.js';
import { isServiceEventType } from '../domain/service-event.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { AuditEventReader, AuditEventRow, KeysetPageQuery } from './audit-event-reader.js';

export const PAGE_DEFAULT = 50;
export const PAGE_MAX = 500;

export interface PageArgs {
  first?: number | null;
  after?: string | null;
  last?: number | null;
  before?: string | null;
  filter?: AuditEventFilter | null;
  order?: AuditEventOrder | null;
}

export interface EventPage {
  edges: { cursor: string; node: AuditEventRow }[];
  pageInfo: {
    hasNextPage: boolean;
    hasPreviousPage: boolean;
    startCursor: string | null;
    endCursor: string | null;
  };
}

/** A page request whose arguments and cursors were checked (AuditEventQueries.plan). */
export interface PagePlan {
  scope: CursorScope;
  query: KeysetPageQuery;
}

/** What the tail reads from the database: the chain heads, and stored rows by position. */
export interface TailStore {
  /** The head of each month's chain (or of one month's): month → last position taken. */
  heads(month?: number): Promise<ReadonlyMap<number, number>>;
  /**
   * The rows of `month` with `afterSeq < chain_seq <= throughSeq` that the subscriber's filter
   * takes, in chain order.
   */
  range(month: number, afterSeq: number, throughSeq: number): Promise<readonly AuditEventRow[]>;
}

/** Relay-style pages of a tenant's events: argument rules, signed cursors, the keyset reader. */
export class AuditEventQueries {
  constructor(
    private readonly reader: AuditEventReader,
    private readonly cursors: KeysetCursorCodec,
  ) {}

  /**
   * A page request checked against the argument rules and its cursors decoded: everything that
   * refuses a page (ValidationError, InvalidCursorError) is decided here, before anything is
   * read. `read` then reads it.
   */
  plan(tenant: TenantId, args: PageArgs): PagePlan {
    if (args.first != null && args.last != null) {
      throw ValidationError.single('last', 'give either first or last, not both');
    }
    const backward = args.last != null || (args.before != null && args.first == null);
    const size = (backward ? args.last : args.first) ?? PAGE_DEFAULT;
    if (!Number.isInteger(size) || size < 1 || size > PAGE_MAX) {
      throw ValidationError.single(
        backward ? 'last' : 'first',
        `must be between 1 and ${PAGE_MAX}`,
      );
    }
    const filter = validateFilter(args.filter);
    const order = args.order ?? 'OCCURRED_AT_DESC';
    const scope = { tenant, order, filter };
    const after = args.after != null ? this.cursors.decode(args.after, scope) : undefined;
    const before = args.before != null ? this.cursors.decode(args.before, scope) : undefined;
    return {
      scope,
      query: {
        schema: tenantSchema(tenant),
        filter,
        order,
        direction: backward ? 'backward' : 'forward',
        limit: size,
        after,
        before,
      },
    };
  }

  /** The page a plan names, its cursors signed. */
  async read(plan: PagePlan): Promise<EventPage> {
    const page = await this.reader.page(plan.query);
    const encode = this.cursors.encoder(plan.scope);
    const edges = page.rows.map((node) => ({
      cursor: encode({ occurredAt: node.occurredAt, id: node.id }),
      node,
    }));
    return {
      edges,
      pageInfo: {
        hasNextPage: page.hasNextPage,
        hasPreviousPage: page.hasPreviousPage,
        startCursor: edges[0]?.cursor ?? null,
        endCursor: edges.at(-1)?.cursor ?? null,
      },
    };
  }

  list(tenant: TenantId, args: PageArgs): Promise<EventPage> {
    return this.read(this.plan(tenant, args));
  }

  /** The position a tail's cursor names; InvalidCursorError for a cursor that is not one. */
  tailPosition(tenant: TenantId, cursor: string): TailPosition {
    return this.cursors.decodeTail(cursor, tenant);
  }

  /**
   * Where a live tail starts: after `after`, or at the chain heads as they are now. Refused
   * (ReplayTooLargeError) when more than `maxReplay` positions were stored after it.
   */
  async tailStart(
    tenant: TenantId,
    after: TailPosition | null,
    maxReplay: number,
  ): Promise<TailPosition> {
    const heads = await this.reader.chainHeads(tenantSchema(tenant));
    if (!after) return heads;
    let behind = 0;
    for (const [month, head] of heads) behind += Math.max(0, head - (after.get(month) ?? 0));
    if (behind > maxReplay) throw new ReplayTooLargeError(behind, maxReplay);
    return after;
  }

  tailCursor(tenant: TenantId, position: TailPosition): string {
    return this.cursors.encodeTail(position, tenant);
  }

  /**
   * The reads of a tenant's live tail under `filter`: the service's own records only when the
   * filter names one of their types, as the live side decides (matchesLiveTail).
   */
  tailStore(tenant: TenantId, filter: AuditEventFilter): TailStore {
    const schema = tenantSchema(tenant);
    const named = filter.eventTypes;
    return {
      heads: (month) =>
        this.reader.chainHeads(schema, month === undefined ? undefined : new Date(month)),
      range: async (month, afterSeq, throughSeq) => {
        const rows = await this.reader.chainPage({
          schema,
          filter,
          month: new Date(month),
          afterSeq,
          throughSeq,
        });
        return rows.filter((r) => !isServiceEventType(r.eventType) || named?.includes(r.eventType));
      },
    };
  }

  byId(tenant: TenantId, id: string, occurredAt?: Date | null): Promise<AuditEventRow | null> {
    return this.reader.byId(tenantSchema(tenant), id, occurredAt ?? undefined);
  }
}
