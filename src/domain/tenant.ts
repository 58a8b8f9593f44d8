import { ValidationError } from './errors.js';

/** The control schema: tenants, migrations ledger. Never a tenant. */
export const CONTROL_SCHEMA = 'auditgraph';

const TENANT_PATTERN = /^[a-z][a-z0-9_]{0,39}$/;

/** Branded so a raw header string can never be passed where a checked tenant id is expected. */
export type TenantId = string & { readonly __brand: 'TenantId' };

/** Why `raw` is not a usable tenant id, or null when it is. */
export function tenantIdProblem(raw: string): string | null {
  if (!TENANT_PATTERN.test(raw)) return 'must match ^[a-z][a-z0-9_]{0,39}$';
  if (
    raw === 'public' ||
    raw === 'information_schema' ||
    raw.startsWith('pg_') ||
    raw === CONTROL_SCHEMA
  ) {
    return 'is a reserved name';
  }
  return null;
}

export function parseTenantId(raw: string): TenantId {
  const problem = tenantIdProblem(raw);
  if (problem) throw ValidationError.single('tenantId', `tenant id ${problem}`);
  return raw as TenantId;
}

/** The PostgreSQL schema that holds a tenant's events. Safe as an identifier by construction. */
export function tenantSchema(tenant: TenantId): string {
  return `t_${tenant}`;
}

/** The tenant whose schema is `schema` (the inverse of tenantSchema). */
export function tenantOfSchema(schema: string): TenantId {
  if (!schema.startsWith('t_')) throw new Error(`"${schema}" is not a tenant schema`);
  return parseTenantId(schema.slice(2));
}
