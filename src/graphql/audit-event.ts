import { ValidationError } from '../domain/errors.js';
import { OUTCOMES } from '../domain/event.js';
import { FILTER_LIMITS } from '../domain/filter.js';
import { PAGE_DEFAULT, PAGE_MAX } from '../query/audit-event-queries.js';
import type { AuditEventRow } from '../query/audit-event-reader.js';
import { requireScope } from './auth.js';
import { builder } from './builder.js';
import { knownTenant, recordRead, requireTenant } from './context.js';

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

// Actor and Resource name their ids actorId and resourceId (as the filter does), not `id`:
// client caches such as Relay's key every object by `id` alone, and an actor and a resource
// with the same id would become one record there.
const Actor = builder.objectRef<AuditEventRow>('Actor').implement({
  description: 'Who did it.',
  fields: (t) => ({
    type: t.string({ resolve: (e) => e.actorType }),
    actorId: t.string({ resolve: (e) => e.actorId }),
    ip: t.string({ nullable: true, resolve: (e) => e.actorIp }),
  }),
});

const Resource = builder.objectRef<AuditEventRow>('Resource').implement({
  description: 'What it was done to.',
  fields: (t) => ({
    type: t.string({ resolve: (e) => e.resourceType }),
    resourceId: t.string({ resolve: (e) => e.resourceId }),
    name: t.string({ nullable: true, resolve: (e) => e.resourceName }),
  }),
});

/**
 * An event's global id names what makes its look-up exact and pruned to one partition: the
 * event's UUID and its occurredAt.
 */
function eventNodeKey(e: { id: string; occurredAt: Date }): string {
  return `${e.id}@${e.occurredAt.toISOString()}`;
}

const EVENT_NODE_KEY = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})@(.+)$/;

export const AuditEvent = builder.node(builder.objectRef<AuditEventRow>('AuditEvent'), {
  description:
    'One stored audit event. Stored events never change. `id` is its global id (for `node` and ' +
    'client caches); `eventId` is the UUID it was written with.',
  id: { resolve: eventNodeKey },
  loadOne: async (key, ctx) => {
    const match = EVENT_NODE_KEY.exec(key);
    const occurredAt = match ? new Date(match[2]!) : null;
    if (!match || !occurredAt || Number.isNaN(occurredAt.getTime())) return null;
    requireScope(ctx, 'eventsRead');
    const tenant = await knownTenant(ctx);
    const event = await ctx.services.queries.byId(tenant, match[1]!, occurredAt);
    await recordRead(ctx, tenant, 'node', { id: match[1]!, found: event !== null });
    return event;
  },
  fields: (t) => ({
    eventId: t.exposeString('id', {
      description: 'The event’s UUID: what writers send as `id`, and what idempotency is keyed on.',
    }),
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
        'Position in its month’s hash chain (an integer, 1 first), in commit order. Live-tail messages carry it too (not the hashes).',
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

builder.queryField('auditEvents', (t) =>
  t.connection(
    {
      type: AuditEvent,
      description:
        `Events of the caller's tenant, keyset-paginated on (occurredAt, id). Forward with first/after, ` +
        `backward with last/before; page size defaults to ${PAGE_DEFAULT}, at most ${PAGE_MAX}. ` +
        'Cursors are bound to the tenant, order and filter they were issued for.',
      authScopes: { eventsRead: true },
      args: {
        filter: t.arg({ type: AuditEventFilterInput }),
        order: t.arg({ type: AuditEventOrderEnum, defaultValue: 'OCCURRED_AT_DESC' }),
      },
      resolve: async (_root, args, ctx) => {
        const tenant = await knownTenant(ctx);
        const { queries } = ctx.services;
        // A request the argument rules refuse is refused before it is recorded or read. Then the
        // access record is accepted while the page is read, not after: the read waits for
        // whichever takes longer, not for both in turn. Neither is answered without the other:
        // a record that cannot be accepted refuses the read.
        const plan = queries.plan(tenant, args);
        const [page] = await Promise.all([
          queries.read(plan),
          recordRead(ctx, tenant, 'auditEvents', {
            filter: args.filter ?? null,
            order: args.order ?? null,
          }),
        ]);
        return page;
      },
    },
    { name: 'AuditEventConnection' },
    { name: 'AuditEventEdge' },
  ),
);

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

builder.queryField('auditEvent', (t) =>
  t.field({
    type: AuditEvent,
    nullable: true,
    description:
      'One event by its UUID (`eventId`; null when absent). Give occurredAt too to make the ' +
      'look-up exact and cheaper. (`node(id:)` takes the global id.)',
    authScopes: { eventsRead: true },
    args: {
      eventId: t.arg.string({ required: true }),
      occurredAt: t.arg({ type: 'DateTime' }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = requireTenant(ctx);
      if (!UUID.test(args.eventId)) throw ValidationError.single('eventId', 'must be a UUID');
      const id = args.eventId.toLowerCase();
      await ctx.services.tenants.ensure(tenant, false);
      const event = await ctx.services.queries.byId(tenant, id, args.occurredAt);
      await recordRead(ctx, tenant, 'auditEvent', {
        id,
        found: event !== null,
      });
      return event;
    },
  }),
);
