import { ValidationError } from '../domain/errors.js';
import { type AuditEventFilter, type AuditEventOrder, validateFilter } from '../domain/filter.js';
import type { KeysetCursorCodec } from '../domain/keyset-cursor.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { AuditEventReader, AuditEventRow } from './audit-event-reader.js';

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

/** Relay-style pages of a tenant's events: argument rules, signed cursors, the keyset reader. */
export class AuditEventQueries {
  constructor(
    private readonly reader: AuditEventReader,
    private readonly cursors: KeysetCursorCodec,
  ) {}

  async list(tenant: TenantId, args: PageArgs): Promise<EventPage> {
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
    const page = await this.reader.page({
      schema: tenantSchema(tenant),
      filter,
      order,
      direction: backward ? 'backward' : 'forward',
      limit: size,
      after,
      before,
    });
    const edges = page.rows.map((node) => ({
      cursor: this.cursors.encode({ occurredAt: node.occurredAt, id: node.id }, scope),
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

  byId(tenant: TenantId, id: string, occurredAt?: Date | null): Promise<AuditEventRow | null> {
    return this.reader.byId(tenantSchema(tenant), id, occurredAt ?? undefined);
  }
}
