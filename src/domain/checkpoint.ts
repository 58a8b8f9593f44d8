import { createHash, createPublicKey, type KeyObject, sign, verify } from 'node:crypto';
import canonicalize from 'canonicalize';
import { CHAIN_VERSION } from './chain.js';

/**
 * Signed checkpoints: "tenant T's chain for month M had hash H at position N, at time S",
 * signed with Ed25519. Whoever holds the public key can check them; nobody who can only write
 * the database can make new ones, so cutting or rewriting history behind a checkpoint shows.
 */

export interface Checkpoint {
  tenant: string;
  month: Date;
  seq: number;
  hash: Buffer;
  signedAt: Date;
  keyId: string;
  signature: Buffer;
}

/** The bytes that are signed: RFC 8785 canonical JSON of the statement. */
export function checkpointStatement(c: Omit<Checkpoint, 'signature' | 'keyId'>): Buffer {
  return Buffer.from(
    canonicalize({
      v: CHAIN_VERSION,
      tenant: c.tenant,
      month: c.month.toISOString(),
      seq: c.seq,
      hash: c.hash.toString('hex'),
      signedAt: c.signedAt.toISOString(),
    }) as string,
    'utf8',
  );
}

/** SHA-256 (hex) of a public key's SPKI DER: names the key a checkpoint was signed with. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

export function signCheckpoint(
  c: Omit<Checkpoint, 'signature' | 'keyId'>,
  privateKey: KeyObject,
): Checkpoint {
  const publicKey = createPublicKey(privateKey);
  return {
    ...c,
    keyId: keyIdOf(publicKey),
    signature: sign(null, checkpointStatement(c), privateKey),
  };
}

/** True when `c` was signed by `publicKey` and says what it says. */
export function checkpointSignatureValid(c: Checkpoint, publicKey: KeyObject): boolean {
  if (c.keyId !== keyIdOf(publicKey)) return false;
  try {
    return verify(null, checkpointStatement(c), publicKey, c.signature);
  } catch {
    return false;
  }
}

/** A checkpoint as JSON (export trailers, retention records, GraphQL). */
export interface CheckpointJson {
  tenant: string;
  month: string;
  seq: number;
  hash: string;
  signedAt: string;
  keyId: string;
  signature: string;
}

export function checkpointToJson(c: Checkpoint): CheckpointJson {
  return {
    tenant: c.tenant,
    month: c.month.toISOString(),
    seq: c.seq,
    hash: c.hash.toString('hex'),
    signedAt: c.signedAt.toISOString(),
    keyId: c.keyId,
    signature: c.signature.toString('base64'),
  };
}

export function checkpointFromJson(j: CheckpointJson): Checkpoint {
  return {
    tenant: j.tenant,
    month: new Date(j.month),
    seq: j.seq,
    hash: Buffer.from(j.hash, 'hex'),
    signedAt: new Date(j.signedAt),
    keyId: j.keyId,
    signature: Buffer.from(j.signature, 'base64'),
  };
}

/** A public key the deployment trusts, or trusted, to sign checkpoints, with its period. */
export interface TrustedKey {
  keyId: string;
  publicKey: KeyObject;
  /** SPKI PEM. */
  publicKeyPem: string;
  /** Checkpoints signed from then on are accepted. */
  trustedFrom: Date;
  /** Checkpoints signed after this are not (null while the key is current). */
  retiredAt: Date | null;
  /**
   * A retired key's endorsement: its successor's signature over `keyPeriodStatement` (this key,
   * its period, the successor's id). Whoever can only write the database cannot make one, so a
   * key slipped into the list is not vouched for (see vouchedKeys). Null while current.
   */
  endorsedBy: string | null;
  endorsement: Buffer | null;
  /**
   * A retired key's own signature over `retirementStatement` (made when the rotation held it):
   * what tells an instance still holding it that the retirement is real.
   */
  retirementNotice: Buffer | null;
}

