import { createHmac, timingSafeEqual } from 'node:crypto';
import { InvalidCursorError } from './errors.js';
import { type AuditEventFilter, type AuditEventOrder, canonicalFilter } from './filter.js';
import { isLowerUuid } from './uuid.js';

/** A position in the `(occurredAt, id)` order. */
export interface KeysetPosition {
  occurredAt: Date;
  id: string;
}

/** What a cursor is bound to: using it under any other scope is an InvalidCursorError. */
export interface CursorScope {
  tenant: string;
  order: AuditEventOrder;
  filter: AuditEventFilter;
}

const MAC_BYTES = 16;
const MAC_TEXT = /^[A-Za-z0-9_-]{22}$/;

/**
 * Opaque, signed page cursors. The position travels in the clear (it is the client's own data);
 * the HMAC binds it to tenant, order and filter so a cursor cannot be forged, altered, or
 * replayed by another tenant or under another filter.
 */
export class KeysetCursorCodec {
  /**
   * `secret` may be given later with `useSecret` (it is read from the database at start-up);
   * encoding or decoding before then is a programming error.
   */
  constructor(private secret?: string) {}

  /** Signs from now on with this secret (cursors signed with another one become invalid). */
  useSecret(secret: string): void {
    this.secret = secret;
  }

  encode(position: KeysetPosition, scope: CursorScope): string {
    const body = `${position.occurredAt.getTime()}.${position.id}`;
    return `${body}.${this.mac(body, scope).toString('base64url')}`;
  }

  decode(cursor: string, scope: CursorScope): KeysetPosition {
    if (cursor.length > 128) throw new InvalidCursorError();
    const [ms, id, mac, ...rest] = cursor.split('.');
    if (!ms || !id || !mac || rest.length > 0 || !/^\d{1,15}$/.test(ms) || !isLowerUuid(id)) {
      throw new InvalidCursorError();
    }
    // Compare the signature as text: base64 decoding is lenient (it skips junk and ignores the
    // last character's spare bits), so comparing decoded bytes would accept altered cursors.
    if (!MAC_TEXT.test(mac)) throw new InvalidCursorError();
    const given = Buffer.from(mac, 'ascii');
    const expected = Buffer.from(this.mac(`${ms}.${id}`, scope).toString('base64url'), 'ascii');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new InvalidCursorError();
    }
    return { occurredAt: new Date(Number(ms)), id };
  }

  private mac(body: string, scope: CursorScope): Buffer {
    if (!this.secret) throw new Error('the cursor secret is not loaded yet');
    return createHmac('sha256', this.secret)
      .update(`v1\n${scope.tenant}\n${scope.order}\n${canonicalFilter(scope.filter)}\n${body}`)
      .digest()
      .subarray(0, MAC_BYTES);
  }
}
