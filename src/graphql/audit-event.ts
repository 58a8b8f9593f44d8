import {
  InvalidCursorError,
  LimitExceededError,
  ShuttingDownError,
  ValidationError,
} from '../domain/errors.js';
import { OUTCOMES } from '../domain/event.js';
import { FILTER_LIMITS } from '../domain/filter.js';
import { type Connection, PAGE_DEFAULT, PAGE_MAX } from '../query/audit-event-queries.js';
import type { AuditEventRow } from '../query/audit-event-reader.js';
import { refusedAsResult } from './auth.js';
import { builder } from './builder.js';
import { recordRead, requireTenant } from './context.js';
import { TENANT_ERRORS } from './errors.js';

function hex(b: Uint8Array | null | undefined): string | null {
  return b ? Buffer.from(b).toString('hex') : null;
}

export const OutcomeEnum = builder.enumType('Outcome', { values: OUTCOMES });

export const AuditEventOrderEnum = builder.enumType('AuditEventOrder', {
  values: {
    OCCURRED_AT_DESC: { description: 'Newest first (default).' },
    OCCURRED_AT_ASC: { description: 'Oldest first.' },
  } as const,
});

const Actor = builder.objectRef<AuditEventRow>('Actor').implement({
  description: 'Who did it.',
  fields: (t) => ({
    type: t.string({ resolve: (e) => e.actorType }),
    id: t.string({ resolve: (e) => e.actorId }),
    ip: t.string({ nullable: true, resolve: (e) => e.actorIp }),
  }),
});

const Resource = builder.objectRef<AuditEventRow>('Resource').implement({
  description: 'What it was done to.',
  fields: (t) => ({
    type: t.string({ resolve: (e) => e.resourceType }),
    id: t.string({ resolve: (e) => e.resourceId }),
    name: t.string({ nullable: true, resolve: (e) => e.resourceName }),
  }),
});

export const AuditEvent = builder.objectRef<AuditEventRow>('AuditEvent').implement({
  description: 'One stored audit event. Stored events never change.',
  fields: (t) => ({
    id: t.exposeString('id'),
    occurredAt: t.expose('occurredAt', { type: 'DateTime' }),
    receivedAt: t.expose('receivedAt', { type: 'DateTime' }),
    eventType: t.exposeString('eventType'),
    category: t.exposeString('category'),
    action: t.exposeString('action'),
    outcome: t.field({ type: OutcomeEnum, resolve: (e) => e.outcome as (typeof OUTCOMES)[number] }),
    correlationId: t.exposeString('correlationId'),
    actor: t.field({ type: Actor, resolve: (e) => e }),
    resource: t.field({ type: Resource, resolve: (e) => e }),
    parentEventId: t.exposeString('parentEventId', { nullable: true }),
    severity: t.exposeString('severity', { nullable: true }),
    durationMs: t.exposeInt('durationMs', { nullable: true }),
    errorCode: t.exposeString('errorCode', { nullable: true }),
    errorMessage: t.exposeString('errorMessage', { nullable: true }),
    namespace: t.exposeString('namespace', { nullable: true }),
    clusterId: t.exposeString('clusterId', { nullable: true }),
    traceId: t.exposeString('traceId', { nullable: true }),
    spanId: t.exposeString('spanId', { nullable: true }),
    data: t.field({ type: 'JSONObject', nullable: true, resolve: (e) => e.data ?? null }),
    chainSeq: t.float({
      nullable: true,
      description:
        'Position in its month’s hash chain (an integer, 1 first), in commit order. Null in live-tail messages.',
      resolve: (e) => e.chainSeq ?? null,
    }),
    prevHash: t.string({
      nullable: true,
      description:
        'Hex hash of the event before it in the chain (the month’s genesis hash for the first).',
      resolve: (e) => hex(e.prevHash),
    }),
    hash: t.string({
      nullable: true,
      description:
        'Hex SHA-256(prevHash || RFC 8785 canonical JSON of the event), HMAC-keyed when CHAIN_HMAC_SECRET is set.',
      resolve: (e) => hex(e.hash),
    }),
    batchId: t.exposeString('batchId', { description: 'The batch (transaction) that stored it.' }),
  }),
});

