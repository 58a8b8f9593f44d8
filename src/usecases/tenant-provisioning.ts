import type { TenantDirectory, TenantInfo } from '../db/tenant-directory.js';
import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import { UnknownTenantError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { Actor } from './actor.js';

/**
 * Provisioning a tenant — its schema, tables and partitions — or bringing an existing one up to
 * date, for `provisionTenant` and `npm run tenants -- provision` alike; recorded in the tenant's
 * own log either way.
 */
export class TenantProvisioning {
  constructor(
    private readonly tenants: TenantProvisioner,
    private readonly directory: TenantDirectory,
  ) {}

  /** Idempotent: `created` is false when the tenant existed already. */
  async provision(
    actor: Actor,
    tenant: TenantId,
  ): Promise<{ tenant: TenantInfo; created: boolean }> {
    const existed = await this.directory.exists(tenant);
    await this.tenants.provision(tenant);
    const info = await this.directory.get(tenant);
    if (!info) throw new UnknownTenantError(tenant);
    await actor.recordAccess({
      tenant,
      eventType: 'auditgraph.tenant.provisioned',
      action: 'provision',
      resource: { type: 'tenant', id: tenant },
      data: { created: !existed },
    });
    return { tenant: info, created: !existed };
  }
}
