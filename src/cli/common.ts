import { randomUUID } from 'node:crypto';
import { hostname, userInfo } from 'node:os';
import { type Config, ConfigError, loadConfig } from '../config.js';
import { type Database, databaseRefusal } from '../db/client.js';
import type { TenantDirectory } from '../db/tenant-directory.js';
import { tenantSchema } from '../domain/tenant.js';
import { accessEventRecord } from '../ingest/access-log.js';
import { createLogger, type Logger } from '../logger.js';
import { Refusal } from '../refusal.js';
import type { Actor } from '../usecases/actor.js';
import type { CliUseCases } from '../usecases/use-cases.js';
import { wireCliKeys, wireCliUseCases, wireStorage } from '../wiring.js';

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
  /** Tenant reads (list, usage). */
  directory: TenantDirectory;
  /** What the command does, as the API does it. */
  useCases: CliUseCases;
  /**
   * The operator who ran the command. Its access records are written into the tenant's log at
   * once (the CLI has no buffers to wait on): a record that cannot be written fails the command
   * with exit code 3, the action itself being done.
   */
  actor: Actor;
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
  let storage: ReturnType<typeof wireStorage>;
  try {
    storage = wireStorage(config, log, `cli-${process.pid}`);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    console.error(err.message);
    process.exit(1);
  }
  const { db, migrator, directory, writer } = storage;
  let code = 0;
  try {
    await migrator.migrateControl().catch((err: unknown) => {
      throw databaseRefusal(err, config.database) ?? err;
    });
    const who = { type: 'operator', id: operator() };
    const correlationId = `cli-${randomUUID()}`;
    const actor: Actor = {
      async recordAccess(record) {
        const event = accessEventRecord({ ...record, actor: who, correlationId });
        try {
          await writer.write(tenantSchema(record.tenant), randomUUID(), [event]);
        } catch (err) {
          throw new CliError(
            `done, but its access record could not be written to ${record.tenant}'s log: ` +
              `${(err as Error).message}`,
            3,
          );
        }
      },
      lifecycle: { actor: who, by: who.id, correlationId, data: {} },
    };
    const cli: Cli = {
      config,
      log,
      db,
      directory,
      useCases: wireCliUseCases(storage, wireCliKeys(config, log, db)),
      actor,
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
