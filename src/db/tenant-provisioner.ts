import { UnknownTenantError } from '../domain/errors.js';
import { CONTROL_SCHEMA, type TenantId, tenantIdProblem, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { Database } from './client.js';
import type { Migrator } from './migrations.js';
import type { PartitionManager } from './partitions.js';

/**
 * Which tenants exist. A tenant is usable once its row is in `auditgraph.tenants` and its schema
 * is migrated; this process caches the tenants it has seen ready, so the hot path does not ask
 * the database each time.
 */
export class TenantProvisioner {
  private readonly ready = new Set<string>();
  private readonly provisioning = new Map<string, Promise<void>>();

  constructor(
    private readonly db: Database,
    private readonly migrator: Migrator,
    private readonly partitions: PartitionManager,
    private readonly log: Logger,
    private readonly opts: { partitionsAhead: number },
  ) {}

  /** Migrates every known tenant (at start-up) and creates their partitions ahead. */
  async migrateAll(): Promise<number> {
    const rows = await this.db.query<{ tenant_id: string }>(
      `/* tenants.list */ select tenant_id from ${CONTROL_SCHEMA}.tenants order by tenant_id`,
    );
    for (const { tenant_id } of rows) {
      if (tenantIdProblem(tenant_id)) {
        this.log.error({ tenant: tenant_id }, 'control schema holds an invalid tenant id; skipped');
        continue;
      }
      try {
        await this.prepare(tenant_id as TenantId);
      } catch (err) {
        // One broken tenant schema must not keep the service (and every other tenant) down: it
        // stays not ready and is tried again on its next request.
        this.log.error({ err, tenant: tenant_id }, 'tenant could not be migrated at start-up');
      }
    }
    return rows.length;
  }

  /** Resolves when the tenant can be written and read; UnknownTenantError unless `provision`. */
  async ensure(tenant: TenantId, provision: boolean): Promise<void> {
    if (this.ready.has(tenant)) return;
    const [row] = await this.db.query<{ tenant_id: string }>(
      `/* tenants.get */ select tenant_id from ${CONTROL_SCHEMA}.tenants where tenant_id = $1`,
      [tenant],
    );
    if (!row && !provision) throw new UnknownTenantError(tenant);
    let pending = this.provisioning.get(tenant);
    if (!pending) {
      pending = this.provision(tenant).finally(() => this.provisioning.delete(tenant));
      this.provisioning.set(tenant, pending);
    }
    await pending;
  }

  /**
   * Creates the tenant if it does not exist (idempotent, also when several instances provision
   * it at once), migrates it and its partitions. The conflict target is left out on purpose:
   * two concurrent inserts of one tenant can collide on `schema_name` before `tenant_id`, and
   * both keys follow from the tenant id, so any conflict is this tenant existing already.
   */
  async provision(tenant: TenantId): Promise<void> {
    const inserted = await this.db.query(
      `/* tenants.insert */ insert into ${CONTROL_SCHEMA}.tenants (tenant_id, schema_name)
       values ($1, $2) on conflict do nothing returning tenant_id`,
      [tenant, tenantSchema(tenant)],
    );
    if (inserted.length) this.log.info({ tenant }, 'tenant provisioned');
    await this.prepare(tenant);
  }

  private async prepare(tenant: TenantId): Promise<void> {
    const ran = await this.migrator.migrateTenant(tenant);
    if (ran) this.log.info({ tenant, migrations: ran }, 'tenant schema migrated');
    await this.partitions.ensureAhead(tenantSchema(tenant), this.opts.partitionsAhead);
    this.ready.add(tenant);
  }
}
