import {
  AuditError,
  BackpressureError,
  CommitTimeoutError,
  FlushTimeoutError,
  ForbiddenError,
  InvalidCursorError,
  LimitExceededError,
  RateLimitedError,
  ShuttingDownError,
  UnauthenticatedError,
  UnknownTenantError,
  ValidationError,
  type ValidationIssue,
} from '../domain/errors.js';
import { builder } from './builder.js';

/** Every expected failure implements this: a message, and whether retrying can succeed. */
export const AuditErrorInterface = builder.interfaceRef<AuditError>('AuditError').implement({
  description:
    'An expected failure. `retryable` alone says whether the same request may succeed later.',
  fields: (t) => ({
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

builder.objectType(UnauthenticatedError, {
  name: 'UnauthenticatedError',
  description:
    'The request does not say who it is: no API key, or one that is unknown, revoked or expired ' +
    '(AUTH_MODE=dev: no tenant).',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof UnauthenticatedError,
  fields: () => ({}),
});

builder.objectType(ForbiddenError, {
  name: 'ForbiddenError',
  description:
    'The caller is known but may not do this: its key lacks the scope, or the request tried to ' +
    'choose its tenant.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof ForbiddenError,
  fields: () => ({}),
});

builder.objectType(LimitExceededError, {
  name: 'LimitExceededError',
  description: 'A configured limit was reached; `limit` names the setting.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof LimitExceededError,
  fields: (t) => ({
    limit: t.exposeString('limit'),
    max: t.exposeInt('max'),
  }),
});

builder.objectType(UnknownTenantError, {
  name: 'UnknownTenantError',
  description: 'The tenant does not exist (and is not provisioned automatically here).',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof UnknownTenantError,
  fields: () => ({}),
});

builder.objectType(ShuttingDownError, {
  name: 'ShuttingDownError',
  description: 'The instance is stopping; nothing from this call was accepted.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof ShuttingDownError,
  fields: () => ({}),
});

builder.objectType(InvalidCursorError, {
  name: 'InvalidCursorError',
  description: 'The cursor was altered, or belongs to another tenant, order or filter.',
  interfaces: [AuditErrorInterface],
  isTypeOf: (e) => e instanceof InvalidCursorError,
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

/** The errors every tenant-scoped field can answer with. */
export const TENANT_ERRORS = [
  ValidationError,
  UnauthenticatedError,
  ForbiddenError,
  UnknownTenantError,
];

export { AuditError, CommitTimeoutError };
