import { ConfigError, loadConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { Refusal } from '../refusal.js';
import { createDatabase, databaseRefusal } from './client.js';
import { Migrator } from './migrations.js';
import { PartitionManager } from './partitions.js';
import { TenantProvisioner } from './tenant-provisioner.js';

/** `npm run db:migrate`: migrates the control schema and every known tenant, then exits. */
async function migrate(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config);
  const db = createDatabase(config.database, log);
  try {
    const migrator = new Migrator(db);
    const control = await migrator.migrateControl().catch((err: unknown) => {
      throw databaseRefusal(err, config.database) ?? err;
    });
    const registry = new TenantProvisioner(db, migrator, new PartitionManager(db, log), log, {
      partitionsAhead: config.partitionsAhead,
    });
    const tenants = await registry.migrateAll();
    log.info({ controlMigrations: control, tenants }, 'migrations applied');
  } finally {
    await db.close();
  }
}

try {
  await migrate();
} catch (err) {
  if (!(err instanceof ConfigError || err instanceof Refusal)) throw err;
  console.error(err.message);
  process.exit(err instanceof ConfigError ? 2 : 1);
}
