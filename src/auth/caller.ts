import type { Config } from '../config.js';
import type { ApiKeyStore } from '../db/api-key-store.js';
import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import {
  type ApiKeyRecord,
  apiKeyProblem,
  hashApiKey,
  looksLikeApiKey,
  SCOPES,
  type Scope,
} from '../domain/api-key.js';
import { ForbiddenError, UnauthenticatedError, UnknownTenantError } from '../domain/errors.js';
import { type TenantId, tenantIdProblem } from '../domain/tenant.js';
import { looksLikeJwt, type TokenVerifier } from './tokens.js';

/**
 * Who is calling, from the request and only from it.
 *
 * - AUTH_MODE=dev: nobody is authenticated; the tenant is the `x-tenant-id` header (or the
 *   `tenantId` of a WebSocket's connection_init) and every scope is granted.
 * - AUTH_MODE=keys: `Authorization: Bearer <key>` (on WebSocket: `authorization` in the
 *   connection_init payload). The tenant and the scopes are the key's. A request that names a
 *   tenant itself (`x-tenant-id`) is refused: it could only be a mistake or an attempt.
 * - AUTH_MODE=jwt: the same header carries a person's token (auth/tokens.ts); the tenant is its
 *   tenant claim, found in the tenant table, the scopes its `scope`/`scp`, the actor its `sub`.
 *   AUTH_MODE=keys+jwt takes either: an API key is told from a token by its shape.
 *
 * A refusal is not thrown here: it is carried in the context, and every field the caller asks
 * for answers it as a GraphQL error (UNAUTHENTICATED, FORBIDDEN; see graphql/error-mapping.ts).
 */

/**
 * Who is calling: in AUTH_MODE=dev a tenant claim, unchecked; in AUTH_MODE=keys
 * a valid key; or a refusal that every field answers as its typed error.
 */
export type Caller =
  | { kind: 'dev'; tenantClaim: string | null }
  | { kind: 'key'; key: ApiKeyRecord; keyHash: string }
  | {
      kind: 'token';
      tenantId: string;
      scopes: readonly Scope[];
      subject: string;
      /** `exp`, epoch ms: a subscription it opened ends then. */
      expiresAt: number;
    }
  | { kind: 'refused'; error: CallerRefusal };

export type CallerRefusal = UnauthenticatedError | ForbiddenError | UnknownTenantError;

/** The tenant of an authenticated caller (null: a platform key); dev callers only claim one. */
export function credentialTenant(
  caller: Extract<Caller, { kind: 'key' } | { kind: 'token' }>,
): string | null {
  return caller.kind === 'key' ? caller.key.tenantId : caller.tenantId;
}

/**
 * Calls `end` when what the caller authenticated with stops being valid while something it
 * opened is still open: a key's revocation or expiry (through the key watcher), a token's `exp`.
 * Answers what stops watching.
 */
export function watchCredential(
  caller: Caller,
  keyWatcher: { watch(keyHash: string, onEnd: (err: Error) => void): () => void },
  end: (err: Error) => void,
): (() => void) | undefined {
  if (caller.kind === 'key') return keyWatcher.watch(caller.keyHash, end);
  if (caller.kind !== 'token') return undefined;
  // setTimeout holds at most 2^31-1 ms (~24.8 days); a token living longer is re-armed.
  let timer: NodeJS.Timeout;
  const arm = () => {
    const left = caller.expiresAt - Date.now();
    if (left <= 0) {
      end(new UnauthenticatedError('the token has expired'));
      return;
    }
    timer = setTimeout(arm, Math.min(left, 2_147_483_647));
    timer.unref();
  };
  arm();
  return () => clearTimeout(timer);
}

export const TENANT_HEADER = 'x-tenant-id';

/** What authentication reads: the mode, and the key store (through its cache). */
export interface Authenticator {
  config: Pick<Config, 'authMode'>;
  apiKeys: Pick<ApiKeyStore, 'byHash' | 'touch'>;
  /** Set when the mode takes tokens. */
  tokens: TokenVerifier | null;
  /** Whether a token's tenant exists (remembered once seen: no round trip per request). */
  tenants: Pick<TenantProvisioner, 'ensure'>;
}

/** What a bearer value may be in this mode, for the messages that ask for one. */
function bearerName(mode: Config['authMode']): string {
  return mode === 'keys' ? '<key>' : mode === 'jwt' ? '<token>' : '<key or token>';
}

