import { decodeGlobalID } from '@pothos/plugin-relay';
import { ValidationError } from '../domain/errors.js';

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * The object's own id from an `id` argument, which may be the object's global id (its `id`, as
 * every client cache holds it) or its own id (`deadLetterId`, `holdId`, `keyId`, …, as the CLI
 * and logs show it). The two cannot be confused: own ids are UUIDs or tenant names, neither of
 * which is base64 of `<Type>:`. A global id of another type is refused, naming the field.
 */
export function ownIdOf(value: string, typename: string, field: string): string {
  if (!BASE64.test(value)) return value;
  let decoded: { typename: string; id: string };
  try {
    decoded = decodeGlobalID(value);
  } catch {
    return value;
  }
  if (decoded.typename === typename) return decoded.id;
  if (NODE_TYPES.has(decoded.typename)) {
    throw ValidationError.single(field, `is the id of a ${decoded.typename}, not of a ${typename}`);
  }
  return value;
}

/** Every type that implements Node. */
export const NODE_TYPES = new Set(['AuditEvent', 'DeadLetter', 'LegalHold', 'ApiKey', 'Tenant']);
