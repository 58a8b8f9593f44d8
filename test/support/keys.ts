import type { Scope } from '../../src/domain/api-key.js';
import type { TenantId } from '../../src/domain/tenant.js';
import { graphqlClient, startApp, type TestApp } from './harness.js';

/**
 * AUTH_MODE=keys apps and clients. `startApp` keeps AUTH_MODE=dev (every other test file relies
 * on it); tests of authentication start theirs here.
 */
export function startKeysApp(env: Record<string, string> = {}): Promise<TestApp> {
  return startApp({
    AUTH_MODE: 'keys',
    // Every use writes last_used_at: tests can see it.
    API_KEY_TOUCH_INTERVAL_MS: '0',
    AUTH_RECHECK_MS: '200',
    ...env,
  });
}

export interface TestKey {
  id: string;
  secret: string;
  tenant: string | null;
  scopes: Scope[];
  label: string;
}

/** Creates a key directly in the store (as `npm run keys` does); the tenant is provisioned first. */
export async function createKey(
  t: TestApp,
  tenant: string | null,
  scopes: Scope[],
  opts: { label?: string; expiresAt?: Date } = {},
): Promise<TestKey> {
  if (tenant !== null) await t.app.services.tenants.provision(tenant as TenantId);
  const label = opts.label ?? `test-${scopes.join('+') || 'none'}`;
  const { key, secret } = await t.app.services.apiKeys.create({
    tenantId: tenant as TenantId | null,
    scopes,
    label,
    expiresAt: opts.expiresAt ?? null,
  });
  return { id: key.id, secret, tenant, scopes, label };
}

export function bearer(secret: string): Record<string, string> {
  return { authorization: `Bearer ${secret}` };
}

/** `gql` and `raw` as the holder of `secret` (no x-tenant-id). */
export function keyClient(t: TestApp, secret: string) {
  const c = graphqlClient(t.url);
  return {
    gql: async <T = Record<string, any>>(query: string, variables?: Record<string, unknown>) => {
      const { body } = await c.raw(null, { query, variables }, bearer(secret));
      if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
      return body.data as T;
    },
    raw: (body: unknown, headers: Record<string, string> = {}) =>
      c.raw(null, body, { ...bearer(secret), ...headers }),
    /** The first GraphQL error of an operation that must be refused (see TestApp.refused). */
    refused: (query: string, variables?: Record<string, unknown>) =>
      c.refused(null, query, variables, bearer(secret)),
  };
}
