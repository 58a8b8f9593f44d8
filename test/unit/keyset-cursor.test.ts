import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { InvalidCursorError } from '../../src/domain/errors.js';
import { type AuditEventFilter, canonicalFilter } from '../../src/domain/filter.js';
import { type CursorScope, KeysetCursorCodec } from '../../src/domain/keyset-cursor.js';

const SECRET = 'unit-test-secret-unit-test-secret-0123';
const codec = new KeysetCursorCodec(SECRET);
const position = {
  occurredAt: new Date('2026-03-04T05:06:07.089Z'),
  id: '0190a0b0-1234-4abc-8def-0123456789ab',
};
const scope: CursorScope = {
  tenant: 'acme',
  order: 'OCCURRED_AT_DESC',
  filter: { correlationId: 'run-1', eventTypes: ['a.b', 'c.d'], occurredAfter: new Date(0) },
};
const cursor = codec.encode(position, scope);
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function rejects(c: string, s: CursorScope = scope): void {
  expect(() => codec.decode(c, s)).toThrow(InvalidCursorError);
}

describe('KeysetCursorCodec', () => {
  it('round-trips a position exactly, to the millisecond', () => {
    const back = codec.decode(cursor, scope);
    expect(back.id).toBe(position.id);
    expect(back.occurredAt.getTime()).toBe(position.occurredAt.getTime());
  });

  it('keeps its wire format: a cursor issued before an upgrade still reads after it', () => {
    // Computed here from the format's definition, not through the codec.
    const body = `${position.occurredAt.getTime()}.${position.id}`;
    const signed = `v1\nacme\nOCCURRED_AT_DESC\n${canonicalFilter(scope.filter)}\n${body}`;
    const mac = createHmac('sha256', SECRET).update(signed).digest().subarray(0, 16);
    expect(cursor).toBe(`${body}.${mac.toString('base64url')}`);
  });

  it("signs a page's edges with its encoder as encode does, bound to the encoder's scope", () => {
    const encode = codec.encoder(scope);
    const other = codec.encoder({ ...scope, filter: { correlationId: 'run-2' } });
    for (let i = 0; i < 5; i++) {
      const at = { occurredAt: new Date(position.occurredAt.getTime() + i), id: position.id };
      expect(encode(at)).toBe(codec.encode(at, scope));
      expect(codec.decode(encode(at), scope).occurredAt.getTime()).toBe(at.occurredAt.getTime());
      rejects(other(at));
    }
  });

  it('round-trips the epoch and a far-future instant', () => {
    for (const occurredAt of [new Date(0), new Date('2999-12-31T23:59:59.999Z')]) {
      const c = codec.encode({ occurredAt, id: position.id }, scope);
      expect(codec.decode(c, scope).occurredAt.getTime()).toBe(occurredAt.getTime());
    }
  });

  it('is opaque to the extent of carrying no tenant, filter or secret in the clear', () => {
    expect(cursor).not.toContain('acme');
    expect(cursor).not.toContain('run-1');
    expect(cursor).not.toContain(SECRET);
  });

  it('rejects a cursor for another tenant', () => {
    rejects(cursor, { ...scope, tenant: 'acme2' });
  });

  it('rejects a cursor for the other order', () => {
    rejects(cursor, { ...scope, order: 'OCCURRED_AT_ASC' });
  });

  it('rejects a cursor under another filter, including a filter that only adds or drops a condition', () => {
    rejects(cursor, { ...scope, filter: { ...scope.filter, correlationId: 'run-2' } });
    rejects(cursor, { ...scope, filter: { ...scope.filter, category: 'x' } });
    rejects(cursor, { ...scope, filter: { correlationId: 'run-1' } });
    rejects(cursor, { ...scope, filter: {} });
    rejects(cursor, { ...scope, filter: { ...scope.filter, occurredAfter: new Date(1) } });
  });

  it('rejects a cursor signed with another secret', () => {
    const other = new KeysetCursorCodec('another-secret-another-secret-0123456');
    expect(() => other.decode(cursor, scope)).toThrow(InvalidCursorError);
  });

  it('accepts the same filter whatever the order of its keys', () => {
    const reordered: AuditEventFilter = {
      occurredAfter: new Date(0),
      eventTypes: ['a.b', 'c.d'],
      correlationId: 'run-1',
    };
    expect(codec.decode(cursor, { ...scope, filter: reordered }).id).toBe(position.id);
  });

  it('ignores absent (null or undefined) filter fields in the signature', () => {
    const withNulls: AuditEventFilter = { ...scope.filter, category: null, actorId: undefined };
    expect(codec.decode(cursor, { ...scope, filter: withNulls }).id).toBe(position.id);
  });

  it('binds nested dataContains regardless of key order, and rejects other contents', () => {
    const s: CursorScope = { ...scope, filter: { dataContains: { a: 1, b: { c: 2, d: 3 } } } };
    const c = codec.encode(position, s);
    expect(
      codec.decode(c, { ...s, filter: { dataContains: { b: { d: 3, c: 2 }, a: 1 } } }).id,
    ).toBe(position.id);
    rejects(c, { ...s, filter: { dataContains: { a: 1, b: { c: 2, d: 4 } } } });
  });

  it('rejects an altered position (time or id) with a still-valid looking shape', () => {
    const [ms, id, mac] = cursor.split('.') as [string, string, string];
    rejects(`${Number(ms) + 1}.${id}.${mac}`);
    rejects(`${ms}.${id.replace(/.$/, id.endsWith('0') ? '1' : '0')}.${mac}`);
  });

  it('rejects malformed cursors', () => {
    for (const bad of [
      '',
      '.',
      '..',
      'garbage',
      cursor.split('.').slice(0, 2).join('.'),
      `${cursor}.extra`,
      `-1.${position.id}.${cursor.split('.')[2]}`,
      cursor.replace(position.id, position.id.toUpperCase()),
      `${'9'.repeat(200)}.${position.id}.x`,
    ]) {
      rejects(bad);
    }
  });

  // A cursor is "tampered" when it is not the exact string the service issued. Base64 is
  // malleable (the unused low bits of the last character, '/' for '_', appended '=' or junk are
  // ignored by a lenient decoder), so comparing decoded bytes alone lets altered strings through.
  it('rejects every single-character substitution anywhere in the cursor', () => {
    const accepted: string[] = [];
    for (let i = 0; i < cursor.length; i++) {
      for (const ch of `${BASE64URL}./+=`) {
        if (ch === cursor[i]) continue;
        const altered = cursor.slice(0, i) + ch + cursor.slice(i + 1);
        try {
          codec.decode(altered, scope);
          accepted.push(altered);
        } catch (err) {
          expect(err).toBeInstanceOf(InvalidCursorError);
        }
      }
    }
    expect(accepted).toEqual([]);
  });

  it('rejects the cursor with anything appended', () => {
    const accepted = ['=', '==', 'A', '!', ' ', '%'].filter((suffix) => {
      try {
        codec.decode(cursor + suffix, scope);
        return true;
      } catch {
        return false;
      }
    });
    expect(accepted).toEqual([]);
  });
});

