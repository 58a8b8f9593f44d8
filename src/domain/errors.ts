/**
 * Expected failures, and the one table of their machine-readable codes: every door (GraphQL
 * errors' `extensions.code`, `/export`'s JSON refusals, WebSocket close reasons) names a failure
 * by its class's `code`. `retryable` alone tells a client whether sending the same request again
 * can succeed; `details()` are the failure's own fields (`retryAfterMs`, `limit`, …), which the
 * doors add beside the code.
 *
 * Outcomes that belong to a mutation's result (backpressure, a rate limit, invalid events, a
 * commit or flush timeout, shutting down) are also GraphQL object types of the same name (see
 * graphql/errors.ts); everything that refuses the request itself is a GraphQL error.
 */
export abstract class AuditError extends Error {
  abstract readonly retryable: boolean;
  /** The machine-readable code, e.g. `INVALID_CURSOR`. */
  abstract readonly code: ErrorCode;
  constructor(message: string) {
    // An expected failure is an answer, not a fault: it needs no stack trace. Capturing and
    // formatting one (with source maps) costs more than the refusal it explains, and a flood of
    // refusals (a tenant past its subscription cap) must stay cheap for the service.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(message);
    } finally {
      Error.stackTraceLimit = limit;
    }
    this.name = new.target.name;
  }
  /** The failure's own fields, for `extensions` and JSON refusals. */
  details(): Record<string, unknown> {
    return {};
  }
}

/**
 * Every code a client may see, with the HTTP status a door answers it with when the failure
 * refuses a whole request (`/export`; `/graphql` with `accept: application/graphql-response+json`
 * only for UNAUTHENTICATED and FORBIDDEN, see graphql/error-mapping.ts).
 */
export const ERROR_STATUS = {
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  UNKNOWN_TENANT: 404,
  BAD_USER_INPUT: 400,
  INVALID_CURSOR: 400,
  RATE_LIMITED: 429,
  LIMIT_EXCEEDED: 429,
  BACKPRESSURE: 503,
  SHUTTING_DOWN: 503,
  JOURNAL_UNAVAILABLE: 503,
  COMMIT_TIMEOUT: 504,
  FLUSH_TIMEOUT: 504,
  SUBSCRIPTION_INTERRUPTED: 503,
  REPLAY_TOO_LARGE: 400,
  CHECKPOINT_KEY_RETIRED: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export interface ValidationIssue {
  /** Index of the event in the call, when the problem belongs to one event. */
  index: number | null;
  /** Dotted path of the field, e.g. `actor.ip` or `data`. */
  field: string;
  message: string;
}

export class ValidationError extends AuditError {
  readonly code = 'BAD_USER_INPUT' as const;
  readonly retryable = false;
  constructor(
    readonly issues: ValidationIssue[],
    message = summarise(issues),
  ) {
    super(message);
  }
  static single(field: string, message: string): ValidationError {
    return new ValidationError([{ index: null, field, message }]);
  }
  override details(): Record<string, unknown> {
    return { issues: this.issues };
  }
}

function summarise(issues: ValidationIssue[]): string {
  const first = issues[0];
  if (!first) return 'invalid input';
  const where = first.index === null ? first.field : `events[${first.index}].${first.field}`;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more problems)` : '';
  return `invalid input: ${where}: ${first.message}${more}`;
}

export class BackpressureError extends AuditError {
  readonly code = 'BACKPRESSURE' as const;
  readonly retryable = true;
  constructor(
    readonly retryAfterMs: number,
    readonly limit: 'BUFFER_CAPACITY' | 'BUFFER_MAX_BYTES' | 'DLQ_MAX_EVENTS',
  ) {
    super(
      `buffer full (${limit}); nothing from this call was accepted, retry after ${retryAfterMs} ms`,
    );
  }
  override details(): Record<string, unknown> {
    return { retryAfterMs: this.retryAfterMs, limit: this.limit };
  }
}

/** The tenant's write rate was reached; nothing from this call was accepted. */
export class RateLimitedError extends AuditError {
  readonly code = 'RATE_LIMITED' as const;
  readonly retryable = true;
  constructor(
    readonly retryAfterMs: number,
    readonly limit: 'RATE_LIMIT_EVENTS_PER_SECOND' = 'RATE_LIMIT_EVENTS_PER_SECOND',
  ) {
    super(
      `write rate of the tenant reached (${limit}); nothing from this call was accepted, ` +
        `retry after ${retryAfterMs} ms`,
    );
  }
  override details(): Record<string, unknown> {
    return { retryAfterMs: this.retryAfterMs, limit: this.limit };
  }
}

/** No valid credential: missing, malformed, unknown, revoked or expired. */
export class UnauthenticatedError extends AuditError {
  readonly code = 'UNAUTHENTICATED' as const;
  readonly retryable = false;
}

/** A valid credential that may not do this (a scope it lacks, a tenant it cannot choose). */
export class ForbiddenError extends AuditError {
  readonly code = 'FORBIDDEN' as const;
  readonly retryable = false;
}

/** A configured limit other than the write rate was reached; the message names the setting. */
export class LimitExceededError extends AuditError {
  readonly code = 'LIMIT_EXCEEDED' as const;
  readonly retryable = true;
  constructor(
    /** The setting, e.g. `MAX_CONNECTIONS_PER_TENANT`. */
    readonly limit: string,
    readonly max: number,
    what: string,
  ) {
    super(`${what}: at most ${max} (${limit})`);
  }
  override details(): Record<string, unknown> {
    return { limit: this.limit, max: this.max };
  }
}

export class UnknownTenantError extends AuditError {
  readonly code = 'UNKNOWN_TENANT' as const;
  readonly retryable = false;
  constructor(readonly tenantId: string) {
    super(`unknown tenant "${tenantId}"`);
  }
  override details(): Record<string, unknown> {
    return { tenantId: this.tenantId };
  }
}

export class ShuttingDownError extends AuditError {
  readonly code = 'SHUTTING_DOWN' as const;
  readonly retryable = true;
  constructor() {
    super(
      'the service is shutting down; nothing from this call was accepted, retry on another instance',
    );
  }
}

/**
 * A BUFFERED call could not be written to the journal that makes BUFFERED survive a crash
 * (Redis unreachable, the disk full, …): nothing from the call was accepted. COMMITTED calls
 * do not need the journal and are still taken while the database is up.
 */
export class JournalUnavailableError extends AuditError {
  readonly code = 'JOURNAL_UNAVAILABLE' as const;
  readonly retryable = true;
  readonly retryAfterMs = 1_000;
  constructor(readonly reason: string) {
    super(
      `the write-ahead journal could not take this BUFFERED call (${reason}); nothing from it was ` +
        'accepted: retry, or send it with ack COMMITTED',
    );
  }
  override details(): Record<string, unknown> {
    return { retryAfterMs: this.retryAfterMs, reason: this.reason };
  }
}

/**
 * This instance's checkpoint key was retired by a rotation: it signs nothing until it is
 * restarted with the current key. Another instance (one with the current key) can do it.
 */
export class CheckpointKeyRetiredError extends AuditError {
  readonly code = 'CHECKPOINT_KEY_RETIRED' as const;
  readonly retryable = true;
  constructor(readonly keyId: string) {
    super(
      `this instance's checkpoint key (${keyId.slice(0, 16)}…) was retired: it signs no ` +
        'checkpoint until restarted with the current key file; retry on another instance',
    );
  }
  override details(): Record<string, unknown> {
    return { keyId: this.keyId };
  }
}

