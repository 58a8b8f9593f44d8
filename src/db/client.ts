import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import type { PgAsyncDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import pg from 'pg';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { Refusal } from '../refusal.js';

/** Something that runs one parameterised statement. */
export interface Sql {
  query<R = Record<string, unknown>>(text: string, params?: readonly unknown[]): Promise<R[]>;
}

/**
 * One connection held by one caller for a while: statements and transactions on it, in order.
 * For work that needs the same session throughout (a session-level advisory lock).
 */
export interface Connection extends Sql {
  /** Runs `fn` in one transaction on this connection; rolls back when it throws. */
  transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T>;
}

/**
 * The one door to the database, the same for PostgreSQL (pooled `pg`) and embedded PGlite.
 * There is no way to run a session-level `SET` through it on a pooled connection: per-tenant
 * SQL is schema-qualified, and anything else that needs settings uses set_config(..., true)
 * inside `transaction`.
 */
export interface Database extends Sql {
  readonly kind: 'pg' | 'pglite';
  /** Runs `fn` in one transaction; rolls back when it throws. */
  transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T>;
  /**
   * Runs `fn` on one connection of its own, held for the whole call (a pooled client with `pg`,
   * the only connection with PGlite). When `fn` throws, the pooled client is discarded rather
   * than handed back, so no session state it may have left (an advisory lock) outlives the call.
   */
  withConnection<T>(fn: (conn: Connection) => Promise<T>): Promise<T>;
  /** The drizzle query builder over the same connections (reads). */
  readonly orm: PgAsyncDatabase<PgQueryResultHKT>;
  close(): Promise<void>;
}

export function createDatabase(db: Config['database'], log: Logger): Database {
  return db.kind === 'pg' ? createPgDatabase(db, log) : createPgliteDatabase(db.dataDir);
}

function createPgDatabase(cfg: Extract<Config['database'], { kind: 'pg' }>, log: Logger): Database {
  const pool = new pg.Pool({
    connectionString: cfg.url,
    max: cfg.poolSize,
    application_name: cfg.applicationName,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
  });
  // An idle client that loses its server emits here; without a listener the process would crash.
  pool.on('error', (err) => log.warn({ err }, 'idle database connection failed'));
  // A connection can report its loss more than once (the server's FATAL, then the socket's
  // end), at moments when pg-pool has no listener on it. Every client keeps one for its life, so
  // a lost connection is a failed query for its caller, never a crashed process.
  pool.on('connect', (client) => {
    client.on('error', (err) => log.debug({ err }, 'database connection lost'));
  });
  const orm = drizzlePg({ client: pool }) as unknown as PgAsyncDatabase<PgQueryResultHKT>;
  return {
    kind: 'pg',
    orm,
    async query<R>(text: string, params: readonly unknown[] = []) {
      const res = await pool.query(text, params as unknown[]);
      return res.rows as R[];
    },
    async transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      let broken: Error | undefined;
      // A checked-out client whose server goes away emits 'error'; unheard, that would crash
      // the process. The query in progress fails on its own and the caller retries.
      const onError = (err: Error) => {
        broken = err;
        log.warn({ err }, 'database connection lost during a transaction');
      };
      client.on('error', onError);
      try {
        return await inTransaction(client, fn, (err) => {
          broken = err;
        });
      } finally {
        client.off('error', onError);
        client.release(broken);
      }
    },
    async withConnection<T>(fn: (conn: Connection) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      let broken: Error | undefined;
      const onError = (err: Error) => {
        broken = err;
        log.warn({ err }, 'database connection lost while held');
      };
      client.on('error', onError);
      const conn: Connection = {
        ...sqlOf(client),
        transaction: (work) =>
          inTransaction(client, work, (err) => {
            broken = err;
          }),
      };
      try {
        return await fn(conn);
      } catch (err) {
        broken ??= err as Error;
        throw err;
      } finally {
        client.off('error', onError);
        client.release(broken);
      }
    },
    async close() {
      await pool.end();
    },
  };
}

/** Statements on one checked-out client. */
function sqlOf(client: pg.PoolClient): Sql {
  return {
    async query<R>(text: string, params: readonly unknown[] = []) {
      return (await client.query(text, params as unknown[])).rows as R[];
    },
  };
}

/**
 * BEGIN, `work`, COMMIT on one client; on failure ROLLBACK. A ROLLBACK that fails means the
 * connection is gone: `onBroken` is told, so it is not handed back to the pool.
 */
async function inTransaction<T>(
  client: pg.PoolClient,
  work: (tx: Sql) => Promise<T>,
  onBroken: (err: Error) => void,
): Promise<T> {
  try {
    await client.query('BEGIN');
    const result = await work(sqlOf(client));
    await client.query('COMMIT');
    return result;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch (rollbackErr) {
      onBroken(rollbackErr as Error);
    }
    throw err;
  }
}

