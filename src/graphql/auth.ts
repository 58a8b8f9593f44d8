import { grantedScopes } from '../auth/caller.js';
import type { Scope } from '../domain/api-key.js';
import { ForbiddenError } from '../domain/errors.js';
import type { GraphQLContext } from './context.js';

/*
 * What a caller may do, as Pothos scope-auth asks (who the caller is: src/auth/caller.ts).
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
