import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';

/**
 * One fresh database per test run, dropped afterwards. The server comes from TEST_DATABASE_URL
 * (any database on it; default postgres://root@127.0.0.1:5432/postgres).
 */
const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/postgres';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
    redisUrl: string;
    /** One checkpoint signing key for the run (created by the first app), as in a deployment. */
    checkpointKeyFile: string;
  }
}

export default async function setup(project: TestProject) {
  // dist/ as `npm start` runs it and `auditgraph/client` resolves to it (incremental: seconds).
  execFileSync('npm', ['run', '--silent', 'build'], {
    cwd: new URL('../..', import.meta.url).pathname,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const name = `auditgraph_test_${Date.now()}_${process.pid}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`create database "${name}"`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  project.provide('databaseUrl', url.toString());
  project.provide('redisUrl', process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const keyDir = mkdtempSync(join(tmpdir(), 'auditgraph-keys-'));
  project.provide('checkpointKeyFile', join(keyDir, 'checkpoint-ed25519.pem'));
  return async () => {
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    // The run's database, and any per-file database a crashed file left behind.
    const left = await c.query<{ datname: string }>(
      'select datname from pg_database where datname = $1 or datname like $2',
      [name, `${name}\\_%`],
    );
    for (const { datname } of left.rows)
      await c.query(`drop database if exists "${datname}" with (force)`);
    await c.end();
    rmSync(keyDir, { recursive: true, force: true });
  };
}
