import type { IncomingMessage } from 'node:http';
import {
  apiKeyProblem,
  hashApiKey,
  looksLikeApiKey,
  SCOPES,
  type Scope,
} from '../domain/api-key.js';
import { ForbiddenError, UnauthenticatedError } from '../domain/errors.js';
import { type Caller, type GraphQLContext, type Services, TENANT_HEADER } from './context.js';

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
 * for answers it as a GraphQL error (UNAUTHENTICATED, FORBIDDEN; see error-mapping.ts).
 */

/** Scope names as Pothos scope-auth knows them (identifiers), and the scope each stands for. */
export const SCOPE_OF = {
  eventsWrite: 'events:write',
  eventsRead: 'events:read',
  deadlettersAdmin: 'deadletters:admin',
  auditAdmin: 'audit:admin',
  tenantsAdmin: 'tenants:admin',
} as const satisfies Record<string, Scope>;

export type ScopeName = keyof typeof SCOPE_OF;

export interface AuthScopes {
  eventsWrite: boolean;
  eventsRead: boolean;
  deadlettersAdmin: boolean;
  auditAdmin: boolean;
  tenantsAdmin: boolean;
}

/** What the caller may do: everything in dev mode, the key's scopes with a key, nothing refused. */
export function grantedScopes(caller: Caller): ReadonlySet<Scope> {
  if (caller.kind === 'dev') return new Set(SCOPES);
  if (caller.kind === 'key') return new Set(caller.key.scopes);
  return new Set();
}

/** The scope-auth initializer: one boolean per scope, for this request. */
export function authScopesOf(ctx: GraphQLContext): AuthScopes {
  const granted = grantedScopes(ctx.caller);
  return {
    eventsWrite: granted.has('events:write'),
    eventsRead: granted.has('events:read'),
    deadlettersAdmin: granted.has('deadletters:admin'),
    auditAdmin: granted.has('audit:admin'),
    tenantsAdmin: granted.has('tenants:admin'),
  };
}

/**
 * Throws unless the caller holds the scope: for checks that scope-auth cannot make on a field
 * (an object reached through `node(id:)`, whose type is only known once the id is read).
 */
export function requireScope(ctx: GraphQLContext, scope: ScopeName): void {
  if (ctx.caller.kind === 'refused') throw ctx.caller.error;
  if (!grantedScopes(ctx.caller).has(SCOPE_OF[scope])) {
    throw new ForbiddenError(`this API key lacks the scope ${SCOPE_OF[scope]}`);
  }
}

/**
 * The typed error for a failed scope check: the caller's own refusal when it has no valid
 * credential, else ForbiddenError naming the scope that is missing.
 */
export function scopeRefusal(ctx: GraphQLContext, failure: unknown): Error {
  if (ctx.caller.kind === 'refused') return ctx.caller.error;
  const scopes = missingScopes(failure);
  const named = scopes.length > 0 ? scopes.join(' or ') : 'a scope it does not have';
  return new ForbiddenError(`this API key lacks the scope ${named}`);
}

function missingScopes(failure: unknown): string[] {
  const f = failure as { scope?: string; failures?: unknown[] } | null;
  if (f && typeof f.scope === 'string' && f.scope in SCOPE_OF) {
    return [SCOPE_OF[f.scope as ScopeName]];
  }
  if (f && Array.isArray(f.failures)) return f.failures.flatMap(missingScopes);
  return [];
}

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** The caller of an HTTP or SSE request. */
export async function authenticateRequest(services: Services, headers: Headers): Promise<Caller> {
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

/** The fetch-style headers `authenticateRequest` reads, from a node request. */
export function fetchHeaders(req: IncomingMessage): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (value === undefined) continue;
    headers.set(name, Array.isArray(value) ? value.join(', ') : value);
  }
  return headers;
}

/** The caller of a WebSocket connection, from its connection_init payload. */
export async function authenticateConnection(
  services: Services,
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
export async function recheckCaller(services: Services, caller: Caller): Promise<Caller> {
  if (caller.kind !== 'key') return caller;
  const key = await services.apiKeys.byHash(caller.keyHash);
  if (!key) return refused(new UnauthenticatedError('the API key is not valid'));
  const problem = apiKeyProblem(key);
  if (problem) return refused(new UnauthenticatedError(problem));
  services.apiKeys.touch(key);
  return { kind: 'key', key, keyHash: caller.keyHash };
}

async function authenticateKey(services: Services, secret: string): Promise<Caller> {
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