/** A COMMITTED call waited longer than COMMIT_TIMEOUT_MS; its events stay accepted and pending. */
export class CommitTimeoutError extends AuditError {
  readonly code = 'COMMIT_TIMEOUT' as const;
  readonly retryable = true;
  constructor(
    readonly timeoutMs: number,
    readonly pending: number,
    /** Every event of the call with its status so far, so generated ids are known for the retry. */
    readonly events: { id: string; occurredAt: Date; status: string }[],
  ) {
    super(
      `events accepted but not yet committed after ${timeoutMs} ms (${pending} pending); ` +
        'they are still being written — a retry with the same ids is safe',
    );
  }
  override details(): Record<string, unknown> {
    return { timeoutMs: this.timeoutMs, pending: this.pending };
  }
}

/** flushAudit could not settle everything accepted before it within its timeout. */
export class FlushTimeoutError extends AuditError {
  readonly code = 'FLUSH_TIMEOUT' as const;
  readonly retryable = true;
  constructor(
    readonly timeoutMs: number,
    readonly pending: number,
    readonly lastError: string | null,
    /** Instances that did not answer in time (their pending events are not in `pending`). */
    readonly unresponsive: string[] = [],
  ) {
    super(
      `flush did not complete within ${timeoutMs} ms: ${pending} events still pending` +
        (lastError ? ` (last write error: ${lastError})` : ''),
    );
  }
  override details(): Record<string, unknown> {
    return { timeoutMs: this.timeoutMs, pending: this.pending, unresponsive: this.unresponsive };
  }
}

/** A page cursor that was altered, or minted for another tenant, order or filter. */
export class InvalidCursorError extends AuditError {
  readonly code = 'INVALID_CURSOR' as const;
  readonly retryable = false;
  constructor() {
    super('cursor is not valid for this query; start again without a cursor');
  }
}

/**
 * A live tail asked to start from a cursor so far back that replaying it would pass more than
 * TAIL_REPLAY_MAX_EVENTS positions of the tenant's chains: read that part with auditEvents.
 */
export class ReplayTooLargeError extends AuditError {
  readonly code = 'REPLAY_TOO_LARGE' as const;
  readonly retryable = false;
  constructor(
    /** Positions stored after the cursor (every event, whatever the filter). */
    readonly events: number,
    readonly max: number,
  ) {
    super(
      `${events} events were stored after this cursor, more than a tail replays ` +
        `(TAIL_REPLAY_MAX_EVENTS ${max}): page through auditEvents for them, then open the tail ` +
        'without `after` (or from a newer cursor)',
    );
  }
  override details(): Record<string, unknown> {
    return { events: this.events, max: this.max };
  }
}
