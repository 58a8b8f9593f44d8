import type { ClusterStats } from '../cluster/cluster.js';
import {
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  JournalUnavailableError,
  RateLimitedError,
  ShuttingDownError,
  ValidationError,
} from '../domain/errors.js';
import { type AuditEventInput, LIMITS, RESERVED_EVENT_TYPE_PREFIX } from '../domain/event.js';
import type { TenantId } from '../domain/tenant.js';
import type { AcceptedEvent, FlushResult } from '../ingest/ingest-service.js';
import { identityHolds } from '../ingest/stats.js';
import { checkedTimeoutMs } from './arguments.js';
import { OutcomeEnum } from './audit-event.js';
import { builder } from './builder.js';
import { knownTenant, requireTenant } from './context.js';
import { AuditErrorInterface } from './errors.js';
import type { RefusedWrite } from './write-shedding.js';

const AckEnum = builder.enumType('Ack', {
  values: {
    COMMITTED: { description: 'Answer once every event is STORED or DUPLICATE (default).' },
    BUFFERED: {
      description:
        'Answer once the events are in the buffer; flushAudit tells what became of them.',
    },
  } as const,
});

const EventStatusEnum = builder.enumType('EventStatus', {
  values: {
    STORED: { description: 'Committed to the tenant’s table.' },
    DUPLICATE: {
      description:
        'An event with the same id was already stored (whatever its occurredAt), or came earlier in the call; the stored one wins. One whose content or occurredAt differs is counted in auditStats.conflicts and logged.',
    },
    DEAD_LETTERED: { description: 'Could not be stored; kept in the dead-letter queue.' },
    BUFFERED: { description: 'Accepted and pending (ack: BUFFERED, or not yet committed).' },
  } as const,
});

const ActorInput = builder.inputType('ActorInput', {
  fields: (t) => ({
    type: t.string({ required: true, description: `At most ${LIMITS.actorType} characters.` }),
    id: t.string({ required: true, description: `At most ${LIMITS.actorId} characters.` }),
    ip: t.string({ description: 'An IPv4 or IPv6 address.' }),
  }),
});

const ResourceInput = builder.inputType('ResourceInput', {
  fields: (t) => ({
    type: t.string({ required: true, description: `At most ${LIMITS.resourceType} characters.` }),
    id: t.string({ required: true, description: `At most ${LIMITS.resourceId} characters.` }),
    name: t.string({ description: `At most ${LIMITS.resourceName} characters.` }),
  }),
});

const AuditEventInputRef = builder.inputType('AuditEventInput', {
  description:
    'One event. Its id is the idempotency key, one event per tenant: sending it again is safe, and a second event under the same id is a DUPLICATE, never stored.',
  fields: (t) => ({
    id: t.string({ description: 'A UUID; generated when absent.' }),
    occurredAt: t.field({
      type: 'DateTime',
      required: true,
      description: 'Within the retention window, and not later than now + MAX_FUTURE_SKEW_MS.',
    }),
    eventType: t.string({
      required: true,
      description: `e.g. workflow.execution.started; at most ${LIMITS.eventType} characters. Types starting with ${RESERVED_EVENT_TYPE_PREFIX} (any case) are the service's own and refused.`,
    }),
    category: t.string({ required: true, description: `At most ${LIMITS.category} characters.` }),
    action: t.string({ required: true, description: `At most ${LIMITS.action} characters.` }),
    outcome: t.field({ type: OutcomeEnum, required: true }),
    correlationId: t.string({
      required: true,
      description: `At most ${LIMITS.correlationId} characters.`,
    }),
    actor: t.field({ type: ActorInput, required: true }),
    resource: t.field({ type: ResourceInput, required: true }),
    parentEventId: t.string({ description: 'A UUID; a plain reference, not checked.' }),
    severity: t.string({ description: `At most ${LIMITS.severity} characters.` }),
    durationMs: t.int({ description: `0 to ${LIMITS.durationMs}.` }),
    errorCode: t.string({ description: `At most ${LIMITS.errorCode} characters.` }),
    errorMessage: t.string({ description: `At most ${LIMITS.errorMessage} characters.` }),
    namespace: t.string({ description: `At most ${LIMITS.namespace} characters.` }),
    clusterId: t.string({ description: `At most ${LIMITS.clusterId} characters.` }),
    traceId: t.string({ description: `At most ${LIMITS.traceId} characters.` }),
    spanId: t.string({ description: `At most ${LIMITS.spanId} characters.` }),
    data: t.field({
      type: 'JSONObject',
      description: `Free-form context: at most ${LIMITS.dataBytes} bytes serialised, nesting at most ${LIMITS.dataDepth}. Numbers must be finite and within ±(2^53 − 1) (send larger integers as strings).`,
    }),
  }),
});

