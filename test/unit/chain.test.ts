import { generateKeyPairSync } from 'node:crypto';
import canonicalize from 'canonicalize';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type ChainedRow,
  ChainHasher,
  canonicalEvent,
  canonicalEventWithData,
  canonicalObject,
  genesisHash,
  MonthChainWalker,
} from '../../src/domain/chain.js';
import {
  checkpointFromJson,
  checkpointSignatureValid,
  checkpointToJson,
  signCheckpoint,
} from '../../src/domain/checkpoint.js';
import { validateEvents } from '../../src/domain/event.js';
import { exportedEvent } from '../../src/export/format.js';
import { canonicalRecord, chainedFieldsOf } from '../../src/ingest/batch-writer.js';

const MONTH = new Date('2026-03-01T00:00:00.000Z');

function fields(n: number, data: unknown = { b: 1, a: [1.5, 'x'] }) {
  return {
    id: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`,
    occurredAt: new Date(MONTH.getTime() + n * 1000),
    receivedAt: new Date(MONTH.getTime() + n * 1000 + 5),
    eventType: 'user.login',
    category: 'auth',
    action: 'login',
    outcome: 'SUCCESS',
    correlationId: 'c',
    actorType: 'user',
    actorId: 'u1',
    actorIp: null,
    resourceType: 'app',
    resourceId: 'a1',
    resourceName: null,
    parentEventId: null,
    severity: null,
    durationMs: n,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    data,
  };
}

/** A valid chain of `n` rows for tenant `t`. */
function chain(n: number, hasher = new ChainHasher(), t = 'acme'): ChainedRow[] {
  let prev = genesisHash(t, MONTH);
  return Array.from({ length: n }, (_, i) => {
    const f = fields(i + 1);
    const hash = hasher.link(prev, canonicalEvent(f));
    const row = { ...f, chainSeq: i + 1, prevHash: prev, hash };
    prev = hash;
    return row;
  });
}

describe('canonical form and links', () => {
  it('is RFC 8785: member order does not matter, numbers take their shortest form', () => {
    const a = canonicalEvent(fields(1, { b: 1, a: [1.5, 'x'], c: { z: 1e21, y: 1.0 } }));
    const b = canonicalEvent(fields(1, { c: { y: 1, z: 1e21 }, a: [1.5, 'x'], b: 1 }));
    expect(a.equals(b)).toBe(true);
    expect(a.toString()).toContain('"data":{"a":[1.5,"x"],"b":1,"c":{"y":1,"z":1e+21}}');
  });

  it('changes with any field, and keyed chains differ from plain ones', () => {
    const base = canonicalEvent(fields(1));
    expect(canonicalEvent({ ...fields(1), actorId: 'u2' }).equals(base)).toBe(false);
    expect(canonicalEvent({ ...fields(1), data: null }).equals(base)).toBe(false);
    const prev = genesisHash('acme', MONTH);
    const plain = new ChainHasher().link(prev, base);
    const keyed = new ChainHasher('k'.repeat(32)).link(prev, base);
    expect(plain.equals(keyed)).toBe(false);
    expect(genesisHash('acme', MONTH).equals(genesisHash('other', MONTH))).toBe(false);
    expect(genesisHash('acme', MONTH).equals(genesisHash('acme', new Date('2026-04-02')))).toBe(
      false,
    );
  });
});

describe('the fast canonical form is the library’s, byte for byte', () => {
  const text = fc.string({ unit: 'grapheme', maxLength: 20 });
  const maybe = fc.option(text, { nil: null });
  const instant = fc.date({
    min: new Date('2000-01-01'),
    max: new Date('2100-01-01'),
    noInvalidDate: true,
  });
  const fieldsArb = fc.record({
    id: fc.uuid(),
    occurredAt: instant,
    receivedAt: instant,
    eventType: text,
    category: text,
    action: text,
    outcome: fc.constantFrom('SUCCESS', 'FAILURE', 'PENDING'),
    correlationId: text,
    actorType: text,
    actorId: text,
    actorIp: maybe,
    resourceType: text,
    resourceId: text,
    resourceName: maybe,
    parentEventId: fc.option(fc.uuid(), { nil: null }),
    severity: maybe,
    durationMs: fc.option(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { nil: null }),
    errorCode: maybe,
    errorMessage: maybe,
    namespace: maybe,
    clusterId: maybe,
    traceId: maybe,
    spanId: maybe,
    data: fc.option(fc.dictionary(text, fc.jsonValue({ maxDepth: 3 })), { nil: null }),
  });

  it('for any event: the envelope written natively equals canonicalize() of the whole object', () => {
    fc.assert(
      fc.property(fieldsArb, (e) => {
        const library = Buffer.from(canonicalize(canonicalObject(e))!, 'utf8');
        expect(canonicalEvent(e).equals(library)).toBe(true);
        const data = e.data === null ? null : canonicalize(e.data)!;
        expect(canonicalEventWithData(e, data).equals(library)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('an export line is the canonical object plus the chain place (two mappings, held together)', () => {
    fc.assert(
      fc.property(fieldsArb, fc.nat(), (e, seq) => {
        const line = exportedEvent({
          ...e,
          chainSeq: seq,
          prevHash: Buffer.alloc(32, 1),
          hash: Buffer.alloc(32, 2),
          batchId: 'b',
        });
        const { chainSeq, prevHash, hash, batchId, ...event } = line;
        expect(event).toEqual(canonicalObject(e));
        expect([chainSeq, prevHash, hash, batchId]).toEqual([
          seq,
          '01'.repeat(32),
          '02'.repeat(32),
          'b',
        ]);
      }),
      { numRuns: 200 },
    );
  });

  it('validation stores data canonically, so the writer’s shortcut hashes what a verifier recomputes', () => {
    fc.assert(
      fc.property(fc.dictionary(text, fc.jsonValue({ maxDepth: 3 })), (data) => {
        // NUL is refused by validation (PostgreSQL cannot store it), and so are numbers beyond
        // ±(2^53 − 1): other tests' business.
        fc.pre(!JSON.stringify(data).includes('\\u0000'));
        fc.pre(!hasInexactNumber(data));
        const [r] = validateEvents(
          [
            {
              occurredAt: MONTH,
              eventType: 'e',
              category: 'c',
              action: 'a',
              outcome: 'SUCCESS',
              correlationId: 'k',
              actor: { type: 't', id: 'i' },
              resource: { type: 't', id: 'i' },
              data,
            },
          ],
          { now: MONTH, retentionDays: 30, maxFutureSkewMs: 0, maxEvents: 1 },
        );
        expect(r!.dataCanonical).toBe(true);
        // What a verifier does: the stored data parsed back, canonicalised anew.
        expect(canonicalRecord(r!).equals(canonicalEvent(chainedFieldsOf(r!)))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('MonthChainWalker', () => {
  const hasher = new ChainHasher();
  const walk = (rows: ChainedRow[], claims = []) => {
    const w = new MonthChainWalker(hasher, 'acme', MONTH, claims);
    for (const r of rows) if (!w.push(r)) break;
    return { walker: w, broken: w.finish() };
  };

  it('accepts an intact chain', () => {
    const { walker, broken } = walk(chain(20));
    expect(broken).toBeNull();
    expect(walker.count).toBe(20);
  });

  it('names the changed row, a missing row, a reordered pair, another tenant’s chain', () => {
    const rows = chain(10);
    const changed = rows.map((r, i) => (i === 6 ? { ...r, actorId: 'mallory' } : r));
    expect(walk(changed).broken).toMatchObject({
      kind: 'HASH_MISMATCH',
      seq: 7,
      eventId: rows[6]!.id,
    });
    expect(walk(rows.filter((_, i) => i !== 3)).broken).toMatchObject({
      kind: 'SEQUENCE_GAP',
      seq: 5,
    });
    const swapped = [...rows];
    [swapped[2], swapped[3]] = [swapped[3]!, swapped[2]!];
    expect(walk(swapped).broken?.kind).toBe('SEQUENCE_GAP');
    const w = new MonthChainWalker(hasher, 'other', MONTH);
    w.push(rows[0]!);
    expect(w.broken?.kind).toBe('PREVIOUS_HASH_MISMATCH');
  });

  it('holds the chain against checkpoints: a mismatch, and a truncation past the last one', () => {
    const rows = chain(10);
    const at = (seq: number, hash = rows[seq - 1]!.hash!) => ({
      month: MONTH,
      seq,
      hash,
      signedAt: new Date(),
    });
    expect(walk(rows, [at(5), at(10)] as never).broken).toBeNull();
    expect(walk(rows, [at(5, rows[3]!.hash!)] as never).broken?.kind).toBe('CHECKPOINT_MISMATCH');
    expect(walk(rows.slice(0, 7), [at(10)] as never).broken).toMatchObject({
      kind: 'TRUNCATED',
      seq: 10,
    });
  });
});

describe('checkpoints', () => {
  it('verify with the signing key only, and survive a JSON round trip', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    const other = generateKeyPairSync('ed25519');
    const c = signCheckpoint(
      { tenant: 'acme', month: MONTH, seq: 3, hash: chain(3)[2]!.hash!, signedAt: new Date() },
      privateKey,
    );
    expect(checkpointSignatureValid(c, publicKey)).toBe(true);
    expect(checkpointSignatureValid(c, other.publicKey)).toBe(false);
    expect(checkpointSignatureValid(checkpointFromJson(checkpointToJson(c)), publicKey)).toBe(true);
    expect(checkpointSignatureValid({ ...c, seq: 4 }, publicKey)).toBe(false);
  });
});

/** Whether a JSON value holds a number validation refuses (not finite, or beyond ±(2^53 − 1)). */
function hasInexactNumber(v: unknown): boolean {
  if (typeof v === 'number') return !Number.isFinite(v) || Math.abs(v) > Number.MAX_SAFE_INTEGER;
  if (Array.isArray(v)) return v.some(hasInexactNumber);
  if (v && typeof v === 'object') return Object.values(v).some(hasInexactNumber);
  return false;
}
