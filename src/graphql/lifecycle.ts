import { ShuttingDownError, ValidationError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { LegalHold } from '../lifecycle/legal-holds.js';
import type { LifecycleRecord, RecordedEvent } from '../lifecycle/lifecycle-events.js';
import type {
  DroppedMonth,
  HeldMonth,
  MaintenanceProblem,
  MaintenanceReport,
  TenantMaintenanceReport,
} from '../lifecycle/maintenance.js';
import type { RetentionDrop, RetentionSetting } from '../lifecycle/tenant-retention.js';
import { requireScope } from './auth.js';
import { builder } from './builder.js';
import { actorOf, type GraphQLContext, knownTenant, requireTenant } from './context.js';
import { ownIdOf } from './node-ids.js';

/**
 * Lifecycle of a tenant's events (scope `audit:admin`): legal holds, the tenant's retention, and
 * running the maintenance job now. Every change is itself written as an audit event of the
 * tenant (through the ingest path, COMMITTED), and the payload says what became of that event.
 */

/** A lifecycle change's own failures: its input broke a rule, or the instance is stopping. */
const LIFECYCLE_ERRORS = [ValidationError, ShuttingDownError];

/** Writes the change as the tenant's audit event; the caller answers with what became of it. */
function recordChange(
  ctx: GraphQLContext,
  tenant: TenantId,
  r: Omit<LifecycleRecord, 'tenant' | 'actor' | 'correlationId'>,
): Promise<RecordedEvent> {
  const who = actorOf(ctx).lifecycle;
  return ctx.services.lifecycleLog.record({
    ...r,
    tenant,
    actor: who.actor,
    correlationId: who.correlationId,
    data: { ...r.data, ...who.data },
  });
}

/** Refuses a change before it is made when its audit event could not be accepted. */
function refuseWhileStopping(ctx: GraphQLContext): void {
  if (ctx.services.ingest.isStopping) throw new ShuttingDownError();
}

const RecordedEventRef = builder.objectRef<RecordedEvent>('LifecycleAuditEvent').implement({
  description: 'The audit event that records a lifecycle change, and what became of it.',
  fields: (t) => ({
    eventId: t.exposeString('id', { description: 'The event’s UUID.' }),
    occurredAt: t.expose('occurredAt', { type: 'DateTime' }),
    status: t.exposeString('status', {
      description:
        'STORED, DUPLICATE or DEAD_LETTERED; PENDING when it is accepted but not yet committed ' +
        '(COMMIT_TIMEOUT_MS); NOT_ACCEPTED when the write path refused it (see error, and the log).',
    }),
    error: t.exposeString('error', { nullable: true }),
  }),
});

const LegalHoldRef = builder.node(builder.objectRef<LegalHold>('LegalHold'), {
  description:
    'While active, retention keeps every month holding an event it covers: the events of one ' +
    'correlation id, or every event with occurredFrom ≤ occurredAt < occurredTo.',
  id: { resolve: (h) => h.id },
  loadOne: async (id, ctx) => {
    requireScope(ctx, 'auditAdmin');
    const tenant = requireTenant(ctx);
    return (await ctx.services.useCases.legalHolds.list(tenant)).find((h) => h.id === id) ?? null;
  },
  fields: (t) => ({
    holdId: t.exposeString('id', { description: 'The hold’s own id (a UUID).' }),
    correlationId: t.exposeString('correlationId', { nullable: true }),
    occurredFrom: t.expose('occurredFrom', { type: 'DateTime', nullable: true }),
    occurredTo: t.expose('occurredTo', {
      type: 'DateTime',
      nullable: true,
      description: 'Exclusive.',
    }),
    reason: t.exposeString('reason'),
    placedAt: t.expose('placedAt', { type: 'DateTime' }),
    placedBy: t.exposeString('placedBy'),
    releasedAt: t.expose('releasedAt', { type: 'DateTime', nullable: true }),
    releasedBy: t.exposeString('releasedBy', { nullable: true }),
    releaseReason: t.exposeString('releaseReason', { nullable: true }),
    active: t.boolean({ resolve: (h) => h.releasedAt === null }),
  }),
});

const LegalHoldPayload = builder
  .objectRef<{ hold: LegalHold; event: RecordedEvent }>('LegalHoldPayload')
  .implement({
    fields: (t) => ({
      hold: t.field({ type: LegalHoldRef, resolve: (p) => p.hold }),
      event: t.field({
        type: RecordedEventRef,
        description: 'The audit event recording the change.',
        resolve: (p) => p.event,
      }),
    }),
  });

const PlaceLegalHoldInput = builder.inputType('PlaceLegalHoldInput', {
  description: 'Exactly one scope: a correlationId, or occurredFrom and occurredTo.',
  fields: (t) => ({
    correlationId: t.string({ description: 'Hold every event of this correlation id.' }),
    occurredFrom: t.field({ type: 'DateTime', description: 'Range hold: inclusive start.' }),
    occurredTo: t.field({
      type: 'DateTime',
      description: 'Range hold: exclusive end, later than occurredFrom.',
    }),
    reason: t.string({ required: true, description: '1 to 1000 characters.' }),
  }),
});

builder.mutationField('placeLegalHold', (t) =>
  t.field({
    type: LegalHoldPayload,
    description:
      'Places a legal hold on the caller’s events: retention keeps every month holding a covered ' +
      'event until the hold is released. Recorded as the event auditgraph.legal_hold.placed.',
    errors: { types: LIFECYCLE_ERRORS, union: { name: 'PlaceLegalHoldResult' } },
    authScopes: { auditAdmin: true },
    args: { input: t.arg({ type: PlaceLegalHoldInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      return ctx.services.useCases.legalHolds.place(actorOf(ctx), tenant, {
        correlationId: input.correlationId ?? null,
        occurredFrom: input.occurredFrom ?? null,
        occurredTo: input.occurredTo ?? null,
        reason: input.reason,
      });
    },
  }),
);

const ReleaseLegalHoldInput = builder.inputType('ReleaseLegalHoldInput', {
  fields: (t) => ({
    id: t.id({ required: true, description: 'The hold to release: its `id` or `holdId`.' }),
    reason: t.string({ required: true, description: '1 to 1000 characters.' }),
  }),
});

builder.mutationField('releaseLegalHold', (t) =>
  t.field({
    type: LegalHoldPayload,
    description:
      'Releases an active legal hold (kept, marked released). The next maintenance run may drop ' +
      'the months it kept. Recorded as the event auditgraph.legal_hold.released.',
    errors: { types: LIFECYCLE_ERRORS, union: { name: 'ReleaseLegalHoldResult' } },
    authScopes: { auditAdmin: true },
    args: { input: t.arg({ type: ReleaseLegalHoldInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      return ctx.services.useCases.legalHolds.release(
        actorOf(ctx),
        tenant,
        ownIdOf(String(input.id), 'LegalHold', 'input.id'),
        input.reason,
      );
    },
  }),
);

const LegalHoldList = builder.objectRef<{ holds: LegalHold[] }>('LegalHoldList').implement({
  fields: (t) => ({
    holds: t.field({ type: [LegalHoldRef], resolve: (l) => l.holds }),
    count: t.int({ resolve: (l) => l.holds.length }),
  }),
});

builder.queryField('legalHolds', (t) =>
  t.field({
    type: LegalHoldList,
    description: 'The caller’s legal holds, oldest first.',
    authScopes: { auditAdmin: true },
    args: {
      active: t.arg.boolean({
        description: 'true: active holds only; false: released ones only; absent: all.',
      }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = requireTenant(ctx);
      return { holds: await ctx.services.useCases.legalHolds.list(tenant, args.active ?? null) };
    },
  }),
);

const RetentionSourceEnum = builder.enumType('RetentionSource', {
  values: {
    TENANT: { description: 'The tenant’s own setting (setRetention).' },
    DEFAULT: { description: 'RETENTION_DAYS of the deployment.' },
  } as const,
});

const RetentionDropRef = builder.objectRef<RetentionDrop>('RetentionDrop').implement({
  description: 'A month removed by retention, as recorded in the control schema.',
  fields: (t) => ({
    month: t.expose('month', { type: 'DateTime' }),
    partition: t.exposeString('partitionName'),
    rowCount: t.float({ description: 'An integer.', resolve: (d) => d.rowCount }),
    chainSeq: t.float({
      description: 'The chain head at the cut (an integer).',
      resolve: (d) => d.chainSeq,
    }),
    chainHash: t.exposeString('chainHash', { nullable: true }),
    checkpoint: t.field({
      type: 'JSONObject',
      nullable: true,
      description: 'The signed checkpoint of the head at the cut.',
      resolve: (d) => (d.checkpoint as Record<string, unknown> | null) ?? null,
    }),
    retentionDays: t.exposeInt('retentionDays'),
    droppedAt: t.expose('droppedAt', { type: 'DateTime' }),
    instanceId: t.exposeString('instanceId'),
  }),
});

const RetentionRef = builder
  .objectRef<RetentionSetting & { tenant: TenantId }>('Retention')
  .implement({
    description:
      'How long the tenant’s events are kept: occurredAt older than `days` is refused, and ' +
      'whole months that ended `days` ago are dropped by the maintenance job (unless held).',
    fields: (t) => ({
      days: t.exposeInt('days', { description: 'What applies.' }),
      default: t.exposeInt('defaultDays', { description: 'RETENTION_DAYS.' }),
      max: t.exposeInt('maxDays', {
        description:
          'MAX_RETENTION_DAYS: the most setRetention accepts, and the oldest occurredAt a write may ' +
          'have (when `days` is larger, from a setting made before this ceiling).',
      }),
      tenantDays: t.exposeInt('tenantDays', {
        nullable: true,
        description: 'The tenant’s own setting; null when the default applies.',
      }),
      source: t.field({ type: RetentionSourceEnum, resolve: (r) => r.source }),
      drops: t.field({
        type: [RetentionDropRef],
        description: 'Months removed by retention, newest first (at most 120).',
        resolve: (r, _args, ctx) => ctx.services.retention.drops(r.tenant),
      }),
    }),
  });

builder.queryField('retention', (t) =>
  t.field({
    type: RetentionRef,
    authScopes: { auditAdmin: true },
    resolve: async (_root, _args, ctx) => {
      const tenant = await knownTenant(ctx);
      return { ...(await ctx.services.retention.get(tenant)), tenant };
    },
  }),
);

const SetRetentionInput = builder.inputType('SetRetentionInput', {
  fields: (t) => ({
    days: t.int({
      description:
        '1 to MAX_RETENTION_DAYS (3660 by default); null returns the tenant to the default (RETENTION_DAYS).',
    }),
  }),
});

const SetRetentionPayload = builder
  .objectRef<{ retention: RetentionSetting & { tenant: TenantId }; event: RecordedEvent }>(
    'SetRetentionPayload',
  )
  .implement({
    fields: (t) => ({
      retention: t.field({ type: RetentionRef, resolve: (p) => p.retention }),
      event: t.field({ type: RecordedEventRef, resolve: (p) => p.event }),
    }),
  });

builder.mutationField('setRetention', (t) =>
  t.field({
    type: SetRetentionPayload,
    description:
      'Sets how long the caller’s events are kept. Takes effect for writes on this instance at ' +
      'once (others within 30 s); months past it are dropped by the next maintenance run. ' +
      'Recorded as the event auditgraph.retention.changed.',
    errors: { types: LIFECYCLE_ERRORS, union: { name: 'SetRetentionResult' } },
    authScopes: { auditAdmin: true },
    args: { input: t.arg({ type: SetRetentionInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      if (input.days === undefined) {
        // Leaving the field out is not a way to say "default": that takes an explicit null.
        throw ValidationError.single(
          'input.days',
          `give the number of days (1 to ${ctx.services.config.maxRetentionDays}), or null for the default`,
        );
      }
      await ctx.services.tenants.ensure(tenant, false);
      refuseWhileStopping(ctx);
      const { before, after } = await ctx.services.retention.set(tenant, input.days);
      const event = await recordChange(ctx, tenant, {
        eventType: 'auditgraph.retention.changed',
        action: 'set',
        resource: { type: 'retention', id: tenant },
        data: {
          before: { days: before.days, tenantDays: before.tenantDays, source: before.source },
          after: { days: after.days, tenantDays: after.tenantDays, source: after.source },
        },
      });
      return { retention: { ...after, tenant }, event };
    },
  }),
);

const DroppedMonthRef = builder.objectRef<DroppedMonth>('DroppedMonth').implement({
  fields: (t) => ({
    month: t.expose('month', { type: 'DateTime' }),
    partition: t.exposeString('partition'),
    rowCount: t.float({ description: 'An integer.', resolve: (d) => d.rowCount }),
    chainSeq: t.float({ description: 'An integer.', resolve: (d) => d.chainSeq }),
    chainHash: t.exposeString('chainHash', { nullable: true }),
    checkpoint: t.field({
      type: 'JSONObject',
      nullable: true,
      resolve: (d) => (d.checkpoint as unknown as Record<string, unknown> | null) ?? null,
    }),
  }),
});

const HeldMonthRef = builder.objectRef<HeldMonth>('HeldMonth').implement({
  description: 'A month past retention that was kept because legal holds cover its events.',
  fields: (t) => ({
    month: t.expose('month', { type: 'DateTime' }),
    partition: t.exposeString('partition'),
    holdIds: t.exposeStringList('holdIds'),
  }),
});

const MaintenanceProblemRef = builder
  .objectRef<MaintenanceProblem>('MaintenanceProblem')
  .implement({
    description: 'Something the run could not do; it is tried again on the next run.',
    fields: (t) => ({
      month: t.expose('month', { type: 'DateTime', nullable: true }),
      message: t.exposeString('message'),
    }),
  });

const TenantMaintenanceRef = builder
  .objectRef<TenantMaintenanceReport>('TenantMaintenance')
  .implement({
    fields: (t) => ({
      tenantId: t.exposeString('tenant'),
      retentionDays: t.exposeInt('retentionDays'),
      retentionSource: t.field({ type: RetentionSourceEnum, resolve: (r) => r.retentionSource }),
      cutoff: t.expose('cutoff', {
        type: 'DateTime',
        description: 'Months that ended at or before this instant are past retention.',
      }),
      partitionsCreated: t.exposeStringList('partitionsCreated'),
      dropped: t.field({ type: [DroppedMonthRef], resolve: (r) => r.dropped }),
      held: t.field({ type: [HeldMonthRef], resolve: (r) => r.held }),
      problems: t.field({ type: [MaintenanceProblemRef], resolve: (r) => r.problems }),
    }),
  });

const MaintenanceReportRef = builder.objectRef<MaintenanceReport>('MaintenanceReport').implement({
  fields: (t) => ({
    leader: t.exposeBoolean('leader', {
      description: 'False when another instance was running maintenance: nothing was done.',
    }),
    instanceId: t.exposeString('instanceId'),
    now: t.expose('now', { type: 'DateTime' }),
    startedAt: t.expose('startedAt', { type: 'DateTime' }),
    finishedAt: t.expose('finishedAt', { type: 'DateTime' }),
    note: t.exposeString('note', { nullable: true }),
    tenants: t.field({ type: [TenantMaintenanceRef], resolve: (r) => r.tenants }),
  }),
});

builder.mutationField('runMaintenance', (t) =>
  t.field({
    type: MaintenanceReportRef,
    description:
      'Runs the maintenance job now for the caller’s tenant: partitions ahead, and retention ' +
      '(whole months past it are dropped unless a legal hold covers them).',
    errors: { types: LIFECYCLE_ERRORS, union: { name: 'RunMaintenanceResult' } },
    authScopes: { auditAdmin: true },
    resolve: async (_root, _args, ctx) => {
      const tenant = await knownTenant(ctx);
      refuseWhileStopping(ctx);
      const report = await ctx.services.maintenance.runOnce({ tenant });
      ctx.log.info(
        { tenant, leader: report.leader, requestId: ctx.requestId },
        'maintenance run on request',
      );
      return report;
    },
  }),
);
