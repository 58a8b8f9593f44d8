import { randomUUID } from 'node:crypto';
import { hostname, userInfo } from 'node:os';
import { RedisKeyRevocations } from '../cluster/key-revocations.js';
import { type Config, ConfigError, loadConfig } from '../config.js';
import { ApiKeyStore } from '../db/api-key-store.js';
import { createDatabase, type Database } from '../db/client.js';
import { Migrator } from '../db/migrations.js';
import { PartitionManager } from '../db/partitions.js';
import { TenantDirectory } from '../db/tenant-directory.js';
import { TenantProvisioner } from '../db/tenant-provisioner.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import { type AccessRecord, accessEventRecord } from '../ingest/access-log.js';
import { BatchWriter } from '../ingest/batch-writer.js';
import { createLogger, type Logger } from '../logger.js';
import { RedisKeys } from '../redis/client.js';

/** A command-line failure: its message is printed as is, and the process exits with `code`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code = 1,
  ) {
    super(message);
  }
}

export interface Cli {
  config: Config;
  log: Logger;
  db: Database;
  tenants: TenantProvisioner;
  directory: TenantDirectory;
  apiKeys: ApiKeyStore;
  /** Writes an access record into the tenant's log at once (the CLI has no buffers to wait on). */
  recordAccess(record: Omit<AccessRecord, 'actor' | 'correlationId'>): Promise<void>;
}

/** Who ran the command, as the actor of its access records. */
function operator(): string {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {}
  return `cli:${user}@${hostname()}`;
}

/**
 * Runs a command against the configured database (the same configuration and code as the
 * service). The control schema is migrated first, so the first command on a fresh database —
 * the bootstrap `keys create --admin` — works. In the embedded mode the database directory can
 * be opened by one process only: stop the service first.
 */
export async function runCli(main: (cli: Cli, args: string[]) => Promise<void>): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
  // Logs go to stdout as JSON: only problems, so the command's own output stays readable.
  const log = createLogger({
    logLevel: ['debug', 'trace'].includes(config.logLevel) ? config.logLevel : 'error',
  });
  const db = createDatabase(config.database, log);
  let code = 0;
  try {
    const migrator = new Migrator(db);
    await migrator.migrateControl();
    const partitions = new PartitionManager(db, log, {
      limits: { maxPerTenant: config.maxPartitionsPerTenant },
    });
    const tenants = new TenantProvisioner(db, migrator, partitions, log, {
      partitionsAhead: config.partitionsAhead,
    });
    const writer = new BatchWriter(db, partitions, log, `cli-${process.pid}`, {
      hashing: config.chainHashing,
      hmacSecret: config.chainHmacSecret,
    });
    const apiKeys = new ApiKeyStore(db, log, { cacheMs: 0, touchIntervalMs: 0 });
    // With Redis, running instances drop a revoked key from their caches before the command
    // returns (without it, a lone instance reads keys through its own short cache).
    const redisUrl = config.redisUrl;
    if (redisUrl) {
      apiKeys.announceRevocation = async (keyId) => {
        const announcer = new RedisKeyRevocations(
          redisUrl,
          new RedisKeys(config.redisKeyPrefix),
          `cli-${hostname()}-${process.pid}`,
          log,
          undefined,
        );
        await announcer.start();
        try {
          await announcer.announce(keyId);
        } finally {
          await announcer.stop();
        }
      };
    }
    const actor = { type: 'operator', id: operator() };
    const correlationId = `cli-${randomUUID()}`;
    const cli: Cli = {
      config,
      log,
      db,
      tenants,
      directory: new TenantDirectory(db, config.readWindowPartitions),
      apiKeys,
      async recordAccess(record) {
        const event = accessEventRecord({ ...record, actor, correlationId });
        try {
          await writer.write(tenantSchema(record.tenant as TenantId), randomUUID(), [event]);
        } catch (err) {
          throw new CliError(
            `done, but its access record could not be written to ${record.tenant}'s log: ` +
              `${(err as Error).message}`,
            3,
          );
        }
      },
    };
    await main(cli, process.argv.slice(2));
  } catch (err) {
    if (err instanceof CliError) {
      console.error(err.message);
      code = err.code;
    } else {
      console.error(err instanceof Error ? err.message : err);
      code = 1;
    }
  } finally {
    await db.close();
  }
  process.exitCode = code;
}

/** Formats a date for people (UTC, to the second), or a dash. */
export function when(d: Date | null): string {
  return d ? `${d.toISOString().slice(0, 19)}Z` : '-';
}
