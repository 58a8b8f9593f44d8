import { createHash, randomBytes } from 'node:crypto';
import { ValidationError } from './errors.js';
import { type TenantId, tenantIdProblem } from './tenant.js';

/**
 * What a key may do. A tenant key holds any of the first four and acts on its own tenant only;
 * a platform key is bound to no tenant and holds exactly `tenants:admin`.
 */
export const SCOPES = [
  'events:write',
  'events:read',
  'deadletters:admin',
  'audit:admin',
  'tenants:admin',
] as const;
export type Scope = (typeof SCOPES)[number];

/** Scopes a tenant key may hold. */
export const TENANT_SCOPES: readonly Scope[] = [
  'events:write',
  'events:read',
  'deadletters:admin',
  'audit:admin',
];

/** `agk_` and 43 base64url characters: 32 random bytes. The prefix makes leaked keys greppable. */
const KEY_PATTERN = /^agk_[A-Za-z0-9_-]{43}$/;
const KEY_BYTES = 32;

/** How many characters of a key are kept in clear to tell keys apart in listings (`agk_` + 8). */
export const KEY_PREFIX_LENGTH = 12;

export const LABEL_MAX = 100;

/** An API key as stored: never the key itself, only its hash. */
export interface ApiKeyRecord {
  id: string;
  /** null for a platform key. */
  tenantId: TenantId | null;
  scopes: Scope[];
  label: string;
  /** The first characters of the key (`agk_` + 8), to recognise it; not enough to use it. */
  prefix: string;
  createdAt: Date;
  lastUsedAt: Date | null;
  expiresAt: Date | null;
  revokedAt: Date | null;
}

/** A new random key: the text to hand out once, and what is stored of it. */
export function generateApiKey(): { secret: string; hash: string; prefix: string } {
  const secret = `agk_${randomBytes(KEY_BYTES).toString('base64url')}`;
  return { secret, hash: hashApiKey(secret), prefix: secret.slice(0, KEY_PREFIX_LENGTH) };
}

/**
 * The stored form of a key. A key has 256 random bits, so a plain SHA-256 is enough: there is
 * nothing to brute-force that a slow hash would protect (unlike a password).
 */
export function hashApiKey(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Whether `text` is shaped like a key (checked before any look-up). */
export function looksLikeApiKey(text: string): boolean {
  return KEY_PATTERN.test(text);
}

/** Why a key is not usable at `now`, or null when it is. */
export function apiKeyProblem(key: ApiKeyRecord, now = new Date()): string | null {
  if (key.revokedAt && key.revokedAt.getTime() <= now.getTime()) return 'the API key was revoked';
  if (key.expiresAt && key.expiresAt.getTime() <= now.getTime()) return 'the API key has expired';
  return null;
}

export function isScope(s: string): s is Scope {
  return (SCOPES as readonly string[]).includes(s);
}

export interface NewApiKey {
  tenantId: TenantId | null;
  scopes: Scope[];
  label: string;
  expiresAt: Date | null;
}

/**
 * Checks what a new key would be. A platform key (no tenant) holds exactly `tenants:admin`; a
 * tenant key holds one or more tenant scopes and never `tenants:admin`, so no key is both.
 */
export function validateNewApiKey(
  input: {
    tenantId: string | null;
    scopes: readonly string[];
    label: string;
    expiresAt: Date | null;
  },
  now = new Date(),
): NewApiKey {
  const issues: { index: null; field: string; message: string }[] = [];
  const bad = (field: string, message: string) => issues.push({ index: null, field, message });
  const scopes = [...new Set(input.scopes)];
  for (const s of scopes) if (!isScope(s)) bad('scopes', `unknown scope "${s.slice(0, 50)}"`);
  if (input.tenantId === null) {
    if (scopes.length !== 1 || scopes[0] !== 'tenants:admin') {
      bad('scopes', 'a platform key (no tenant) holds exactly tenants:admin');
    }
  } else {
    const problem = tenantIdProblem(input.tenantId);
    if (problem) bad('tenantId', `tenant id ${problem}`);
    if (scopes.length === 0) bad('scopes', 'at least one scope is required');
    if (scopes.includes('tenants:admin')) {
      bad('scopes', 'tenants:admin is for platform keys only (no tenant)');
    }
  }
  const label = input.label.trim();
  if (label.length < 1 || label.length > LABEL_MAX) {
    bad('label', `must be 1 to ${LABEL_MAX} characters`);
  } else if (!label.isWellFormed() || /\p{Cc}/u.test(label)) {
    bad('label', 'must not contain control characters');
  }
  if (input.expiresAt !== null) {
    if (Number.isNaN(input.expiresAt.getTime())) bad('expiresAt', 'must be a valid date-time');
    else if (input.expiresAt.getTime() <= now.getTime()) bad('expiresAt', 'must be in the future');
  }
  if (issues.length > 0) throw new ValidationError(issues);
  return {
    tenantId: input.tenantId as TenantId | null,
    scopes: SCOPES.filter((s) => scopes.includes(s)),
    label,
    expiresAt: input.expiresAt,
  };
}
