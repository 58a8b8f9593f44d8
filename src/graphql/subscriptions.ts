import { errorTypeMap, wrapErrorIfMatches } from '@pothos/plugin-errors';
import { watchCredential } from '../auth/caller.js';
import { chainMonth } from '../domain/chain.js';
import { LimitExceededError, ShuttingDownError } from '../domain/errors.js';
import { type AuditEventRecord, recordBytes } from '../domain/event.js';
import { type AuditEventFilter, matchesLiveTail, validateFilter } from '../domain/filter.js';
import { isServiceEventType } from '../domain/service-event.js';
import type { TenantId } from '../domain/tenant.js';
import type { DeadLetterEventKind, FlushTrigger } from '../ingest/events.js';
import type { ChainVerification } from '../integrity/chain-auditor.js';
import type { AuditEventRow } from '../query/audit-event-reader.js';
import {
  type LiveItem,
  SubscriptionInterruptedError,
  SubscriptionReady,
  single,
} from '../realtime/live-subscription.js';
import {
  LiveTail,
  type TailEventAdded,
  TailReady,
  type TailStep,
  tailSteps,
} from '../realtime/live-tail.js';
import {
  type AuditEventsAddedMessage,
  type CorrelationCounts,
  type DeadLetterMessage,
  type FlushCompletedMessage,
  type StoredEventMessage,
  storedEventRecord,
} from '../realtime/topics.js';
import { checkedCorrelationId } from './arguments.js';
import { AuditEvent, AuditEventFilterInput } from './audit-event.js';
import { builder } from './builder.js';
import { type GraphQLContext, recordRead, requireTenant } from './context.js';
import { AuditErrorInterface } from './errors.js';
import { AuditChainVerification, checkVerifyRange } from './integrity.js';

builder.subscriptionType({
  description:
    'Live messages of the caller’s tenant. Every subscription first answers SubscriptionReady ' +
    'once it is registered on the server; act (write, flush) only after that message.',
});

builder.objectType(SubscriptionReady, {
  name: 'SubscriptionReady',
  description:
    'The first message of every subscription: it is registered, and every message published from ' +
    'now on, by any instance, will be delivered.',
  isTypeOf: (v) => v instanceof SubscriptionReady,
  fields: (t) => ({
    instanceId: t.exposeString('instanceId', {
      description: 'The instance holding this subscription.',
    }),
    subscribedAt: t.expose('subscribedAt', { type: 'DateTime' }),
    startCursor: t.string({
      nullable: true,
      description:
        'auditEventsAdded only: the position the tail starts from. Resume from it (`after`) when ' +
        'the tail ends before its first event; null for the other subscriptions. (Not named ' +
        '`cursor`: a selection of both on the union would conflict, String against String!.)',
      resolve: (r, _args, ctx) =>
        r instanceof TailReady
          ? ctx.services.queries.tailCursor(requireTenant(ctx), r.position)
          : null,
    }),
  }),
});

const InterruptReasonEnum = builder.enumType('SubscriptionInterruptReason', {
  values: {
    SHUTTING_DOWN: { description: 'The instance is stopping.' },
    SLOW_CONSUMER: {
      description: 'The subscriber read too slowly; the server would have had to drop messages.',
    },
    OVERLOADED: {
      description:
        'The messages queued for all subscribers of the instance reached their bound ' +
        '(SUBSCRIPTION_QUEUE_MAX_BYTES) and this subscription held the most; what it had queued ' +
        'was dropped.',
    },
    FANOUT_LOST: { description: 'The connection to Redis (fan-out across instances) dropped.' },
    FANOUT_UNAVAILABLE: { description: 'Redis did not confirm the subscription.' },
    UNAUTHENTICATED: {
      description: 'The API key the subscription was opened with was revoked or expired.',
    },
  } as const,
});

builder.objectType(SubscriptionInterruptedError, {
  name: 'SubscriptionInterruptedError',
  description:
    'The server ended the subscription rather than let it miss messages; it is the last message. ' +
    'Resubscribe (auditEventsAdded: with `after` the last cursor you received).',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof SubscriptionInterruptedError,
  fields: (t) => ({ reason: t.field({ type: InterruptReasonEnum, resolve: (e) => e.reason }) }),
});

