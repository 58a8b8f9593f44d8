import { ValidationError } from '../domain/errors.js';
import { isLowerUuid } from '../domain/uuid.js';
import type { DeadLetter } from '../ingest/dead-letter-queue.js';
import { discardReason } from '../usecases/dead-letter-admin.js';
import { requireScope } from './auth.js';
import { builder } from './builder.js';
import { actorOf, requireTenant } from './context.js';
import { ownIdOf } from './node-ids.js';

const DeadLetterStateEnum = builder.enumType('DeadLetterState', {
  values: {
    ACTIVE: { description: 'Replayed by the retry worker on its schedule.' },
    PARKED: { description: 'Its replays are used up; kept until replayed or discarded by hand.' },
  } as const,
});

const DeadLetterEventRef = builder
  .objectRef<DeadLetter['records'][number]>('DeadLetteredEvent')
  .implement({
    description: 'An event held in the dead-letter queue (the main fields; the rest is kept too).',
    fields: (t) => ({
      eventId: t.exposeString('id', { description: 'The event’s UUID.' }),
      occurredAt: t.expose('occurredAt', { type: 'DateTime' }),
      eventType: t.exposeString('eventType'),
      correlationId: t.exposeString('correlationId'),
    }),
  });

const DeadLetterRef = builder.node(builder.objectRef<DeadLetter>('DeadLetter'), {
  description: 'Events that could not be stored, with why and how often they were tried.',
  id: { resolve: (d) => d.id },
  loadOne: async (id, ctx) => {
    requireScope(ctx, 'deadlettersAdmin');
    return isLowerUuid(id) ? ctx.services.deadLetters.get(requireTenant(ctx), id) : null;
  },
  fields: (t) => ({
    deadLetterId: t.exposeString('id', { description: 'The dead letter’s own id (a UUID).' }),
    state: t.field({ type: DeadLetterStateEnum, resolve: (d) => d.state }),
    errorCode: t.exposeString('errorCode', {
      nullable: true,
      description: 'SQLSTATE of the last failure.',
    }),
    error: t.exposeString('error', { description: 'The last failure, sanitised.' }),
    attempts: t.exposeInt('attempts'),
    replays: t.int({ resolve: (d) => d.replays ?? 0 }),
    firstFailedAt: t.expose('firstFailedAt', { type: 'DateTime' }),
    lastFailedAt: t.expose('lastFailedAt', { type: 'DateTime' }),
    nextAttemptAt: t.expose('nextAttemptAt', { type: 'DateTime', nullable: true }),
    eventCount: t.int({ resolve: (d) => d.records.length }),
    events: t.field({ type: [DeadLetterEventRef], resolve: (d) => d.records }),
  }),
});

const DeadLetterFilter = builder.inputType('DeadLetterFilter', {
  fields: (t) => ({
    state: t.field({ type: DeadLetterStateEnum }),
    errorCode: t.string({ description: 'SQLSTATE, e.g. 22P02.' }),
  }),
});