/**
 * Slack at both ends of a key's period. Instances sign with their own clocks, and one still
 * holding a key that was just retired may be signing a round it began before it noticed (it
 * checks before every round): a minute of skew and lag is taken, and no more.
 */
export const KEY_PERIOD_SLACK_MS = 60_000;

/**
 * How long before its month a checkpoint may be signed: an event may be accepted up to
 * MAX_FUTURE_SKEW_MS (at most a day) ahead of the clock, and its month's chain signed then.
 */
export const MONTH_LEAD_MS = 86_400_000 + KEY_PERIOD_SLACK_MS;

/** A key and its period as JSON (GraphQL, the CLI's `--json`, export trailers, `--keys`). */
export interface TrustedKeyJson {
  keyId: string;
  publicKeyPem: string;
  trustedFrom: string;
  retiredAt: string | null;
  endorsedBy?: string | null;
  /** Base64. */
  endorsement?: string | null;
}

export function trustedKeyToJson(k: TrustedKey): TrustedKeyJson {
  return {
    keyId: k.keyId,
    publicKeyPem: k.publicKeyPem,
    trustedFrom: k.trustedFrom.toISOString(),
    retiredAt: k.retiredAt?.toISOString() ?? null,
    endorsedBy: k.endorsedBy,
    endorsement: k.endorsement?.toString('base64') ?? null,
  };
}

/** A key from its JSON; throws when the PEM is not an Ed25519 public key or a date is not one. */
export function trustedKeyFromJson(j: TrustedKeyJson): TrustedKey {
  const publicKey = createPublicKey(j.publicKeyPem);
  if (publicKey.asymmetricKeyType !== 'ed25519') throw new Error('not an Ed25519 public key');
  const trustedFrom = new Date(j.trustedFrom);
  const retiredAt = j.retiredAt === null ? null : new Date(j.retiredAt);
  if (Number.isNaN(trustedFrom.getTime()) || (retiredAt && Number.isNaN(retiredAt.getTime()))) {
    throw new Error('trustedFrom and retiredAt must be ISO 8601 instants');
  }
  return {
    keyId: keyIdOf(publicKey),
    publicKey,
    publicKeyPem: j.publicKeyPem,
    trustedFrom,
    retiredAt,
    endorsedBy: j.endorsedBy ?? null,
    endorsement: j.endorsement ? Buffer.from(j.endorsement, 'base64') : null,
    retirementNotice: null,
  };
}

/** The bytes a successor signs to vouch for the key it replaces: RFC 8785 canonical JSON. */
export function keyPeriodStatement(
  k: Pick<TrustedKey, 'keyId' | 'publicKeyPem' | 'trustedFrom'> & { retiredAt: Date },
  successor: string,
): Buffer {
  return Buffer.from(
    canonicalize({
      v: 'auditgraph-key-v1',
      keyId: k.keyId,
      publicKey: k.publicKeyPem,
      trustedFrom: k.trustedFrom.toISOString(),
      retiredAt: k.retiredAt.toISOString(),
      successor,
    }) as string,
    'utf8',
  );
}

/** The bytes a key signs to say it was retired in favour of `successor`: RFC 8785 canonical JSON. */
export function retirementStatement(keyId: string, retiredAt: Date, successor: string): Buffer {
  return Buffer.from(
    canonicalize({
      v: 'auditgraph-key-retired-v1',
      keyId,
      retiredAt: retiredAt.toISOString(),
      successor,
    }) as string,
    'utf8',
  );
}

/** True when `k` itself signed its retirement (see retirementStatement). */
export function retiredByItself(k: TrustedKey): boolean {
  if (k.retiredAt === null || k.retirementNotice === null || k.endorsedBy === null) return false;
  try {
    return verify(
      null,
      retirementStatement(k.keyId, k.retiredAt, k.endorsedBy),
      k.publicKey,
      k.retirementNotice,
    );
  } catch {
    return false;
  }
}