/**
 * What every subscription may answer besides its own messages: its last one, when the server
 * ends it. A subscription refused when it is opened (who is calling, its arguments, a limit)
 * is not a message: it is refused as a whole, as a GraphQL error (a graphql-ws `error`
 * message; an SSE request's 4xx), like every other request.
 */
const SUBSCRIPTION_ERRORS = [SubscriptionInterruptedError] as const;

/** The GraphQL type name of a ready marker or an error; `payload` for anything else. */
function typeOf(value: unknown, payload: string): string {
  if (value instanceof SubscriptionReady) return 'SubscriptionReady';
  // Errors arrive wrapped by the errors plugin (see `resolveMessage`); classes and types share names.
  const errorType = typeof value === 'object' && value !== null && errorTypeMap.get(value);
  return errorType ? errorType.name : payload;
}

/**
 * Each message as the field's value. graphql-js treats a value that is an Error as a field error,
 * so a typed error is wrapped the way the errors plugin wraps them for every other field.
 */
function resolveMessage<T>(item: T): T {
  return wrapErrorIfMatches(item, [...SUBSCRIPTION_ERRORS]) as T;
}

const FlushTriggerEnum = builder.enumType('FlushTrigger', {
  values: {
    SIZE: { description: 'The buffer held a full batch (BATCH_SIZE).' },
    INTERVAL: { description: 'FLUSH_INTERVAL_MS passed.' },
    FLUSH: { description: 'flushAudit asked for it.' },
    COMMIT_WAIT: { description: 'A COMMITTED call was waiting (after COMMIT_LINGER_MS).' },
    SHUTDOWN: { description: 'The instance was stopping.' },
    RETRY: { description: 'A retry of a batch that failed before.' },
  } as const,
});

const TRIGGERS: Record<FlushTrigger, typeof FlushTriggerEnum.$inferType> = {
  size: 'SIZE',
  interval: 'INTERVAL',
  flush: 'FLUSH',
  'commit-wait': 'COMMIT_WAIT',
  shutdown: 'SHUTDOWN',
  retry: 'RETRY',
};

const CorrelationCountsRef = builder.objectRef<CorrelationCounts>('CorrelationCounts').implement({
  description: 'What became of the events of one correlation id in one batch.',
  fields: (t) => ({
    correlationId: t.exposeString('correlationId'),
    stored: t.exposeInt('stored'),
    duplicates: t.exposeInt('duplicates'),
    deadLettered: t.exposeInt('deadLettered'),
  }),
});

const sum = (m: FlushCompletedMessage, key: 'stored' | 'duplicates' | 'deadLettered') =>
  m.correlations.reduce((n, c) => n + c[key], 0);

const FlushCompletedRef = builder.objectRef<FlushCompletedMessage>('FlushCompleted').implement({
  description:
    'A batch reached a final status for each of its events. Summing stored + duplicates + ' +
    'deadLettered of your correlation id over these messages tells when all your events settled.',
  fields: (t) => ({
    batchId: t.exposeString('batchId'),
    trigger: t.field({
      type: FlushTriggerEnum,
      resolve: (m) => TRIGGERS[m.trigger],
    }),
    attempts: t.exposeInt('attempts', { description: 'Write attempts this batch took.' }),
    correlations: t.field({
      type: [CorrelationCountsRef],
      description: 'Per correlation id (only the filtered one, with a filter).',
      resolve: (m) => m.correlations,
    }),
    stored: t.int({ description: 'Sum over `correlations`.', resolve: (m) => sum(m, 'stored') }),
    duplicates: t.int({
      description: 'Sum over `correlations`.',
      resolve: (m) => sum(m, 'duplicates'),
    }),
    deadLettered: t.int({
      description: 'Sum over `correlations`.',
      resolve: (m) => sum(m, 'deadLettered'),
    }),
    committedAt: t.field({ type: 'DateTime', resolve: (m) => new Date(m.committedAt) }),
    durationMs: t.float({ resolve: (m) => Math.round(m.durationMs * 1000) / 1000 }),
    instanceId: t.exposeString('instanceId', { description: 'The instance that wrote it.' }),
    recovered: t.exposeBoolean('recovered', {
      description:
        'True for events written out of the dead-letter queue: they were reported before as ' +
        'deadLettered, so do not count them again when waiting for your events to settle.',
    }),
  }),
});

