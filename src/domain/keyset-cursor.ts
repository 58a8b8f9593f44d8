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

/**
 * A position in a tenant's hash chains, one per month (first instant of the UTC month, as epoch
 * ms) → the last position delivered; a month it does not name is at position 0. Within a month,
 * positions are taken under the month's chain lock and so follow commit order.
 */
export type TailPosition = ReadonlyMap<number, number>;

/** `YYYYMM-seq`: one month of a tail cursor. */
const TAIL_ENTRY = /^(\d{4})(\d{2})-(\d{1,16})$/;
/** Generous for MAX_PARTITIONS_PER_TENANT months; anything longer is not a cursor of ours. */
const MAX_TAIL_CURSOR = 32_768;

function monthLabel(month: number): string {
  const d = new Date(month);
  return `${String(d.getUTCFullYear()).padStart(4, '0')}${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
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
    return this.encoder(scope)(position);
  }

  /**
   * Encodes positions under one scope: what a page does for each of its edges. The scope's part
   * of the signed text (its canonical filter, most of the work besides the HMAC) is built once.
   */
  encoder(scope: CursorScope): (position: KeysetPosition) => string {
    const prefix = this.macPrefix(scope);
    return (position) => {
      const body = `${position.occurredAt.getTime()}.${position.id}`;
      return `${body}.${this.sign(prefix + body).toString('base64url')}`;
    };
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

  /**
   * A live-tail cursor: the position reached in each month's chain. Bound to the tenant only —
   * a position in the tenant's chains means the same under any filter — and marked as a tail
   * cursor, so a page cursor is never taken for one (nor the reverse).
   */
  encodeTail(position: TailPosition, tenant: string): string {
    const entries = [...position]
      .filter(([, seq]) => seq > 0)
      .sort(([a], [b]) => a - b)
      .map(([month, seq]) => `${monthLabel(month)}-${seq}`);
    const body = ['t1', ...entries].join('.');
    return `${body}.${this.tailMac(body, tenant).toString('base64url')}`;
  }

  /** The position of a cursor from `encodeTail`; InvalidCursorError for anything else. */
  decodeTail(cursor: string, tenant: string): TailPosition {
    if (cursor.length > MAX_TAIL_CURSOR) throw new InvalidCursorError();
    const parts = cursor.split('.');
    const mac = parts.pop();
    if (parts[0] !== 't1' || !mac || !MAC_TEXT.test(mac)) throw new InvalidCursorError();
    const position = new Map<number, number>();
    let last = -Infinity;
    for (const entry of parts.slice(1)) {
      const m = TAIL_ENTRY.exec(entry);
      if (!m) throw new InvalidCursorError();
      const month = Date.UTC(Number(m[1]), Number(m[2]) - 1, 1);
      const seq = Number(m[3]);
      if (Number(m[2]) < 1 || Number(m[2]) > 12 || month <= last || !Number.isSafeInteger(seq)) {
        throw new InvalidCursorError();
      }
      last = month;
      position.set(month, seq);
    }
    const given = Buffer.from(mac, 'ascii');
    const body = parts.join('.');
    const expected = Buffer.from(this.tailMac(body, tenant).toString('base64url'), 'ascii');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new InvalidCursorError();
    }
    return position;
  }

  private tailMac(body: string, tenant: string): Buffer {
    return this.sign(`tail1\n${tenant}\n${body}`);
  }

  private mac(body: string, scope: CursorScope): Buffer {
    return this.sign(this.macPrefix(scope) + body);
  }

  private macPrefix(scope: CursorScope): string {
    return `v1\n${scope.tenant}\n${scope.order}\n${canonicalFilter(scope.filter)}\n`;
  }

  private sign(text: string): Buffer {
    if (!this.secret) throw new Error('the cursor secret is not loaded yet');
    return createHmac('sha256', this.secret).update(text).digest().subarray(0, MAC_BYTES);
  }
}