/**
 * The keys `anchor` vouches for: itself, the key it endorsed (the one it replaced), the key that
 * one endorsed, and so on back to the first; oldest first. A key that no vouched-for key
 * endorsed — slipped into the list, or whose period was changed after it was signed — is left
 * out, and `broken` names those older than the anchor. Keys newer than the anchor are not
 * vouched for either (they replaced it). The anchor is trusted as it is: it is the key the
 * caller holds (an instance's own) or was given (an auditor's).
 */
export function vouchedKeys(
  keys: readonly TrustedKey[],
  anchor: string,
): { keys: TrustedKey[]; broken: string | null } {
  const found = keys.find((k) => k.keyId === anchor);
  if (!found) return { keys: [], broken: `the key ${anchor.slice(0, 16)}… is not in the list` };
  // A retirement in the anchor's own row counts only when the anchor signed it: a successor's
  // endorsement proves nothing to the key it replaces (whoever made the successor made that).
  const first =
    found.retiredAt === null || retiredByItself(found)
      ? found
      : { ...found, retiredAt: null, endorsedBy: null, endorsement: null, retirementNotice: null };
  const vouched = [first];
  for (;;) {
    const successor = vouched.at(-1)!;
    const replaced = keys.find((k) => !vouched.includes(k) && endorsedBy(k, successor));
    if (!replaced) break;
    vouched.push(replaced);
  }
  const stray = keys.filter(
    (k) => !vouched.includes(k) && k.trustedFrom.getTime() < first.trustedFrom.getTime(),
  );
  return {
    keys: vouched.reverse(),
    broken: stray.length
      ? `no key of the deployment endorses ${stray.map((k) => `${k.keyId.slice(0, 16)}…`).join(', ')}`
      : null,
  };
}

/** True when `successor` signed `k`'s period. */
function endorsedBy(k: TrustedKey, successor: TrustedKey): boolean {
  if (k.retiredAt === null || k.endorsement === null || k.endorsedBy !== successor.keyId) {
    return false;
  }
  const statement = keyPeriodStatement({ ...k, retiredAt: k.retiredAt }, successor.keyId);
  try {
    return verify(null, statement, successor.publicKey, k.endorsement);
  } catch {
    return false;
  }
}

/**
 * Why `c` is not vouched for by `keys` — its key is not among them, it was signed outside its
 * key's period, or its signature does not hold — or null when it is. Keys without a period
 * (`trustedFrom` at the epoch and never retired) accept any `signedAt`.
 */
export function untrustedBecause(keys: readonly TrustedKey[], c: Checkpoint): string | null {
  const k = keys.find((key) => key.keyId === c.keyId);
  const at = c.signedAt.toISOString();
  if (!k) {
    return `it is signed by key ${c.keyId.slice(0, 16)}…, not one of the deployment's vouched-for keys`;
  }
  if (c.signedAt.getTime() < c.month.getTime() - MONTH_LEAD_MS) {
    // Its events cannot have existed yet: no key vouches for a month ahead of time, so a key
    // retired (and perhaps leaked) cannot vouch for a month that began after its retirement.
    return `it was signed at ${at}, before its month (${c.month.toISOString()}) began`;
  }
  if (c.signedAt.getTime() < k.trustedFrom.getTime() - KEY_PERIOD_SLACK_MS) {
    return `it was signed at ${at}, before its key ${k.keyId.slice(0, 16)}… was trusted (${k.trustedFrom.toISOString()})`;
  }
  if (k.retiredAt && c.signedAt.getTime() > k.retiredAt.getTime() + KEY_PERIOD_SLACK_MS) {
    return `it was signed at ${at}, after its key ${k.keyId.slice(0, 16)}… was retired (${k.retiredAt.toISOString()})`;
  }
  if (!checkpointSignatureValid(c, k.publicKey)) return 'its signature does not hold';
  return null;
}
