import { ValidationError } from '../domain/errors.js';
import { LIMITS } from '../domain/event.js';

/** A correlation id argument (null when absent), refused by `field` when empty or too long. */
export function checkedCorrelationId(id: string | null | undefined, field: string): string | null {
  if (id === undefined || id === null) return null;
  if (id.length === 0 || id.length > LIMITS.correlationId) {
    throw ValidationError.single(field, `between 1 and ${LIMITS.correlationId} characters`);
  }
  return id;
}

/** A wait's timeoutMs argument: `fallback` when absent, refused by `field` outside 1…`max`. */
export function checkedTimeoutMs(
  value: number | null | undefined,
  fallback: number,
  max: number,
  field: string,
): number {
  const timeoutMs = value ?? fallback;
  if (timeoutMs < 1 || timeoutMs > max) {
    throw ValidationError.single(field, `must be between 1 and ${max}`);
  }
  return timeoutMs;
}