const CreateAuditEventsInput = builder.inputType('CreateAuditEventsInput', {
  fields: (t) => ({
    events: t.field({ type: [AuditEventInputRef], required: true }),
    ack: t.field({ type: AckEnum, defaultValue: 'COMMITTED' }),
  }),
});

const AcceptedEventRef = builder.objectRef<AcceptedEvent>('AcceptedEvent').implement({
  fields: (t) => ({
    eventId: t.exposeString('id', {
      description: 'The event’s UUID (generated when the call gave none): keep it for a retry.',
    }),
    occurredAt: t.expose('occurredAt', { type: 'DateTime' }),
    status: t.field({ type: EventStatusEnum, resolve: (e) => e.status }),
  }),
});

interface CreatePayload {
  events: AcceptedEvent[];
}

const count = (p: CreatePayload, status: AcceptedEvent['status']) =>
  p.events.filter((e) => e.status === status).length;

const CreateAuditEventsPayload = builder
  .objectRef<CreatePayload>('CreateAuditEventsPayload')
  .implement({
    description:
      'Every event of the call was accepted; here is what became of each, in input order.',
    fields: (t) => ({
      events: t.field({ type: [AcceptedEventRef], resolve: (p) => p.events }),
      accepted: t.int({ resolve: (p) => p.events.length }),
      stored: t.int({ resolve: (p) => count(p, 'STORED') }),
      duplicates: t.int({ resolve: (p) => count(p, 'DUPLICATE') }),
      buffered: t.int({ resolve: (p) => count(p, 'BUFFERED') }),
    }),
  });

builder.objectType(CommitTimeoutError, {
  name: 'CommitTimeoutError',
  description:
    'The events were accepted but not committed within COMMIT_TIMEOUT_MS. They stay pending and will be written; a retry with the same ids is safe.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof CommitTimeoutError,
  fields: (t) => ({
    timeoutMs: t.exposeInt('timeoutMs'),
    pending: t.exposeInt('pending'),
    events: t.field({ type: [AcceptedEventRef], resolve: (e) => e.events as AcceptedEvent[] }),
  }),
});

builder.mutationField('createAuditEvents', (t) =>
  t.field({
    type: CreateAuditEventsPayload,
    description:
      'Accepts every event of the call or none. Rejections (typed errors) mean nothing was accepted; ' +
      'CommitTimeoutError means everything was accepted and is still pending.',
    errors: {
      types: [
        ValidationError,
        BackpressureError,
        RateLimitedError,
        ShuttingDownError,
        CommitTimeoutError,
        JournalUnavailableError,
      ],
      union: { name: 'CreateAuditEventsResult' },
    },
    authScopes: { eventsWrite: true },
    args: { input: t.arg({ type: CreateAuditEventsInput, required: true }) },
    resolve: async (root, { input }, ctx) => {
      // Refused before its input was read (write-shedding.ts): the events are not there.
      const refused = (root as Partial<RefusedWrite> | undefined)?.writeRefusal;
      if (refused) throw refused;
      const events = await ctx.services.useCases.admission.admit(
        requireTenant(ctx),
        input.events as AuditEventInput[],
        input.ack ?? 'COMMITTED',
      );
      return { events };
    },
  }),
);

const FlushAuditInput = builder.inputType('FlushAuditInput', {
  fields: (t) => ({
    timeoutMs: t.int({
      description: 'How long to wait at most (default 10000, capped by FLUSH_MAX_TIMEOUT_MS).',
    }),
  }),
});