/** Thrown when another process (or another open in this one) holds the embedded database. */
export class DataDirInUseError extends Refusal {
  constructor(dataDir: string, holder: string) {
    super(
      `the embedded database in ${dataDir} is in use by ${holder}; PGlite allows one process at ` +
        'a time: stop it first (what a second process wrote would be lost)',
    );
  }
}

/** True when `pid` is a live Node.js process (a pid reused by something else is not). */
function liveNode(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('node');
  } catch {
    return true; // no /proc: trust the signal
  }
}

/** Lock tokens this process holds (a lock file holding one of them is this process's). */
const heldLocks = new Set<string>();

/**
 * Takes a directory for this process: a lock file created exclusively, with the holder's pid and
 * a token. A lock left by a process that is gone is taken over; one held by a live process throws
 * `inUse(holder)`. Returns the release function. The embedded database's directory and the local
 * journal's are taken this way.
 */
export function lockDirectory(
  dir: string,
  inUse: (holder: string) => Error = (holder) => new DataDirInUseError(dir, holder),
): () => void {
  const file = join(dir, 'auditgraph.lock');
  const token = `${process.pid} ${randomUUID()}`;
  heldLocks.add(token);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, token, { flag: 'wx', mode: 0o600 });
      return () => {
        heldLocks.delete(token);
        try {
          if (readFileSync(file, 'utf8') === token) rmSync(file, { force: true });
        } catch {}
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        heldLocks.delete(token);
        throw err;
      }
      const holder = readFileSync(file, 'utf8');
      const pid = Number.parseInt(holder, 10);
      if (heldLocks.has(holder)) {
        heldLocks.delete(token);
        throw inUse('this process (opened twice)');
      }
      // The same pid with a token this process never made: a previous run (a container's pid 1).
      if (pid !== process.pid && Number.isInteger(pid) && liveNode(pid)) {
        heldLocks.delete(token);
        throw inUse(`process ${pid}`);
      }
      rmSync(file, { force: true }); // left by a process that is gone
    }
  }
  heldLocks.delete(token);
  throw inUse('another process (the lock could not be taken)');
}

function createPgliteDatabase(dataDir: string): Database {
  // A fresh clone has no ./.data yet; PGlite creates only the last path segment.
  mkdirSync(dataDir, { recursive: true });
  const release = lockDirectory(dataDir);
  let lite: PGlite;
  try {
    lite = new PGlite(dataDir);
  } catch (err) {
    release();
    throw err;
  }
  const orm = drizzlePglite({ client: lite }) as unknown as PgAsyncDatabase<PgQueryResultHKT>;
  const self: Database = {
    kind: 'pglite',
    orm,
    async query<R>(text: string, params: readonly unknown[] = []) {
      return (await lite.query<R>(text, params as unknown[])).rows;
    },
    transaction<T>(fn: (tx: Sql) => Promise<T>): Promise<T> {
      return lite.transaction(async (t) =>
        fn({
          async query<R>(text: string, params: readonly unknown[] = []) {
            return (await t.query<R>(text, params as unknown[])).rows;
          },
        }),
      );
    },
    // One process, one connection: holding it means using it (callers serialise their own runs).
    withConnection<T>(fn: (conn: Connection) => Promise<T>): Promise<T> {
      return fn(self);
    },
    async close() {
      try {
        await lite.close();
      } finally {
        release();
      }
    },
  };
  return self;
}

/** SQLSTATE of a database error (or of the driver error a drizzle error wraps), if it has one. */
export function sqlState(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  for (const code of [e?.code, e?.cause?.code]) {
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** `url` with its password blanked, for messages. */
function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(DATABASE_URL)';
  }
}

/**
 * The Refusal to give when the first statement of a start or a command fails because the
 * database cannot be used at all (not there, refused, unknown, wrong credentials): one line that
 * says which and what to do, instead of the driver's error and stack. Null for anything else.
 */
export function databaseRefusal(err: unknown, db: Config['database']): Refusal | null {
  if (db.kind !== 'pg') return null;
  const code = sqlState(err) ?? (err as { code?: unknown } | null)?.code;
  const where = `DATABASE_URL (${withoutPassword(db.url)})`;
  const why = (err as Error).message;
  if (code === '3D000') return new Refusal(`${where}: ${why}: create it first (createdb)`);
  if (code === '28P01' || code === '28000') {
    return new Refusal(`${where}: ${why}: check the user and password it names`);
  }
  if (
    ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH'].includes(String(code))
  ) {
    return new Refusal(`${where}: ${why}: is PostgreSQL running, and reachable from here?`);
  }
  if (/timeout exceeded when trying to connect/i.test(why)) {
    return new Refusal(`${where}: ${why}: is PostgreSQL running, and reachable from here?`);
  }
  return null;
}
