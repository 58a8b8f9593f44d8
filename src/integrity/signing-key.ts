import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { keyIdOf } from '../domain/checkpoint.js';

/** The Ed25519 key pair that signs checkpoints, and how it is named. */
export interface SigningKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** SHA-256 of the public key (SPKI DER), hex. */
  keyId: string;
  /** The public key as SPKI PEM: give it to whoever verifies exports. */
  publicKeyPem: string;
  /** True when this process made the key file (there was none): see CheckpointKeyring.adopt. */
  createdNow?: boolean;
}

export function signingKeyFrom(privateKey: KeyObject): SigningKey {
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new Error(`checkpoint key must be Ed25519, not ${privateKey.asymmetricKeyType}`);
  }
  const publicKey = createPublicKey(privateKey);
  return {
    privateKey,
    publicKey,
    keyId: keyIdOf(publicKey),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A new Ed25519 private key, as PKCS#8 PEM. */
export function newSigningKeyPem(): string {
  return generateKeyPairSync('ed25519')
    .privateKey.export({ type: 'pkcs8', format: 'pem' })
    .toString();
}

/** The signing key in `pem` (PKCS#8); throws when it is not an Ed25519 private key. */
export function signingKeyOfPem(pem: string): SigningKey {
  return signingKeyFrom(createPrivateKey(pem));
}

/**
 * Reads the checkpoint signing key (PKCS#8 PEM), creating it when the file does not exist. The
 * new file appears atomically (written aside, then hard-linked into place), so instances that
 * start together on a shared volume all end up with the one key that won. Whether a new key
 * may stand is the deployment's to say (CheckpointKeyring.adopt): only its first instance's does.
 */
export function loadSigningKey(file: string): SigningKey {
  let pem: string;
  let createdNow = false;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    mkdirSync(dirname(file), { recursive: true });
    const aside = `${file}.${process.pid}.${Date.now()}.tmp`;
    writeFileSync(aside, newSigningKeyPem(), { mode: 0o600 });
    try {
      linkSync(aside, file);
      createdNow = true;
    } catch (linkErr) {
      if ((linkErr as NodeJS.ErrnoException).code !== 'EEXIST') throw linkErr;
    } finally {
      rmSync(aside, { force: true });
    }
    pem = readFileSync(file, 'utf8');
  }
  return { ...signingKeyFrom(createPrivateKey(pem)), createdNow };
}
