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
