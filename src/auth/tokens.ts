import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import type { JwtConfig } from '../config.js';
import { SCOPES, type Scope } from '../domain/api-key.js';
import { UnauthenticatedError } from '../domain/errors.js';

/** What a verified token says of its bearer. */
export interface TokenClaims {
  /** The tenant claim's value, unchecked: the caller looks it up in the tenant table. */
  tenantClaim: string | null;
  scopes: Scope[];
  /** `sub`: the person, the actor of the access records of what they do. */
  subject: string;
  /** `exp`, epoch ms. */
  expiresAt: number;
}

/** A bearer value shaped like a JWS (three base64url parts), as opposed to an API key. */
export function looksLikeJwt(value: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value);
}

/**
 * Verifies people's tokens with jose: the signature against the issuer's JWKS (fetched, cached,
 * refetched on an unknown `kid`, at most every JWT_JWKS_COOLDOWN_MS) or one configured public
 * key, with only the asymmetric algorithms configured (`none` and HS* are never accepted, so a
 * public key cannot be used as an HMAC secret); `iss`, `aud`, `exp` (required) and `nbf` with
 * JWT_CLOCK_TOLERANCE_S of leeway; `sub` required.
 *
 * A token that fails any check is an UnauthenticatedError saying which. A JWKS that cannot be
 * fetched is not the caller's fault: that is thrown as is (the request answers 503).
 */
export class TokenVerifier {
  private readonly key: JWTVerifyGetKey | KeyObject;

  constructor(private readonly config: JwtConfig) {
    this.key = config.jwksUrl
      ? createRemoteJWKSet(new URL(config.jwksUrl), {
          cooldownDuration: config.jwksCooldownMs,
          cacheMaxAge: 10 * 60_000,
          timeoutDuration: 5_000,
        })
      : createPublicKey(readFileSync(config.publicKeyFile!, 'utf8'));
  }

  async verify(token: string): Promise<TokenClaims> {
    let payload: JWTPayload;
    try {
      const verified = await jwtVerify(token, this.key as JWTVerifyGetKey, {
        issuer: this.config.issuer,
        audience: this.config.audience,
        algorithms: [...this.config.algorithms],
        clockTolerance: this.config.clockToleranceS,
        requiredClaims: ['exp', 'sub'],
      });
      payload = verified.payload;
    } catch (err) {
      throw refusalOf(err);
    }
    const claim = payload[this.config.tenantClaim];
    return {
      tenantClaim: typeof claim === 'string' ? claim : null,
      scopes: scopesOf(payload),
      subject: payload.sub!,
      expiresAt: payload.exp! * 1000,
    };
  }
}

/** The token's refusal; what is not about the token (the JWKS unreachable) is thrown on. */
function refusalOf(err: unknown): unknown {
  if (err instanceof errors.JWTExpired) return new UnauthenticatedError('the token has expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    return new UnauthenticatedError(`the token is not valid: ${err.message}`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed) {
    return new UnauthenticatedError('the token is not valid: its algorithm is not accepted');
  }
  if (err instanceof errors.JWKSNoMatchingKey) {
    return new UnauthenticatedError('the token is not valid: no key of the issuer matches it');
  }
  if (err instanceof errors.JWKSTimeout || err instanceof errors.JWKSInvalid) return err;
  if (err instanceof errors.JOSEError) {
    // A bad signature, a malformed token: one answer, nothing to learn from it.
    return new UnauthenticatedError('the token is not valid');
  }
  return err;
}

/** `scope` (space-separated) or `scp` (a list or a string), keeping this service's scopes. */
function scopesOf(payload: JWTPayload): Scope[] {
  const raw = payload.scope ?? payload.scp;
  const given =
    typeof raw === 'string'
      ? raw.split(' ')
      : Array.isArray(raw)
        ? raw.filter((s): s is string => typeof s === 'string')
        : [];
  const known = new Set<string>(SCOPES);
  return [...new Set(given)].filter((s): s is Scope => known.has(s));
}