const FlushCompletedMessageUnion = builder.unionType('FlushCompletedMessage', {
  types: [SubscriptionReady, FlushCompletedRef, ...SUBSCRIPTION_ERRORS],
  resolveType: (v) => typeOf(v, 'FlushCompleted'),
});

const FlushCompletedFilter = builder.inputType('FlushCompletedFilter', {
  fields: (t) => ({
    correlationId: t.string({
      description: 'Only batches holding events of this correlation id, and only its counts.',
    }),
  }),
});

const DeadLetterEventKindEnum = builder.enumType('DeadLetterEventKind', {
  values: {
    ENQUEUED: { description: 'A batch could not be written and entered the dead-letter queue.' },
    RETRIED: { description: 'A replay attempt failed; it stays queued.' },
    RECOVERED: { description: 'A replay stored it.' },
    PARKED: { description: 'The last attempt failed; it waits for a person.' },
    REPLAYED: { description: 'replayDeadLetters sent it back to the writer.' },
    DISCARDED: { description: 'discardDeadLetter removed it (counted as discarded).' },
  } as const,
});

const DeadLetterEventRef = builder.objectRef<DeadLetterMessage>('DeadLetterEvent').implement({
  description: 'A step in the life of a dead letter.',
  fields: (t) => ({
    kind: t.field({
      type: DeadLetterEventKindEnum,
      resolve: (m): DeadLetterEventKind => m.kind,
    }),
    deadLetterId: t.exposeString('deadLetterId'),
    events: t.exposeInt('events', { description: 'Events in the dead letter.' }),
    attempts: t.exposeInt('attempts'),
    error: t.exposeString('error', { nullable: true }),
    at: t.field({ type: 'DateTime', resolve: (m) => new Date(m.at) }),
    instanceId: t.exposeString('instanceId'),
  }),
});

const DeadLetterEventMessageUnion = builder.unionType('DeadLetterEventMessage', {
  types: [SubscriptionReady, DeadLetterEventRef, ...SUBSCRIPTION_ERRORS],
  resolveType: (v) => typeOf(v, 'DeadLetterEvent'),
});

const AuditEventAddedRef = builder.objectRef<TailEventAdded>('AuditEventAdded').implement({
  description:
    'An event the live tail delivers, and the cursor to resume the tail from after it ' +
    '(`auditEventsAdded(after:)`).',
  fields: (t) => ({
    cursor: t.string({
      description:
        'Opaque and signed. Everything up to this event that matches the filter was delivered.',
      resolve: (e, _args, ctx) => ctx.services.queries.tailCursor(requireTenant(ctx), e.position),
    }),
    node: t.field({ type: AuditEvent, resolve: (e) => e.row }),
  }),
});

const AuditEventsAddedMessageUnion = builder.unionType('AuditEventsAddedMessage', {
  types: [SubscriptionReady, AuditEventAddedRef, ...SUBSCRIPTION_ERRORS],
  resolveType: (v) => typeOf(v, 'AuditEventAdded'),
});

/**
 * Checks the caller (the tenant from the request or connection, then the field's own arguments)
 * and only then opens the stream. A refusal is thrown before the stream exists, so that the
 * subscription is refused as a whole (see SUBSCRIPTION_ERRORS).
 */