const PageInfo = builder.objectRef<Connection['pageInfo']>('PageInfo').implement({
  fields: (t) => ({
    hasNextPage: t.exposeBoolean('hasNextPage'),
    hasPreviousPage: t.exposeBoolean('hasPreviousPage'),
    startCursor: t.exposeString('startCursor', { nullable: true }),
    endCursor: t.exposeString('endCursor', { nullable: true }),
  }),
});

const AuditEventEdge = builder.objectRef<Connection['edges'][number]>('AuditEventEdge').implement({
  fields: (t) => ({
    cursor: t.exposeString('cursor'),
    node: t.field({ type: AuditEvent, resolve: (e) => e.node }),
  }),
});

const AuditEventConnection = builder.objectRef<Connection>('AuditEventConnection').implement({
  fields: (t) => ({
    edges: t.field({ type: [AuditEventEdge], resolve: (c) => c.edges }),
    pageInfo: t.field({ type: PageInfo, resolve: (c) => c.pageInfo }),
  }),
});

export const AuditEventFilterInput = builder.inputType('AuditEventFilter', {
  description: 'Every given condition must hold.',
  fields: (t) => ({
    correlationId: t.string(),
    eventTypes: t.stringList({
      description: `Any of these event types (at most ${FILTER_LIMITS.eventTypes}).`,
    }),
    category: t.string(),
    action: t.string(),
    outcome: t.field({ type: OutcomeEnum }),
    actorType: t.string(),
    actorId: t.string(),
    resourceType: t.string(),
    resourceId: t.string(),
    occurredAfter: t.field({ type: 'DateTime', description: 'Inclusive lower bound.' }),
    occurredBefore: t.field({ type: 'DateTime', description: 'Exclusive upper bound.' }),
    severity: t.string(),
    dataContains: t.field({
      type: 'JSONObject',
      description: 'Events whose data contains this object (JSON containment).',
    }),
  }),
});

/**
 * A read whose access record (AUDIT_READS) cannot be accepted is refused with these, never
 * served unrecorded: the tenant's access-record share or the process's buffer is full
 * (LimitExceededError), or the instance is stopping.
 */
const READ_RECORD_ERRORS = [LimitExceededError, ShuttingDownError];

builder.queryField('auditEvents', (t) =>
  t.field({
    type: AuditEventConnection,
    description:
      `Events of the caller's tenant, keyset-paginated on (occurredAt, id). Forward with first/after, ` +
      `backward with last/before; page size defaults to ${PAGE_DEFAULT}, at most ${PAGE_MAX}. ` +
      'Cursors are bound to the tenant, order and filter they were issued for.',
    errors: {
      types: [...TENANT_ERRORS, InvalidCursorError, ...READ_RECORD_ERRORS],
      union: { name: 'AuditEventsResult' },
    },
    authScopes: { eventsRead: true },
    unauthorizedResolver: refusedAsResult,
    args: {
      first: t.arg.int(),
      after: t.arg.string(),
      last: t.arg.int(),
      before: t.arg.string(),
      filter: t.arg({ type: AuditEventFilterInput }),
      order: t.arg({ type: AuditEventOrderEnum, defaultValue: 'OCCURRED_AT_DESC' }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = requireTenant(ctx);
      await ctx.services.tenants.ensure(tenant, false);
      const page = await ctx.services.queries.list(tenant, args);
      await recordRead(ctx, tenant, 'auditEvents', {
        returned: page.edges.length,
        filter: args.filter ?? null,
        order: args.order ?? null,
      });
      return page;
    },
  }),
);

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

builder.queryField('auditEvent', (t) =>
  t.field({
    type: AuditEvent,
    nullable: true,
    description:
      'One event by id (null when absent). Give occurredAt too to make the look-up exact and cheaper.',
    errors: {
      types: [...TENANT_ERRORS, ...READ_RECORD_ERRORS],
      union: { name: 'AuditEventResult' },
    },
    authScopes: { eventsRead: true },
    unauthorizedResolver: refusedAsResult,
    args: {
      id: t.arg.string({ required: true }),
      occurredAt: t.arg({ type: 'DateTime' }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = requireTenant(ctx);
      if (!UUID.test(args.id)) throw ValidationError.single('id', 'must be a UUID');
      await ctx.services.tenants.ensure(tenant, false);
      const event = await ctx.services.queries.byId(tenant, args.id.toLowerCase(), args.occurredAt);
      await recordRead(ctx, tenant, 'auditEvent', {
        id: args.id.toLowerCase(),
        found: event !== null,
      });
      return event;
    },
  }),
);
