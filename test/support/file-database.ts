import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, inject } from 'vitest';

/**
 * Every test file gets a database of its own (created here, dropped after the file), so one
 * file's app start-up — which migrates every tenant it finds — never touches another file's
 * tenants. The run's database (global-setup.ts) only names the server and the prefix.
 */
const runUrl = new URL(inject('databaseUrl'));
const name = `${runUrl.pathname.slice(1)}_${randomBytes(3).toString('hex')}`;
const admin = new URL(runUrl);
admin.pathname = '/postgres';

async function onAdmin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: admin.toString() });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

await onAdmin(`create database "${name}"`);
const fileUrl = new URL(runUrl);
fileUrl.pathname = `/${name}`;
(globalThis as { __auditgraphDatabaseUrl?: string }).__auditgraphDatabaseUrl = fileUrl.toString();

/** Databases made by extraDatabase(), dropped with the file's. */
const extras: string[] = [];

afterAll(async () => {
  for (const extra of extras) await onAdmin(`drop database if exists "${extra}" with (force)`);
  await onAdmin(`drop database if exists "${name}" with (force)`);
});

/**
 * Another database of this file's own, for a deployment of its own beside the file's (one whose
 * instances must share settings that the file's other apps do not: CHAIN_HMAC_SECRET, a cursor
 * key, a checkpoint key). Dropped after the file.
 */
export async function extraDatabase(label: string): Promise<string> {
  const extra = `${name}_${label}`;
  await onAdmin(`create database "${extra}"`);
  extras.push(extra);
  const url = new URL(runUrl);
  url.pathname = `/${extra}`;
  return url.toString();
}
