import { readdirSync, readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { ROOT } from './child-processes.js';

/** Creates a database on the server of `adminUrl`; returns its URL. */
export async function createDatabase(adminUrl: string, name: string): Promise<string> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
}

function monthStart(d: Date, add = 0): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + add, 1));
}

/**
 * A scratch schema holding the very table a tenant gets: the tenant migrations of
 * drizzle/tenant, run in order on a dedicated client (search_path set for that transaction
 * only), plus monthly partitions around now. Baselines write here, never into a tenant.
 */
export async function createScratchSchema(databaseUrl: string, schema: string): Promise<void> {
  const client = new pg.Client({
    connectionString: databaseUrl,
    application_name: 'auditgraph-bench-setup',
  });
  await client.connect();
  try {
    await client.query('begin');
    await client.query(`create schema "${schema}"`);
    await client.query(`select set_config('search_path', $1, true)`, [schema]);
    const dir = join(ROOT, 'drizzle', 'tenant');
    for (const migration of readdirSync(dir).sort()) {
      const text = readFileSync(join(dir, migration, 'migration.sql'), 'utf8');
      for (const statement of text.split('--> statement-breakpoint')) {
        if (statement.trim()) await client.query(statement);
      }
    }
    const now = new Date();
    for (let m = -3; m <= 3; m++) {
      const from = monthStart(now, m);
      const to = monthStart(now, m + 1);
      const name = `audit_events_y${from.getUTCFullYear()}m${String(from.getUTCMonth() + 1).padStart(2, '0')}`;
      await client.query(
        `create table "${schema}"."${name}" partition of "${schema}".audit_events
           for values from ('${from.toISOString()}') to ('${to.toISOString()}')`,
      );
    }
    await client.query('commit');
  } finally {
    await client.end();
  }
}

/** Deletes every Redis key under `prefix` (dead-letter streams, heartbeats of this run). */
export async function deleteRedisKeys(redisUrl: string, prefix: string): Promise<number> {
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  let deleted = 0;
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      if (keys.length) deleted += await redis.del(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return deleted;
}

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  postgres: string;
  redis: string;
  loadAverageAtStart: number[];
}

export async function machineInfo(databaseUrl: string, redisUrl: string): Promise<MachineInfo> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const pgVersion = (
    await client.query<{ v: string }>(`select current_setting('server_version') as v`)
  ).rows[0]!.v;
  await client.end();
  const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  const info = String(await redis.info('server'));
  redis.disconnect();
  const loadavg = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
  return {
    cores: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    postgres: pgVersion,
    redis: info.match(/redis_version:(\S+)/)?.[1] ?? 'unknown',
    loadAverageAtStart: loadavg,
  };
}