describe('KeysetCursorCodec tail cursors', () => {
  const NOV = Date.UTC(2026, 10, 1);
  const DEC = Date.UTC(2026, 11, 1);
  const tail = new Map([
    [DEC, 1_500_000],
    [NOV, 3],
  ]);
  const c = codec.encodeTail(tail, 'acme');

  it('round-trips a position per month, months in order, empty months left out', () => {
    expect(c).toMatch(/^t1\.202611-3\.202612-1500000\.[A-Za-z0-9_-]{22}$/);
    expect(codec.decodeTail(c, 'acme')).toEqual(tail);
    const empty = codec.encodeTail(new Map([[NOV, 0]]), 'acme');
    expect(codec.decodeTail(empty, 'acme')).toEqual(new Map());
  });

  it('refuses another tenant’s, an altered one, a page cursor, and junk', () => {
    const refused = (s: string, tenant = 'acme') =>
      expect(() => codec.decodeTail(s, tenant)).toThrow(InvalidCursorError);
    refused(c, 'other');
    refused(c.replace('202611-3', '202611-2'));
    refused(c.replace('202611-3.', ''));
    refused(c.replace('202611', '202613'));
    refused(cursor);
    refused(`t1.202612-1.202611-3.${c.split('.').at(-1)}`);
    refused('t1');
    refused(`${c}.x`);
    refused('x'.repeat(40_000));
    // Negative control: the same position signed for the tenant is accepted.
    expect(codec.decodeTail(codec.encodeTail(tail, 'other'), 'other')).toEqual(tail);
  });

  it('is never taken as a page cursor', () => {
    rejects(c);
  });
});
