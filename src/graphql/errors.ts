import {
  AuditError,
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  JournalUnavailableError,
  RateLimitedError,
  ShuttingDownError,
  ValidationError,
  type ValidationIssue,
} from '../domain/errors.js';
import { builder } from './builder.js';

/**
 * Every typed outcome of a mutation's result (and a subscription's interruption) implements
 * this: a message, and whether retrying can succeed. Refusals of the request itself are GraphQL
 * errors instead (error-mapping.ts).
 */
export const AuditErrorInterface = builder.interfaceRef<AuditError>('AuditError').implement({
  description:
    'An expected failure. `retryable` alone says whether the same request may succeed later.',
  fields: (t) => ({
    code: t.exposeString('code', {
      description: 'The machine-readable code, as in GraphQL errors’ extensions.code.',
    }),
    message: t.exposeString('message'),
    retryable: t.exposeBoolean('retryable'),
  }),
});

const ValidationIssueRef = builder.objectRef<ValidationIssue>('ValidationIssue').implement({
  fields: (t) => ({
    index: t.exposeInt('index', {
      nullable: true,
      description: 'Index of the event in the call, if any.',
    }),
    field: t.exposeString('field', { description: 'Dotted path of the field.' }),
    message: t.exposeString('message'),
  }),
});

builder.objectType(ValidationError, {
  name: 'ValidationError',
  description: 'The input broke a rule; nothing was accepted. Every problem is listed.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof ValidationError,
  fields: (t) => ({ issues: t.field({ type: [ValidationIssueRef], resolve: (e) => e.issues }) }),
});

builder.objectType(BackpressureError, {
  name: 'BackpressureError',
  description: 'The buffers are full; nothing from this call was accepted.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof BackpressureError,
  fields: (t) => ({
    retryAfterMs: t.exposeInt('retryAfterMs'),
    limit: t.exposeString('limit', { description: 'The setting that was reached.' }),
  }),
});

builder.objectType(RateLimitedError, {
  name: 'RateLimitedError',
  description: 'The tenant’s write rate was reached; nothing from this call was accepted.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof RateLimitedError,
  fields: (t) => ({
    retryAfterMs: t.exposeInt('retryAfterMs'),
    limit: t.exposeString('limit', { description: 'The setting that was reached.' }),
  }),
});

builder.objectType(JournalUnavailableError, {
  name: 'JournalUnavailableError',
  description:
    'A BUFFERED call could not be written to the write-ahead journal (Redis unreachable, the ' +
    'disk full); nothing from it was accepted. COMMITTED calls are still taken.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof JournalUnavailableError,
  fields: (t) => ({
    retryAfterMs: t.exposeInt('retryAfterMs'),
    reason: t.exposeString('reason', { description: 'Why the journal refused the call.' }),
  }),
});

builder.objectType(ShuttingDownError, {
  name: 'ShuttingDownError',
  description: 'The instance is stopping; nothing from this call was accepted.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof ShuttingDownError,
  fields: () => ({}),
});

builder.objectType(FlushTimeoutError, {
  name: 'FlushTimeoutError',
  description:
    'Not everything accepted before the flush was settled in time; nothing is lost, it is still pending.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof FlushTimeoutError,
  fields: (t) => ({
    timeoutMs: t.exposeInt('timeoutMs'),
    pending: t.exposeInt('pending', {
      description: 'Events still pending on the instances that answered.',
    }),
    lastError: t.exposeString('lastError', {
      nullable: true,
      description: 'Why, per instance where known.',
    }),
    unresponsive: t.exposeStringList('unresponsive', {
      description:
        'Instances that did not answer in time; what they hold is not counted in pending.',
    }),
  }),
});

export { AuditError, CommitTimeoutError };