async function open<A, T>(
  ctx: GraphQLContext,
  field: string,
  check: () => A,
  start: (
    tenant: TenantId,
    checked: A,
  ) => AsyncIterable<LiveItem<T>> | Promise<AsyncIterable<LiveItem<T>>>,
  read?: (checked: A) => Record<string, unknown>,
): Promise<AsyncIterable<LiveItem<T>>> {
  let release: (() => void) | undefined;
  let slot: (() => void) | undefined;
  try {
    const tenant = requireTenant(ctx);
    const checked = check();
    // A subscription creates nothing; with auto-provisioning on, a tenant's first subscriber may
    // come before its first write (that is how a test waits for its own events).
    const { config, tenants, connections, subscriptions } = ctx.services;
    if (!config.tenantAutoProvision) await tenants.ensure(tenant, false);
    // Before anything is recorded: a refused subscription costs no access record.
    slot = subscriptions.acquire(tenant) ?? undefined;
    if (!slot) {
      throw new LimitExceededError(
        'MAX_SUBSCRIPTIONS_PER_TENANT',
        subscriptions.max,
        'subscriptions open for this tenant on this instance',
      );
    }
    // A WebSocket counts once, when it connects (http/websocket.ts); an SSE stream is a connection itself.
    if (ctx.transport === 'http') {
      release = connections.acquire(tenant) ?? undefined;
      if (!release) {
        throw new LimitExceededError(
          'MAX_CONNECTIONS_PER_TENANT',
          connections.max,
          'subscription connections open for this tenant',
        );
      }
    }
    // A start that may refuse (the tail's replay bound) refuses before an access record too.
    const stream = await start(tenant, checked);
    try {
      if (read) await recordRead(ctx, tenant, field, read(checked));
    } catch (err) {
      await stream[Symbol.asyncIterator]().return?.();
      throw err;
    }
    ctx.log.debug({ tenant, field, requestId: ctx.requestId }, 'subscription opened');
    const held = [release, slot];
    return guarded(ctx, stream, () => {
      for (const free of held) free?.();
    });
  } catch (err) {
    release?.();
    slot?.();
    if (err instanceof ShuttingDownError) {
      return single(new SubscriptionInterruptedError('SHUTTING_DOWN'));
    }
    throw err;
  }
}

/**
 * The stream, ended early when the caller's key is revoked or expires — its last message is
 * then SubscriptionInterruptedError UNAUTHENTICATED — and with `release` called however it ends.
 *
 * A `next()` waiting for a message is answered by the revocation directly, not raced against a
 * promise that lives as long as the stream: every `.then()` on such a promise stays attached to
 * it (with the promises and closures it made) until it settles, so each message delivered would
 * leave a few hundred bytes behind for the subscription's whole life.
 */