const FlushAuditPayload = builder.objectRef<FlushResult>('FlushAuditPayload').implement({
  description:
    'Everything the tenant had accepted before the call is now stored, duplicate or dead-lettered.',
  fields: (t) => ({
    stored: t.exposeInt('stored'),
    duplicates: t.exposeInt('duplicates'),
    deadLettered: t.exposeInt('deadLettered'),
    waitedFor: t.exposeInt('waitedFor', {
      description: 'Events of calls that were still pending when the flush began.',
    }),
    durationMs: t.float({ resolve: (r) => Math.round(r.durationMs * 1000) / 1000 }),
    instances: t.exposeStringList('instances', {
      description: 'Instances whose buffers were flushed.',
    }),
  }),
});

builder.mutationField('flushAudit', (t) =>
  t.field({
    type: FlushAuditPayload,
    description:
      'A barrier: returns when every event of the tenant accepted before the call has a final status.',
    errors: { types: [ValidationError, FlushTimeoutError], union: { name: 'FlushAuditResult' } },
    authScopes: { eventsWrite: true },
    args: { input: t.arg({ type: FlushAuditInput }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      const { config, cluster, tenants } = ctx.services;
      const timeoutMs = checkedTimeoutMs(
        input?.timeoutMs,
        10_000,
        config.flushMaxTimeoutMs,
        'input.timeoutMs',
      );
      await tenants.ensure(tenant, false);
      return cluster.flush(tenant, timeoutMs);
    },
  }),
);

const AuditStatsRef = builder
  .objectRef<ClusterStats & { tenant: TenantId }>('AuditStats')
  .implement({
    description:
      'Counters of the caller’s tenant. The terms of accepted = stored + duplicates + pending + ' +
      'deadLettered + discarded are the tenant’s books: kept with the journal (in Redis, or in the ' +
      'journal file without it) since the tenant’s first event, over every process and instance, ' +
      'so a restart or a lost instance changes nothing and every instance answers the same; with ' +
      'JOURNAL=off and no Redis they count since the instance started. The other counters are ' +
      'summed over the live instances since each started.',
    fields: (t) => ({
      accepted: t.exposeInt('accepted'),
      stored: t.exposeInt('stored'),
      duplicates: t.exposeInt('duplicates'),
      pending: t.exposeInt('pending', {
        description:
          'Accepted and not yet final: in a buffer, a write in flight or backoff on any instance, ' +
          'or in the journal of a process that stopped until another takes it back.',
      }),
      deadLettered: t.exposeInt('deadLettered'),
      parked: t.int({
        description:
          'Events in the tenant’s PARKED dead letters right now (read from the queue, so across ' +
          'instances and restarts; not a term of the identity).',
        resolve: async (s, _args, ctx) =>
          (await ctx.services.deadLetters.list(s.tenant, { state: 'PARKED' })).reduce(
            (n, d) => n + d.records.length,
            0,
          ),
      }),
      discarded: t.exposeInt('discarded', {
        description: 'Dead-lettered events given up on purpose (discardDeadLetter).',
      }),
      replayed: t.exposeInt('replayed', {
        description: 'Events the retry worker stored out of the dead-letter queue.',
      }),
      recovered: t.exposeInt('recovered', {
        description:
          'Events taken back from the journal of a process that stopped without writing them (a ' +
          'crash, kill -9) and written here; also counted in accepted.',
      }),
      conflicts: t.exposeInt('conflicts', {
        description: 'Duplicates whose content differed from the stored event.',
      }),
      expired: t.exposeInt('expired', {
        description: 'Removed by retention; not part of the identity.',
      }),
      batches: t.exposeInt('batches'),
      failedWrites: t.exposeInt('failedWrites', {
        description: 'Batch write attempts that failed (and were retried).',
      }),
      lastError: t.exposeString('lastError', { nullable: true }),
      lastErrorAt: t.expose('lastErrorAt', { type: 'DateTime', nullable: true }),
      identityHolds: t.boolean({ resolve: (s) => identityHolds(s) }),
      fromBooks: t.exposeBoolean('fromBooks', {
        description:
          'True when the identity’s terms are the books’. False when the books could not be read ' +
          '(Redis unreachable): they are then the live instances’ own counters since each started.',
      }),
      instances: t.exposeStringList('instances'),
    }),
  });

builder.queryField('auditStats', (t) =>
  t.field({
    type: AuditStatsRef,
    authScopes: { eventsRead: true },
    resolve: async (_root, _args, ctx) => {
      const tenant = await knownTenant(ctx);
      return { ...(await ctx.services.cluster.stats(tenant)), tenant };
    },
  }),
);
