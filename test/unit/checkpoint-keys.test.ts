import { generateKeyPairSync, sign } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  keyIdOf,
  keyPeriodStatement,
  retiredByItself,
  retirementStatement,
  signCheckpoint,
  type TrustedKey,
  untrustedBecause,
  vouchedKeys,
} from '../../src/domain/checkpoint.js';

/**
 * The rules that decide which checkpoint keys a verification trusts, without a database: who
 * vouches for whom, what makes a retirement real, and which checkpoints a key may vouch for.
 */

function pair() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const trusted = (trustedFrom: Date): TrustedKey => ({
    keyId: keyIdOf(publicKey),
    publicKey,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    trustedFrom,
    retiredAt: null,
    endorsedBy: null,
    endorsement: null,
    retirementNotice: null,
  });
  return { privateKey, trusted };
}

const T0 = new Date(0);
const ROTATED = new Date('2026-06-15T12:00:00.000Z');

/** K1 from the beginning, retired at ROTATED in favour of K2: endorsed by K2, signed by K1 if `notice`. */
function rotation(notice = true) {
  const k1 = pair();
  const k2 = pair();
  const next = k2.trusted(ROTATED);
  const old = k1.trusted(T0);
  const retired: TrustedKey = {
    ...old,
    retiredAt: ROTATED,
    endorsedBy: next.keyId,
    endorsement: sign(
      null,
      keyPeriodStatement({ ...old, retiredAt: ROTATED }, next.keyId),
      k2.privateKey,
    ),
    retirementNotice: notice
      ? sign(null, retirementStatement(old.keyId, ROTATED, next.keyId), k1.privateKey)
      : null,
  };
  return { k1, k2, old: retired, next };
}

describe('vouchedKeys', () => {
  it('walks back from the anchor through the endorsements', () => {
    const { old, next } = rotation();
    const { keys, broken } = vouchedKeys([old, next], next.keyId);
    expect(keys.map((k) => k.keyId)).toEqual([old.keyId, next.keyId]);
    expect(broken).toBeNull();
    // From the retired key's side, the key that replaced it is not vouched for.
    expect(vouchedKeys([old, next], old.keyId).keys.map((k) => k.keyId)).toEqual([old.keyId]);
  });

  it('leaves out a key no vouched-for key endorsed, and says so', () => {
    const { old, next } = rotation();
    const stray = { ...pair().trusted(new Date('2020-01-01')), retiredAt: new Date('2030-01-01') };
    const { keys, broken } = vouchedKeys([old, stray, next], next.keyId);
    expect(keys.map((k) => k.keyId)).toEqual([old.keyId, next.keyId]);
    expect(broken).toMatch(/no key of the deployment endorses/);
  });

  it('takes the anchor as current when its retirement is not signed by itself', () => {
    const { old, next } = rotation(false);
    // The table says the retired key is retired, endorsed by a successor: to the retired key
    // itself that proves nothing (whoever made the successor made the endorsement).
    const [anchor] = vouchedKeys([old, next], old.keyId).keys;
    expect(anchor!.retiredAt).toBeNull();
    // Negative control: signed by itself, the retirement stands.
    const { old: signed, next: n2 } = rotation(true);
    expect(vouchedKeys([signed, n2], signed.keyId).keys[0]!.retiredAt).toEqual(ROTATED);
  });
});

describe('retiredByItself', () => {
  it('holds only for the key’s own signature over its retirement', () => {
    expect(retiredByItself(rotation(true).old)).toBe(true);
    expect(retiredByItself(rotation(false).old)).toBe(false);
    const { old, k2 } = rotation(true);
    const bySuccessor = sign(
      null,
      retirementStatement(old.keyId, ROTATED, old.endorsedBy!),
      k2.privateKey,
    );
    expect(retiredByItself({ ...old, retirementNotice: bySuccessor })).toBe(false);
    // The retirement moved in the table no longer matches what the key signed.
    expect(retiredByItself({ ...old, retiredAt: new Date(ROTATED.getTime() + 1) })).toBe(false);
  });
});

describe('untrustedBecause', () => {
  const { k1, old, next } = rotation();
  const keys = [old, next];
  const checkpoint = (month: Date, signedAt: Date) =>
    signCheckpoint(
      { tenant: 'acme', month, seq: 3, hash: Buffer.alloc(32, 1), signedAt },
      k1.privateKey,
    );

  it('trusts a key’s checkpoint inside its period, not after its retirement', () => {
    const may = new Date('2026-05-01T00:00:00.000Z');
    expect(untrustedBecause(keys, checkpoint(may, new Date('2026-06-01T00:00:00Z')))).toBeNull();
    expect(untrustedBecause(keys, checkpoint(may, new Date('2026-06-16T00:00:00Z')))).toMatch(
      /after its key .* was retired/,
    );
  });

  it('refuses a checkpoint signed more than a day before its month began', () => {
    // A leaked retired key cannot vouch for a month that began after its retirement, however it
    // dates the signature.
    const august = new Date('2026-08-01T00:00:00.000Z');
    expect(untrustedBecause(keys, checkpoint(august, new Date('2026-06-14T00:00:00Z')))).toMatch(
      /before its month .* began/,
    );
    // A month's chain may be signed shortly before the month (events up to MAX_FUTURE_SKEW_MS
    // ahead): an hour before is trusted.
    const july = new Date('2026-07-01T00:00:00.000Z');
    expect(
      untrustedBecause(
        [{ ...old, retiredAt: null }],
        checkpoint(july, new Date('2026-06-30T23:00:00Z')),
      ),
    ).toBeNull();
  });
});