/** What the caller may do: everything in dev mode, the key's scopes with a key, nothing refused. */
export function grantedScopes(caller: Caller): ReadonlySet<Scope> {
  if (caller.kind === 'dev') return new Set(SCOPES);
  if (caller.kind === 'key') return new Set(caller.key.scopes);
  if (caller.kind === 'token') return new Set(caller.scopes);
  return new Set();
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** The caller of an HTTP or SSE request. */
export async function authenticateRequest(
  services: Authenticator,
  headers: Headers,
): Promise<Caller> {
  if (services.config.authMode === 'dev') {
    return { kind: 'dev', tenantClaim: headers.get(TENANT_HEADER) };
  }
  const mode = services.config.authMode;
  if (headers.has(TENANT_HEADER)) {
    return refused(
      new ForbiddenError(
        `the ${TENANT_HEADER} header is not accepted with AUTH_MODE=${mode}: the tenant is the credential's`,
      ),
    );
  }
  const header = headers.get('authorization');
  if (header === null || header === '') {
    return refused(
      new UnauthenticatedError(
        `an "Authorization: Bearer ${bearerName(mode)}" header is required (AUTH_MODE=${mode})`,
      ),
    );
  }
  const match = BEARER.exec(header);
  if (!match) {
    return refused(
      new UnauthenticatedError(`the Authorization header must be "Bearer ${bearerName(mode)}"`),
    );
  }
  return authenticateBearer(services, match[1]!);
}

/** The caller of a WebSocket connection, from its connection_init payload. */
export async function authenticateConnection(
  services: Authenticator,
  params: Record<string, unknown> | undefined,
): Promise<Caller> {
  if (services.config.authMode === 'dev') {
    const claim = params?.tenantId;
    return { kind: 'dev', tenantClaim: typeof claim === 'string' ? claim : null };
  }
  const mode = services.config.authMode;
  if (params && 'tenantId' in params) {
    return refused(
      new ForbiddenError(
        `tenantId is not accepted with AUTH_MODE=${mode}: the tenant is the credential’s`,
      ),
    );
  }
  const value = params?.authorization;
  if (typeof value !== 'string' || value === '') {
    return refused(
      new UnauthenticatedError(
        `the connection_init payload must carry authorization: "Bearer ${bearerName(mode)}" (AUTH_MODE=${mode})`,
      ),
    );
  }
  const match = BEARER.exec(value);
  if (!match) {
    return refused(new UnauthenticatedError(`authorization must be "Bearer ${bearerName(mode)}"`));
  }
  return authenticateBearer(services, match[1]!);
}

/**
 * The caller of one WebSocket operation: the connection's key looked up again (through the key
 * cache, which a revocation invalidates on every instance), so a key revoked or expired since
 * connection_init is refused from its next operation. Throws when the key cannot be looked up.
 */
export async function recheckCaller(services: Authenticator, caller: Caller): Promise<Caller> {
  if (caller.kind === 'token') {
    return Date.now() < caller.expiresAt
      ? caller
      : refused(new UnauthenticatedError('the token has expired'));
  }
  if (caller.kind !== 'key') return caller;
  const key = await services.apiKeys.byHash(caller.keyHash);
  if (!key) return refused(new UnauthenticatedError('the API key is not valid'));
  const problem = apiKeyProblem(key);
  if (problem) return refused(new UnauthenticatedError(problem));
  services.apiKeys.touch(key);
  return { kind: 'key', key, keyHash: caller.keyHash };
}

/** A bearer value: an API key or a token, as the mode takes them, told apart by their shape. */
function authenticateBearer(services: Authenticator, value: string): Promise<Caller> {
  const mode = services.config.authMode;
  if (services.tokens && (mode === 'jwt' || (!looksLikeApiKey(value) && looksLikeJwt(value)))) {
    return authenticateToken(services, services.tokens, value);
  }
  return authenticateKey(services, value);
}

/**
 * A person's token: verified, then its tenant claim looked up in the tenant table — a claim
 * names a tenant that exists, it never makes one (and never reaches a schema name unchecked).
 */
async function authenticateToken(
  services: Authenticator,
  tokens: TokenVerifier,
  token: string,
): Promise<Caller> {
  let claims: Awaited<ReturnType<TokenVerifier['verify']>>;
  try {
    claims = await tokens.verify(token);
  } catch (err) {
    if (err instanceof UnauthenticatedError) return refused(err);
    throw err;
  }
  const tenant = claims.tenantClaim;
  if (tenant === null || tenantIdProblem(tenant) !== null) {
    return refused(new UnauthenticatedError('the token names no valid tenant'));
  }
  try {
    await services.tenants.ensure(tenant as TenantId, false);
  } catch (err) {
    if (err instanceof UnknownTenantError) return refused(err);
    throw err;
  }
  return {
    kind: 'token',
    tenantId: tenant,
    scopes: claims.scopes,
    subject: claims.subject,
    expiresAt: claims.expiresAt,
  };
}

async function authenticateKey(services: Authenticator, secret: string): Promise<Caller> {
  // One answer for malformed and unknown keys: a caller learns nothing by guessing.
  const invalid = () => refused(new UnauthenticatedError('the API key is not valid'));
  if (!looksLikeApiKey(secret)) return invalid();
  const keyHash = hashApiKey(secret);
  const key = await services.apiKeys.byHash(keyHash);
  if (!key) return invalid();
  const problem = apiKeyProblem(key);
  if (problem) return refused(new UnauthenticatedError(problem));
  services.apiKeys.touch(key);
  return { kind: 'key', key, keyHash };
}

function refused(error: CallerRefusal): Caller {
  return { kind: 'refused', error };
}