builder.queryField('deadLetters', (t) =>
  t.connection(
    {
      type: DeadLetterRef,
      description:
        'The caller’s dead letters, oldest first (forward only: first/after; 50 by default, at most 500).',
      authScopes: { deadlettersAdmin: true },
      args: {
        filter: t.arg({ type: DeadLetterFilter }),
      },
      resolve: async (_root, args, ctx) => {
        const tenant = requireTenant(ctx);
        const first = args.first ?? 50;
        if (first < 1 || first > 500)
          throw ValidationError.single('first', 'must be between 1 and 500');
        if (args.last != null || args.before != null) {
          throw ValidationError.single('last', 'dead letters page forward only (first/after)');
        }
        if (args.filter?.errorCode && !/^[0-9A-Z]{5}$/.test(args.filter.errorCode)) {
          throw ValidationError.single('filter.errorCode', 'must be a SQLSTATE (5 characters)');
        }
        const all = await ctx.services.deadLetters.list(tenant, {
          state: args.filter?.state ?? null,
          errorCode: args.filter?.errorCode ?? null,
        });
        let start = 0;
        if (args.after) {
          const at = all.findIndex((d) => d.id === args.after);
          if (at < 0)
            throw ValidationError.single(
              'after',
              'no such dead letter (it may have been replayed)',
            );
          start = at + 1;
        }
        const page = all.slice(start, start + first);
        return {
          edges: page.map((node) => ({ cursor: node.id, node })),
          pageInfo: {
            hasNextPage: start + first < all.length,
            hasPreviousPage: start > 0,
            startCursor: page[0]?.id ?? null,
            endCursor: page.at(-1)?.id ?? null,
          },
          totalCount: all.length,
        };
      },
    },
    {
      name: 'DeadLetterConnection',
      fields: (c) => ({
        totalCount: c.int({
          description: 'Dead letters matching the filter.',
          resolve: (p) => (p as unknown as { totalCount: number }).totalCount,
        }),
      }),
    },
    { name: 'DeadLetterEdge' },
  ),
);

const ReplayDeadLettersInput = builder.inputType('ReplayDeadLettersInput', {
  fields: (t) => ({
    ids: t.idList({
      description: 'Parked dead letters to replay (at most 1000): their `id` or `deadLetterId`.',
    }),
    all: t.boolean({ description: 'Replay every parked dead letter of the tenant.' }),
  }),
});

const ReplayPayload = builder
  .objectRef<{ replayed: DeadLetter[]; notFound: string[] }>('ReplayDeadLettersPayload')
  .implement({
    description: 'The dead letters are ACTIVE again and due now; the retry worker writes them.',
    fields: (t) => ({
      replayed: t.field({ type: [DeadLetterRef], resolve: (p) => p.replayed }),
      notFound: t.exposeStringList('notFound', {
        description: 'Ids that are not parked dead letters of this tenant.',
      }),
    }),
  });

builder.mutationField('replayDeadLetters', (t) =>
  t.field({
    type: ReplayPayload,
    errors: { types: [ValidationError], union: { name: 'ReplayDeadLettersResult' } },
    authScopes: { deadlettersAdmin: true },
    args: { input: t.arg({ type: ReplayDeadLettersInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      if (!input.all === !input.ids)
        throw ValidationError.single('input', 'give either ids or all: true');
      const ids = input.all
        ? null
        : (input.ids ?? []).map((id) => ownIdOf(String(id), 'DeadLetter', 'input.ids'));
      return ctx.services.useCases.deadLetters.replay(actorOf(ctx), tenant, ids, ctx.requestId);
    },
  }),
);

const DiscardDeadLetterInput = builder.inputType('DiscardDeadLetterInput', {
  fields: (t) => ({
    id: t.id({ required: true, description: 'The dead letter’s `id` or `deadLetterId`.' }),
    reason: t.string({
      required: true,
      description: 'Why these events are given up (1–1000 characters); logged.',
    }),
  }),
});

builder.mutationField('discardDeadLetter', (t) =>
  t.field({
    type: DeadLetterRef,
    description:
      'Gives up a PARKED dead letter for good. Counted in auditStats.discarded and logged with the reason — never silent.',
    errors: { types: [ValidationError], union: { name: 'DiscardDeadLetterResult' } },
    authScopes: { deadlettersAdmin: true },
    args: { input: t.arg({ type: DiscardDeadLetterInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const tenant = requireTenant(ctx);
      // The reason is judged before the id, as the errors of this field always have been.
      const reason = discardReason(input.reason);
      const dl = await ctx.services.useCases.deadLetters.discard(
        actorOf(ctx),
        tenant,
        ownIdOf(String(input.id), 'DeadLetter', 'input.id'),
        reason,
        ctx.requestId,
      );
      if (!dl) throw ValidationError.single('input.id', 'no parked dead letter with this id');
      return dl;
    },
  }),
);
