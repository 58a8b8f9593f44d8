import { fileURLToPath } from 'node:url';
import { type MigrationMeta, readMigrationFiles } from 'drizzle-orm/migrator';
import { CONTROL_SCHEMA, type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Database, Sql } from './client.js';

const DRIZZLE_DIR = fileURLToPath(new URL('../../drizzle/', import.meta.url));

/**
 * Applies the drizzle-kit migrations. Control migrations run once per database; tenant
 * migrations run per tenant schema, each tenant in one transaction whose search_path is set with
 * set_config(..., true) — local to that transaction, so nothing leaks into a pooled connection.
 * Advisory locks make concurrent starts of several instances safe.
 */
export class Migrator {
  private readonly tenantSet: MigrationMeta[];
  private readonly controlSet: MigrationMeta[];

  constructor(private readonly db: Database) {
    this.tenantSet = readMigrationFiles({ migrationsFolder: `${DRIZZLE_DIR}tenant` });
    this.controlSet = readMigrationFiles({ migrationsFolder: `${DRIZZLE_DIR}control` });
  }

  /** Name of the newest tenant migration: a tenant at this name is up to date. */
  get latestTenantMigration(): string {
    return this.tenantSet.at(-1)?.name ?? '';
  }

  async migrateControl(): Promise<number> {
    return this.db.transaction(async (tx) => {
      await tx.query(
        `/* migrate.control.lock */ select pg_advisory_xact_lock(hashtext('auditgraph:migrate:control'))`,
      );
      const [exists] = await tx.query<{ ok: boolean }>(
        `select to_regclass('${CONTROL_SCHEMA}.control_migrations') is not null as ok`,
      );
      const applied = new Set<string>();
      if (exists?.ok) {
        const rows = await tx.query<{ name: string }>(
          `select name from ${CONTROL_SCHEMA}.control_migrations`,
        );
        for (const r of rows) applied.add(r.name);
      }
      let count = 0;
      for (const m of this.controlSet) {
        if (applied.has(m.name)) continue;
        await runStatements(tx, m);
        await tx.query(
          `insert into ${CONTROL_SCHEMA}.control_migrations (name, hash) values ($1, $2)`,
          [m.name, m.hash],
        );
        count++;
      }
      return count;
    });
  }

  /** Creates the tenant's schema if needed and applies its missing migrations; returns how many ran. */
  async migrateTenant(tenant: TenantId): Promise<number> {
    const schema = tenantSchema(tenant);
    return this.db.transaction(async (tx) => {
      await tx.query(`/* migrate.tenant.lock */ select pg_advisory_xact_lock(hashtext($1))`, [
        `auditgraph:migrate:${tenant}`,
      ]);
      await tx.query(`create schema if not exists "${schema}"`);
      await tx.query(`select set_config('search_path', $1, true)`, [`"${schema}"`]);
      const rows = await tx.query<{ name: string }>(
        `select name from ${CONTROL_SCHEMA}.tenant_migrations where tenant_id = $1`,
        [tenant],
      );
      const applied = new Set(rows.map((r) => r.name));
      let count = 0;
      for (const m of this.tenantSet) {
        if (applied.has(m.name)) continue;
        await runStatements(tx, m);
        await tx.query(
          `insert into ${CONTROL_SCHEMA}.tenant_migrations (tenant_id, name, hash) values ($1, $2, $3)`,
          [tenant, m.name, m.hash],
        );
        count++;
      }
      // Names begin with their creation time, so they sort by age: an instance of an earlier
      // release (still running during a rolling upgrade, or after a rollback) must not write
      // its older name over the newer one the schema is at.
      await tx.query(
        `update ${CONTROL_SCHEMA}.tenants set migration = $2, migrated_at = now()
          where tenant_id = $1 and (migration is null or migration < $2)`,
        [tenant, this.latestTenantMigration],
      );
      return count;
    });
  }
}

async function runStatements(tx: Sql, m: MigrationMeta): Promise<void> {
  for (const statement of m.sql) {
    if (statement.trim()) await tx.query(statement);
  }
}
