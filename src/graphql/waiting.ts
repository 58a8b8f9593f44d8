import { LimitExceededError, ValidationError } from '../domain/errors.js';
import type { EventWaitResult } from '../usecases/event-waits.js';
import { checkedCorrelationId, checkedTimeoutMs } from './arguments.js';
import { builder } from './builder.js';
import { recordRead, requireTenant } from './context.js';

/** The most events one wait may ask for: its counts stop there. */
export const WAIT_MAX_COUNT = 100_000;
const WAIT_DEFAULT_TIMEOUT_MS = 10_000;

const EventWaitOutcomeEnum = builder.enumType('EventWaitOutcome', {
  values: {
    STORED: { description: '`count` events of the correlation id are stored.' },
    DEAD_LETTERED: {
      description:
        'They will not all be stored: stored + deadLettered reached `count` with some in the ' +
        'dead-letter queue (`lastError` says why).',
    },
    TIMED_OUT: { description: '`timeoutMs` passed first; the counts say what was there.' },
  } as const,
});

const EventWaitRef = builder.objectRef<EventWaitResult>('EventWait').implement({
  description: 'What a waitForEvents found when it ended.',
  fields: (t) => ({
    outcome: t.field({ type: EventWaitOutcomeEnum, resolve: (r) => r.outcome }),
    done: t.boolean({
      description: 'outcome is STORED.',
      resolve: (r) => r.outcome === 'STORED',
    }),
    count: t.exposeInt('count', { description: 'The count waited for.' }),
    stored: t.exposeInt('stored', {
      description:
        'Events of the correlation id stored (queryable), counted up to `count`, whoever wrote ' +
        'them and whenever — before the wait began included.',
    }),
    deadLettered: t.exposeInt('deadLettered', {
      description: 'Events of the correlation id in the dead-letter queue.',
    }),
    lastError: t.exposeString('lastError', {
      nullable: true,
      description: 'The newest of those dead letters’ last error.',
    }),
    waitedMs: t.exposeInt('waitedMs'),
    message: t.string({
      description:
        'One line for a test’s failure message, e.g. “120 of 150 stored, 30 dead-lettered: …”.',
      resolve: (r) => describeWait(r),
    }),
  }),
});

/** e.g. "timed out after 5000 ms: 120 of 150 stored, 30 dead-lettered: <error>". */
export function describeWait(r: EventWaitResult): string {
  const counts =
    `${r.stored} of ${r.count} stored` +
    (r.deadLettered > 0
      ? `, ${r.deadLettered} dead-lettered${r.lastError ? `: ${r.lastError}` : ''}`
      : '');
  if (r.outcome === 'STORED') return `${counts} (after ${r.waitedMs} ms)`;
  if (r.outcome === 'DEAD_LETTERED') return `not all will be stored: ${counts}`;
  return `timed out after ${r.waitedMs} ms: ${counts}`;
}

builder.queryField('waitForEvents', (t) =>
  t.field({
    type: EventWaitRef,
    description:
      'Answers once `count` events of the correlation id are stored (queryable) — events stored ' +
      'before the call count too — or once they cannot all be (dead letters), or after ' +
      '`timeoutMs` with what was there: one request instead of a subscription, for a test in any ' +
      'language. It does not flush: BUFFERED events are written by the interval, or at once ' +
      'after a flushAudit. Held open like a subscription (MAX_SUBSCRIPTIONS_PER_TENANT).',
    authScopes: { eventsRead: true },
    args: {
      correlationId: t.arg.string({ required: true }),
      count: t.arg.int({ required: true, description: `1 to ${WAIT_MAX_COUNT}.` }),
      timeoutMs: t.arg.int({
        description: `How long to wait at most (default ${WAIT_DEFAULT_TIMEOUT_MS}, capped by FLUSH_MAX_TIMEOUT_MS).`,
      }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = requireTenant(ctx);
      const { config, tenants, subscriptions, useCases } = ctx.services;
      checkedCorrelationId(args.correlationId, 'correlationId');
      if (!Number.isInteger(args.count) || args.count < 1 || args.count > WAIT_MAX_COUNT) {
        throw ValidationError.single('count', `must be between 1 and ${WAIT_MAX_COUNT}`);
      }
      const timeoutMs = checkedTimeoutMs(
        args.timeoutMs,
        WAIT_DEFAULT_TIMEOUT_MS,
        config.flushMaxTimeoutMs,
        'timeoutMs',
      );
      // As for a subscription: with auto-provisioning on, a wait may come before the first write.
      if (!config.tenantAutoProvision) await tenants.ensure(tenant, false);
      const release = subscriptions.acquire(tenant);
      if (!release) {
        throw new LimitExceededError(
          'MAX_SUBSCRIPTIONS_PER_TENANT',
          subscriptions.max,
          'subscriptions (and waits) open for this tenant on this instance',
        );
      }
      try {
        await recordRead(ctx, tenant, 'waitForEvents', {
          correlationId: args.correlationId,
          count: args.count,
        });
        return await useCases.waits.wait(
          tenant,
          { correlationId: args.correlationId, count: args.count, timeoutMs },
          ctx.signal,
        );
      } finally {
        release();
      }
    },
  }),
);