function guarded<T>(
  ctx: GraphQLContext,
  source: AsyncIterable<T>,
  release: (() => void) | undefined,
): AsyncIterableIterator<T | SubscriptionInterruptedError> {
  type Step = IteratorResult<T | SubscriptionInterruptedError>;
  const it = source[Symbol.asyncIterator]();
  const caller = ctx.caller;
  let revoked: SubscriptionInterruptedError | undefined;
  let finished = false;
  const done = { value: undefined, done: true } as const;
  /** The `next()` calls waiting on `it`: told of a revocation at once. */
  const waiting = new Set<(step: Step) => void>();
  let unwatch: (() => void) | undefined;
  const finish = () => {
    if (finished) return;
    finished = true;
    unwatch?.();
    release?.();
    void it.return?.();
  };
  unwatch = watchCredential(caller, ctx.services.keyWatcher, (err) => {
    const last = new SubscriptionInterruptedError('UNAUTHENTICATED', err.message);
    revoked = last;
    if (waiting.size === 0) return; // the next `next()` answers it
    const waiters = [...waiting];
    waiting.clear();
    finish();
    const [first, ...rest] = waiters;
    first?.({ value: last, done: false });
    for (const answer of rest) answer(done);
  });
  return {
    next(): Promise<Step> {
      if (finished) return Promise.resolve(done);
      if (revoked) {
        const err = revoked;
        finish();
        return Promise.resolve({ value: err, done: false });
      }
      return new Promise<Step>((resolve, reject) => {
        let answered = false;
        const answer = (step: Step) => {
          if (answered) return;
          answered = true;
          waiting.delete(answer);
          resolve(step);
        };
        waiting.add(answer);
        it.next().then(
          (r) => {
            if (answered) return; // the revocation answered this call already
            if (revoked) {
              const err = revoked;
              finish();
              answer({ value: err, done: false });
              return;
            }
            if (r.done) finish();
            answer(r);
          },
          (err: unknown) => {
            if (answered) return;
            answered = true;
            waiting.delete(answer);
            reject(err);
          },
        );
      });
    },
    async return(): Promise<Step> {
      finish();
      return done;
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

builder.subscriptionField('flushCompleted', (t) =>
  t.field({
    type: FlushCompletedMessageUnion,
    description:
      'One message per batch settled on any instance (with a filter: per batch holding that ' +
      'correlation id, with only its counts). First message: SubscriptionReady.',
    args: { filter: t.arg({ type: FlushCompletedFilter }) },
    authScopes: { eventsRead: true },
    subscribe: (_root, args, ctx) =>
      open(
        ctx,
        'flushCompleted',
        () => checkedCorrelationId(args.filter?.correlationId, 'filter.correlationId'),
        (tenant, correlationId) =>
          ctx.services.realtime.subscribe(tenant, 'flushCompleted', (m) => {
            if (correlationId === null) return [m];
            const mine = m.correlations.find((c) => c.correlationId === correlationId);
            return mine ? [{ ...m, correlations: [mine] }] : [];
          }),
      ),
    resolve: resolveMessage,
  }),
);

builder.subscriptionField('deadLetterEvents', (t) =>
  t.field({
    type: DeadLetterEventMessageUnion,
    description:
      'Every step of every dead letter of the tenant, on any instance. First message: SubscriptionReady.',
    authScopes: { deadlettersAdmin: true },
    subscribe: (_root, _args, ctx) =>
      open(
        ctx,
        'deadLetterEvents',
        () => null,
        (tenant) => ctx.services.realtime.subscribe(tenant, 'deadLetterEvents', (m) => [m]),
      ),
    resolve: resolveMessage,
  }),
);

/** A stored event in the shape `AuditEvent` resolves from (a row). */
function eventRow(
  record: AuditEventRecord,
  batchId: string,
  chainSeq: number | null,
): AuditEventRow {
  const { dataJson, ...rest } = record;
  return {
    ...rest,
    data: dataJson === null ? null : (JSON.parse(dataJson) as Record<string, unknown>),
    batchId,
    chainSeq,
    // The live tail carries events and their positions, not their hashes: `auditEvent(id)` does.
    prevHash: null,
    hash: null,
  };
}

interface LiveEvent {
  record: AuditEventRecord;
  row: AuditEventRow;
  month: number;
  seq: number | null;
  service: boolean;
}

/**
 * The events of a message, revived (dates, parsed data, the row the resolvers read) once for all
 * of this instance's subscribers: the bus hands each of them the same message object, so the
 * work per subscriber is its filter. Rows are shared, and never changed by resolvers.
 */
const revived = new WeakMap<AuditEventsAddedMessage, LiveEvent[]>();
/** Bytes a row holds while queued for a subscriber (SUBSCRIPTION_QUEUE_MAX_BYTES). */
const rowBytes = new WeakMap<AuditEventRow, number>();

function liveEvents(m: AuditEventsAddedMessage): LiveEvent[] {
  let events = revived.get(m);
  if (!events) {
    events = m.events.map((e: StoredEventMessage) => {
      const { chainSeq, ...stored } = e;
      const record = storedEventRecord(stored);
      const seq = chainSeq ?? null;
      const row = eventRow(record, m.batchId, seq);
      rowBytes.set(row, recordBytes(record));
      const month = chainMonth(record.occurredAt).getTime();
      return { record, row, month, seq, service: isServiceEventType(record.eventType) };
    });
    revived.set(m, events);
  }
  return events;
}

/**
 * A live message for one subscriber, as steps of its tail: the events its filter takes, and the
 * positions of the others (which move the tail all the same). The service's own records are
 * tried only when the filter names a type of theirs (see matchesLiveTail): a batch of access
 * records then costs a subscriber no filter work.
 */
function liveSteps(
  m: AuditEventsAddedMessage,
  filter: AuditEventFilter,
  namesServiceTypes: boolean,
): TailStep[] {
  return tailSteps(
    liveEvents(m),
    (e) => (!e.service || namesServiceTypes) && matchesLiveTail(e.record, filter, e.row.data),
  );
}

builder.subscriptionField('auditEventsAdded', (t) =>
  t.field({
    type: AuditEventsAddedMessageUnion,
    description:
      'Live tail: each event matching the filter once it is committed (STORED; duplicates are ' +
      'not repeated), from any instance, once each, in commit order within each month. With ' +
      '`after` (a cursor of a message of this field), first every event stored after it, then ' +
      'live ones, with nothing missed or repeated at the seam; without, from when it is opened. ' +
      'A replay of more than TAIL_REPLAY_MAX_EVENTS positions is refused (REPLAY_TOO_LARGE): ' +
      'page with auditEvents instead. The service’s own records (event types `auditgraph.*`, ' +
      'such as the access records reads produce) only when `filter.eventTypes` names them. ' +
      'First message: SubscriptionReady, whose `startCursor` is where the tail starts.',
    args: {
      filter: t.arg({ type: AuditEventFilterInput }),
      after: t.arg.string({
        description:
          'Resume after this cursor: of an AuditEventAdded, or of the SubscriptionReady when no ' +
          'event came.',
      }),
    },
    authScopes: { eventsRead: true },
    subscribe: (_root, args, ctx) =>
      open(
        ctx,
        'auditEventsAdded',
        () => {
          const filter = validateFilter(args.filter as AuditEventFilter | null);
          const after =
            args.after == null
              ? null
              : ctx.services.queries.tailPosition(requireTenant(ctx), args.after);
          return { filter, after };
        },
        async (tenant, { filter, after }) => {
          const { queries, config, realtime } = ctx.services;
          // Read before the subscription is registered: whatever commits from here on is either
          // in the replay or live.
          const start = await queries.tailStart(tenant, after, config.tailReplayMaxEvents);
          const namesServiceTypes = filter.eventTypes?.some(isServiceEventType) ?? false;
          const live = realtime.subscribe(
            tenant,
            'auditEventsAdded',
            (m) => liveSteps(m, filter, namesServiceTypes),
            (step) => (step.row ? (rowBytes.get(step.row) ?? 0) : 0),
          );
          return new LiveTail(live, queries.tailStore(tenant, filter), start);
        },
        ({ filter, after }) => ({ filter, ...(after ? { resumed: true } : {}) }),
      ),
    resolve: resolveMessage,
  }),
);

/** One message of a running verification: how far it is, and at the end its result. */
interface VerificationProgress {
  month: Date;
  monthIndex: number;
  months: number;
  eventsVerified: number;
  elapsedMs: number;
  result: (ChainVerification & { elapsedMs: number }) | null;
}

const VerificationProgressRef = builder
  .objectRef<VerificationProgress>('AuditChainVerificationProgress')
  .implement({
    description: 'Progress of a chain verification; the last message carries the result.',
    fields: (t) => ({
      month: t.expose('month', { type: 'DateTime', description: 'The month being walked.' }),
      monthIndex: t.exposeInt('monthIndex', { description: '0-based, of `months`.' }),
      months: t.exposeInt('months'),
      eventsVerified: t.exposeInt('eventsVerified'),
      elapsedMs: t.exposeInt('elapsedMs'),
      done: t.boolean({ resolve: (p) => p.result !== null }),
      result: t.field({ type: AuditChainVerification, nullable: true, resolve: (p) => p.result }),
    }),
  });

const VerificationMessageUnion = builder.unionType('AuditChainVerificationMessage', {
  types: [SubscriptionReady, VerificationProgressRef, ...SUBSCRIPTION_ERRORS],
  resolveType: (v) => typeOf(v, 'AuditChainVerificationProgress'),
});

/** Progress messages at most this often (the last one, with the result, always). */
const PROGRESS_EVERY_MS = 250;

/**
 * A verification as a stream: its progress and, last, its result. The run starts here, before
 * the stream exists, so that a refusal (MAX_VERIFICATIONS_PER_TENANT: LimitExceededError) is
 * thrown and refuses the subscription as a whole. Completing the subscription (graphql-ws
 * `complete`, a closed socket or SSE stream) aborts the run at once — an async generator would
 * only notice at its next yield, and a slow window can take a while — and so frees the tenant's
 * verification slot.
 */
function verification(
  ctx: GraphQLContext,
  tenant: TenantId,
  from: Date,
  to: Date,
): AsyncIterableIterator<LiveItem<VerificationProgress>> {
  const abort = new AbortController();
  const signal = ctx.signal ? AbortSignal.any([abort.signal, ctx.signal]) : abort.signal;
  const started = Date.now();
  const progress = new ProgressQueue(started);
  const run = ctx.services.chainAuditor.verify(tenant, from, to, {
    signal,
    onProgress: (p) => progress.offer(p),
  });
  const steps = verificationSteps(ctx, run, progress, from, started, signal);
  return {
    next: () => steps.next(),
    return: (value?: unknown) => {
      abort.abort(new Error('the subscriber went away'));
      return steps.return(value as undefined);
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

/** Progress reports of a running verification, at most one per PROGRESS_EVERY_MS, and a waiter. */
class ProgressQueue {
  private readonly queue: VerificationProgress[] = [];
  private lastSent = 0;
  private wake: (() => void) | undefined;
  constructor(private readonly started: number) {}
  offer(p: Omit<VerificationProgress, 'elapsedMs' | 'result'>): void {
    const now = Date.now();
    if (now - this.lastSent < PROGRESS_EVERY_MS) return;
    this.lastSent = now;
    this.queue.push({ ...p, elapsedMs: now - this.started, result: null });
    this.notify();
  }
  take(): VerificationProgress | undefined {
    return this.queue.shift();
  }
  notify(): void {
    this.wake?.();
  }
  waitForMore(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = resolve;
    });
  }
}

async function* verificationSteps(
  ctx: GraphQLContext,
  run: Promise<ChainVerification>,
  progress: ProgressQueue,
  from: Date,
  started: number,
  signal: AbortSignal,
): AsyncGenerator<LiveItem<VerificationProgress>, void, undefined> {
  let settled = false;
  const settle = () => {
    settled = true;
    progress.notify();
  };
  void run.then(settle, settle);
  yield new SubscriptionReady(ctx.services.instanceId, new Date());
  for (;;) {
    const next = progress.take();
    if (next) {
      yield next;
      continue;
    }
    if (settled) break;
    await progress.waitForMore();
  }
  let result: ChainVerification;
  try {
    result = await run;
  } catch (err) {
    // Stopped because the subscriber left: nobody is there to tell.
    if (signal.aborted) return;
    throw err;
  }
  const last = result.months.at(-1);
  const elapsedMs = Date.now() - started;
  yield {
    month: last?.month ?? from,
    monthIndex: Math.max(0, result.months.length - 1),
    months: result.months.length,
    eventsVerified: result.eventsVerified,
    elapsedMs,
    result: { ...result, elapsedMs },
  };
}

builder.subscriptionField('auditChainVerification', (t) =>
  t.field({
    type: VerificationMessageUnion,
    description:
      'verifyAuditChain as a stream, for long ranges: SubscriptionReady, progress messages (at ' +
      'most every 250 ms) and, last, one with `done: true` and the result; then it ends. Over ' +
      'MAX_VERIFICATIONS_PER_TENANT it is refused (LIMIT_EXCEEDED); completing it stops the run.',
    args: {
      from: t.arg({ type: 'DateTime', required: true }),
      to: t.arg({ type: 'DateTime', required: true }),
    },
    authScopes: { eventsRead: true },
    subscribe: (_root, { from, to }, ctx) =>
      open(
        ctx,
        'auditChainVerification',
        () => checkVerifyRange(from, to),
        (tenant) => verification(ctx, tenant, from, to),
      ),
    resolve: resolveMessage,
  }),
);
