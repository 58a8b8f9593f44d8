import type { Config } from '../config.js';
import type { ApiKeyStore } from '../db/api-key-store.js';
import {
  type ApiKeyRecord,
  apiKeyProblem,
  hashApiKey,
  looksLikeApiKey,
  SCOPES,
  type Scope,
} from '../domain/api-key.js';
import { ForbiddenError, UnauthenticatedError } from '../domain/errors.js';

/**
 * Who is calling, from the request and only from it.
 *
 * - AUTH_MODE=dev: nobody is authenticated; the tenant is the `x-tenant-id` header (or the
 *   `tenantId` of a WebSocket's connection_init) and every scope is granted.
 * - AUTH_MODE=keys: `Authorization: Bearer <key>` (on WebSocket: `authorization` in the
 *   connection_init payload). The tenant and the scopes are the key's. A request that names a
 *   tenant itself (`x-tenant-id`) is refused: it could only be a mistake or an attempt.
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
  | { kind: 'refused'; error: UnauthenticatedError | ForbiddenError };

export const TENANT_HEADER = 'x-tenant-id';

/** What authentication reads: the mode, and the key store (through its cache). */
export interface Authenticator {
  config: Pick<Config, 'authMode'>;
  apiKeys: Pick<ApiKeyStore, 'byHash' | 'touch'>;
}

/** What the caller may do: everything in dev mode, the key's scopes with a key, nothing refused. */
export function grantedScopes(caller: Caller): ReadonlySet<Scope> {
  if (caller.kind === 'dev') return new Set(SCOPES);
  if (caller.kind === 'key') return new Set(caller.key.scopes);
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
  if (headers.has(TENANT_HEADER)) {
    return refused(
      new ForbiddenError(
        `the ${TENANT_HEADER} header is not accepted with AUTH_MODE=keys: the tenant is the API key's`,
      ),
    );
  }
  const header = headers.get('authorization');
  if (header === null || header === '') {
    return refused(
      new UnauthenticatedError(
        'an "Authorization: Bearer <key>" header is required (AUTH_MODE=keys)',
      ),
    );
  }
  const match = BEARER.exec(header);
  if (!match) {
    return refused(new UnauthenticatedError('the Authorization header must be "Bearer <key>"'));
  }
  return authenticateKey(services, match[1]!);
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
  if (params && 'tenantId' in params) {
    return refused(
      new ForbiddenError(
        'tenantId is not accepted with AUTH_MODE=keys: the tenant is the API key’s',
      ),
    );
  }
  const value = params?.authorization;
  if (typeof value !== 'string' || value === '') {
    return refused(
      new UnauthenticatedError(
        'the connection_init payload must carry authorization: "Bearer <key>" (AUTH_MODE=keys)',
      ),
    );
  }
  const match = BEARER.exec(value);
  if (!match) return refused(new UnauthenticatedError('authorization must be "Bearer <key>"'));
  return authenticateKey(services, match[1]!);
}

/**
 * The caller of one WebSocket operation: the connection's key looked up again (through the key
 * cache, which a revocation invalidates on every instance), so a key revoked or expired since
 * connection_init is refused from its next operation. Throws when the key cannot be looked up.
 */
export async function recheckCaller(services: Authenticator, caller: Caller): Promise<Caller> {
  if (caller.kind !== 'key') return caller;
  const key = await services.apiKeys.byHash(caller.keyHash);
  if (!key) return refused(new UnauthenticatedError('the API key is not valid'));
  const problem = apiKeyProblem(key);
  if (problem) return refused(new UnauthenticatedError(problem));
  services.apiKeys.touch(key);
  return { kind: 'key', key, keyHash: caller.keyHash };
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

function refused(error: UnauthenticatedError | ForbiddenError): Caller {
  return { kind: 'refused', error };
}
