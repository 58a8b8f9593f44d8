import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { partitionNameFor, utcMonth } from './support/db.js';
import { deleteRedisKeys } from './support/faults.js';
import { extraDatabase } from './support/file-database.js';
import { CREATE, databaseUrl, event, FLUSH, graphqlClient, newTenant } from './support/harness.js';

/**
 * Backup and restore as an operator does it, with PostgreSQL's own tools: `pg_dump -Fc` of the
 * database and a copy of the on-disk state the service keeps outside it (the checkpoint signing
 * key, and the dead-letter directory that holds the file journal and the tenants' books), then
 * `createdb` + `pg_restore` into a fresh database and a service started on it. The restored
 * tenants hold exactly the events stored before the backup, their chains verify against their
 * checkpoints with the restored key, writes chain on from the restored heads and are counted,
 * and a retention pass runs. Controls: without the key file the service refuses to start (and
 * after a rotation, the key lost, the old checkpoints still verify); without the journal directory the books
 * start again from zero; with Redis, the books (kept there) still count the writes made after
 * the backup. Then the embedded data directory (`./.data/`, PGlite): a copy of a stopped
 * service's directory starts and verifies; a copy taken while it runs carries its lock.
 *
 * The service runs as its own process (`node dist/main.js`, built by the global setup), and the
 * shell commands below are run exactly as written, with their variables in the environment.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PATH = `${dirname(process.execPath)}:${process.env.PATH ?? '/usr/bin:/bin'}`;
const DAY = 86_400_000;

/** The database: every schema (the control schema `auditgraph` and each tenant's `t_<tenant>`). */
const BACKUP_DATABASE = `pg_dump -h 127.0.0.1 -U root -Fc -f "$BACKUP/auditgraph.dump" "$DB"`;

/**
 * Right after the dump: without Redis, the dead-letter directory, whose `journal/` holds the
 * tenants' books (the copy's lock file names the running process and would refuse a start);
 * and the signing key, to a place of its own (not beside the database backup).
 */
const BACKUP_FILES = `cp -a "$DLQ_DIR" "$BACKUP/dead-letters"
rm -f "$BACKUP/dead-letters/journal/auditgraph.lock"
cp -a "$CHECKPOINT_KEY_FILE" "$KEY_BACKUP/checkpoint-ed25519.pem"`;

const RESTORE_DATABASE = `createdb -h 127.0.0.1 -U root "$NEW_DB"
pg_restore -h 127.0.0.1 -U root --exit-on-error -d "$NEW_DB" "$BACKUP/auditgraph.dump"`;

const RESTORE_JOURNAL = `cp -a "$BACKUP/dead-letters" "$NEW_DLQ_DIR"`;
/** Only when the key file is lost for good: a new key, the old one's public half kept. */
const ROTATE_LOST_KEY = `export DATABASE_URL="postgres://root@127.0.0.1:5432/$NEW_DB"
export CHECKPOINT_KEY_FILE="$KEY_BACKUP/checkpoint-ed25519.pem" DLQ_DIR="$NEW_DLQ_DIR"
npm run --silent deployment -- rotate-checkpoint-key`;

const START_RESTORED = `export DATABASE_URL="postgres://root@127.0.0.1:5432/$NEW_DB"
export CHECKPOINT_KEY_FILE="$KEY_BACKUP/checkpoint-ed25519.pem" DLQ_DIR="$NEW_DLQ_DIR"
exec node dist/main.js`;

/** Embedded: run in the service's directory once it has stopped; restored the same way. */
const BACKUP_EMBEDDED = `cp -a .data "$BACKUP/.data"`;
const RESTORE_EMBEDDED = `cp -a "$BACKUP/.data" .`;
/** `npm start` without its build step (the global setup built dist/), in the copy's directory. */
const START_EMBEDDED = `exec node "$SERVICE"`;
const SERVICE = { SERVICE: join(ROOT, 'dist', 'main.js') };

/** Runs one of the commands above with `sh -e` in `cwd`, the variables in the environment. */
function sh(script: string, vars: Record<string, string>, cwd = ROOT): string {
  return execFileSync('sh', ['-ec', script], {
    cwd,
    env: { PATH, HOME: process.env.HOME ?? '/tmp', ...vars },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 120_000,
  });
}

/** The service as its own process, with every knob a test decides set explicitly. */
const SERVICE_ENV = {
  AUTH_MODE: 'dev',
  TENANT_AUTO_PROVISION: 'true',
  PORT: '0',
  HOST: '127.0.0.1',
  LOG_LEVEL: 'info',
  // Checkpoints and maintenance only on request, and reads not recorded as events, so the
  // tenants' events are exactly those the test writes.
  CHECKPOINT_INTERVAL_MS: '0',
  MAINTENANCE_INTERVAL_MS: '0',
  AUDIT_READS: 'false',
};

interface Service {
  child: ChildProcess;
  url: string;
  logs: Record<string, unknown>[];
  /** SIGTERM (a clean stop); resolves with the exit code. */
  stop(): Promise<number | null>;
}

const running: Service[] = [];

function launch(script: string, vars: Record<string, string>, cwd: string) {
  const child = spawn('sh', ['-ec', script], {
    cwd,
    env: { PATH, HOME: process.env.HOME ?? '/tmp', ...SERVICE_ENV, ...vars },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  const logs: Record<string, unknown>[] = [];
  let output = '';
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      process.off('exit', onExit);
      resolve(code);
    }),
  );
  child.stderr!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const lines = createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    output += `${line}\n`;
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not a log line
    }
  });
  return { child, logs, exited, output: () => output };
}

/** Starts the service (`script` ends in `exec node …`) and resolves once it listens. */
async function startService(
  script: string,
  vars: Record<string, string>,
  cwd = ROOT,
): Promise<Service> {
  const { child, logs, exited, output } = launch(script, vars, cwd);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`not listening in 90 s:\n${output()}`)),
      90_000,
    );
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`the service exited with ${code} before listening:\n${output()}`));
    });
    const poll = setInterval(() => {
      const l = logs.find((e) => e.msg === 'listening');
      if (l) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve(l.port as number);
      }
    }, 20);
    void exited.then(() => clearInterval(poll));
  });
  const svc: Service = {
    child,
    url: `http://127.0.0.1:${port}/graphql`,
    logs,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  running.push(svc);
  return svc;
}

/** Starts the service where it must refuse to start: resolves with its exit code and output. */
async function startRefused(script: string, vars: Record<string, string>, cwd = ROOT) {
  const { child, exited, output } = launch(script, vars, cwd);
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
  const code = await exited;
  clearTimeout(timer);
  return { code, output: output() };
}

const SIGN = `mutation { signAuditCheckpoints { data { month seq hash keyId } } }`;
const CHECKPOINTS = `query { auditCheckpoints { month seq hash keyId signature } }`;
const KEY = `query { auditChainKey { keyId } }`;
const VERIFY = `query V($from: DateTime!, $to: DateTime!) { verifyAuditChain(from: $from, to: $to) {
  ok eventsVerified
  months { month status eventsVerified lastSeq checkpoints }
  firstBreak { kind seq month message }
} }`;
const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded expired identityHolds fromBooks
} } }`;
const EVENT = `query E($id: String!) { auditEvent(eventId: $id) { eventId chainSeq prevHash hash } }`;
const PAGE = `query P($first: Int, $after: String) { auditEvents(first: $first, after: $after) {
  __typename ... on AuditEventConnection {
    edges { node { eventId } } pageInfo { hasNextPage endCursor } } } }`;
const SET_RETENTION = `mutation S($days: Int) { setRetention(input: { days: $days }) {
  __typename ... on SetRetentionPayload { retention { days source } event { status } }
  ... on AuditError { message } } }`;
const RUN = `mutation { runMaintenance { __typename
  ... on MaintenanceReport { leader tenants {
    tenantId cutoff dropped { month partition rowCount chainSeq } problems { month message } } }
  ... on AuditError { message } } }`;

type Client = ReturnType<typeof graphqlClient>;

interface Stats {
  accepted: number;
  stored: number;
  duplicates: number;
  pending: number;
  deadLettered: number;
  discarded: number;
  expired: number;
  identityHolds: boolean;
  fromBooks: boolean;
}

async function statsOf(c: Client, tenant: string): Promise<Stats> {
  const s = (await c.gql(tenant, STATS)).auditStats;
  expect(s.__typename).toBe('AuditStats');
  return s as Stats;
}

/** The identity recomputed from its terms (not trusting identityHolds). */
function balanced(s: Stats): boolean {
  return s.accepted === s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded;
}

async function write(
  c: Client,
  tenant: string,
  events: Record<string, unknown>[],
  ack: 'COMMITTED' | 'BUFFERED',
): Promise<string[]> {
  const r = (await c.gql(tenant, CREATE, { input: { events, ack } })).createAuditEvents;
  expect(r.__typename, JSON.stringify(r)).toBe('CreateAuditEventsPayload');
  expect(r.accepted).toBe(events.length);
  return r.events.map((e: { id: string }) => e.id);
}

async function flushed(c: Client, tenant: string): Promise<void> {
  const f = (await c.gql(tenant, FLUSH, { timeoutMs: 30_000 })).flushAudit;
  expect(f.__typename, JSON.stringify(f)).toBe('FlushAuditPayload');
}

/** `n` events with new ids, `occurredAt` a second apart from `from` on. */
function events(n: number, from: Date, correlationId: string): Record<string, unknown>[] {
  return Array.from({ length: n }, (_, i) =>
    event({
      id: randomUUID(),
      occurredAt: new Date(from.getTime() + i * 1_000).toISOString(),
      correlationId,
    }),
  );
}

/** An hour ago, or the start of the month when it began less than an hour ago. */
function recentIn(now: Date): Date {
  return new Date(Math.max(now.getTime() - 3_600_000, utcMonth(now).getTime()));
}

/** Every month from `utcMonth(now, -4)` up to the end of the next month. */
function verifyRange(now: Date) {
  return { from: utcMonth(now, -4).toISOString(), to: utcMonth(now, 2).toISOString() };
}

async function verify(c: Client, tenant: string, now: Date) {
  const v = (await c.gql(tenant, VERIFY, verifyRange(now))).verifyAuditChain;
  expect(v).not.toBeNull();
  return v as {
    ok: boolean;
    eventsVerified: number;
    months: {
      month: string;
      status: string;
      eventsVerified: number;
      lastSeq: number;
      checkpoints: number;
    }[];
    firstBreak: { kind: string; seq: number; month: string; message: string } | null;
  };
}

async function pageIds(c: Client, tenant: string): Promise<string[]> {
  const ids: string[] = [];
  let after: string | null = null;
  for (let pages = 0; pages < 50; pages++) {
    const r: Record<string, any> = (await c.gql(tenant, PAGE, { first: 500, after })).auditEvents;
    expect(r.__typename).toBe('AuditEventConnection');
    ids.push(...r.edges.map((e: { node: { eventId: string } }) => e.node.eventId));
    if (!r.pageInfo.hasNextPage) return ids;
    after = r.pageInfo.endCursor;
  }
  throw new Error('more than 50 pages');
}

function dbUrl(name: string): string {
  const u = new URL(databaseUrl());
  u.pathname = `/${name}`;
  return u.toString();
}

async function onDb<T>(name: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: dbUrl(name) });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Every event id stored for the tenant, sorted, straight from PostgreSQL. */
function storedIds(db: string, tenant: string): Promise<string[]> {
  return onDb(db, async (c) => {
    const { rows } = await c.query<{ id: string }>(
      `select id::text as id from "t_${tenant}".audit_events order by id`,
    );
    return rows.map((r) => r.id);
  });
}

/** The schemas of a database that are not PostgreSQL's own. */
function schemasOf(db: string): Promise<string[]> {
  return onDb(db, async (c) => {
    const { rows } = await c.query<{ n: string }>(
      `select nspname as n from pg_namespace
        where nspname not like 'pg\\_%' and nspname not in ('information_schema', 'public')
        order by nspname`,
    );
    return rows.map((r) => r.n);
  });
}

function sorted(ids: string[]): string[] {
  return [...ids].sort();
}

const work = mkdtempSync(join(tmpdir(), 'auditgraph-backup-'));
const DB = new URL(databaseUrl()).pathname.slice(1);
const createdDbs: string[] = [];

afterAll(async () => {
  for (const s of running.splice(0)) await s.stop();
  const admin = new pg.Client({ connectionString: dbUrl('postgres') });
  await admin.connect();
  try {
    for (const name of createdDbs)
      await admin.query(`drop database if exists "${name}" with (force)`);
  } finally {
    await admin.end();
  }
  rmSync(work, { recursive: true, force: true });
}, 120_000);

describe('backup with pg_dump and restore with pg_restore into a fresh database', () => {
  const now = new Date();
  const old = utcMonth(now, -3); // a month a retention pass can drop after the restore
  const a = newTenant('bka');
  const b = newTenant('bkb');
  const dirs = {
    dlq: join(work, 'orig', 'dead-letters'),
    key: join(work, 'orig', 'keys', 'checkpoint-ed25519.pem'),
    backup: join(work, 'backup'),
    keyBackup: join(work, 'key-backup'),
  };
  const restored = `${DB}_restored`;
  const noKey = `${DB}_nokey`;
  const noJournal = `${DB}_nojournal`;

  /** Ids stored before the backup, per tenant; ids written after it. */
  const before: Record<string, string[]> = { [a]: [], [b]: [] };
  const after: Record<string, string[]> = { [a]: [], [b]: [] };
  const statsAtBackup: Record<string, Stats> = {};
  const checkpointsAtBackup: Record<
    string,
    { month: string; seq: number; hash: string; keyId: string }[]
  > = {};
  let keyId = '';
  let schemasAtBackup: string[] = [];
  /** A page cursor issued before the backup (signed with the key kept in the database). */
  let cursor = '';
  let original: Service;

  it('writes events in two tenants, flushes, signs checkpoints, and backs up with pg_dump and the key file', async () => {
    mkdirSync(dirs.backup);
    mkdirSync(dirs.keyBackup);
    original = await startService('exec node dist/main.js', {
      DATABASE_URL: databaseUrl(),
      DLQ_DIR: dirs.dlq,
      CHECKPOINT_KEY_FILE: dirs.key,
      INSTANCE_ID: 'backup-original',
    });
    const c = graphqlClient(original.url);
    const recent = recentIn(now);
    // Tenant a: the current month (COMMITTED and BUFFERED) and an older month.
    before[a]!.push(...(await write(c, a, events(30, recent, 'a-now'), 'COMMITTED')));
    before[a]!.push(
      ...(await write(c, a, events(8, new Date(old.getTime() + 10 * DAY), 'a-old'), 'COMMITTED')),
    );
    before[a]!.push(...(await write(c, a, events(20, recent, 'a-buf'), 'BUFFERED')));
    // Tenant b: the current month only.
    before[b]!.push(...(await write(c, b, events(25, recent, 'b-now'), 'COMMITTED')));
    before[b]!.push(...(await write(c, b, events(15, recent, 'b-buf'), 'BUFFERED')));
    for (const t of [a, b]) {
      await flushed(c, t);
      const signed = (await c.gql(t, SIGN)).signAuditCheckpoints.data;
      expect(signed.length).toBe(t === a ? 2 : 1); // one per month with events
      checkpointsAtBackup[t] = (await c.gql(t, CHECKPOINTS)).auditCheckpoints;
      statsAtBackup[t] = await statsOf(c, t);
      expect(statsAtBackup[t]).toMatchObject({
        accepted: before[t]!.length,
        stored: before[t]!.length,
        pending: 0,
        identityHolds: true,
        fromBooks: true,
      });
      expect(await storedIds(DB, t)).toEqual(sorted(before[t]!));
    }
    keyId = (await c.gql(a, KEY)).auditChainKey.keyId;
    expect(checkpointsAtBackup[a]!.every((k) => k.keyId === keyId)).toBe(true);
    schemasAtBackup = await schemasOf(DB);
    expect(schemasAtBackup).toEqual(expect.arrayContaining(['auditgraph', `t_${a}`, `t_${b}`]));
    const publicTables = await onDb(DB, async (db) => {
      const { rows } = await db.query<{ n: number }>(
        `select count(*)::int as n from pg_tables where schemaname = 'public'`,
      );
      return rows[0]!.n;
    });
    expect(publicTables).toBe(0);
    const page = (await c.gql(b, PAGE, { first: 10 })).auditEvents;
    expect(page.pageInfo.hasNextPage).toBe(true);
    cursor = page.pageInfo.endCursor;

    // The on-disk state outside the database: the key file, and the journal with the books.
    expect(readdirSync(dirs.dlq)).toContain('journal');
    expect(readdirSync(join(dirs.dlq, 'journal')).sort()).toEqual([
      'auditgraph.lock',
      'journal.log',
    ]);

    const dumpStarted = Date.now();
    sh(BACKUP_DATABASE, { DB, BACKUP: dirs.backup });
    const dumpMs = Date.now() - dumpStarted;
    sh(BACKUP_FILES, {
      BACKUP: dirs.backup,
      DLQ_DIR: dirs.dlq,
      CHECKPOINT_KEY_FILE: dirs.key,
      KEY_BACKUP: dirs.keyBackup,
    });
    console.log(
      JSON.stringify({
        backup: {
          dumpMs,
          dumpBytes: statSync(join(dirs.backup, 'auditgraph.dump')).size,
          journalBytes: statSync(join(dirs.backup, 'dead-letters', 'journal', 'journal.log')).size,
          schemas: schemasAtBackup,
        },
      }),
    );
    const listing = execFileSync('pg_restore', ['-l', join(dirs.backup, 'auditgraph.dump')], {
      encoding: 'utf8',
    });
    expect(listing).toMatch(new RegExp(`TABLE DATA t_${a} audit_events_y`));
    expect(listing).toMatch(/TABLE DATA auditgraph tenants/);
    expect(existsSync(join(dirs.backup, 'dead-letters', 'journal', 'journal.log'))).toBe(true);
    expect(existsSync(join(dirs.backup, 'dead-letters', 'journal', 'auditgraph.lock'))).toBe(false);

    // After the backup: more events in both tenants, signed too. A restore must not have them.
    for (const t of [a, b]) {
      after[t]!.push(...(await write(c, t, events(10, new Date(), `${t}-later`), 'COMMITTED')));
      expect((await c.gql(t, SIGN)).signAuditCheckpoints.data.length).toBe(1);
    }
  }, 180_000);

  it('refuses to start on a copy of the journal directory that still holds the running instance’s lock', async () => {
    // The lock file names the original's pid, which is alive on this host: the copy looks taken.
    const raw = join(work, 'raw-dead-letters');
    execFileSync('cp', ['-a', dirs.dlq, raw]);
    const r = await startRefused('exec node dist/main.js', {
      DATABASE_URL: databaseUrl(),
      DLQ_DIR: raw,
      CHECKPOINT_KEY_FILE: dirs.key,
      INSTANCE_ID: 'backup-raw-copy',
    });
    expect(r.code).not.toBe(0);
    expect(r.output).toContain('JournalInUseError');
    expect(r.output).toContain(
      `the journal in ${raw}/journal is in use by process ${original.child.pid}`,
    );
  }, 120_000);

  let r: Service;

  it('restores into a fresh database: exactly the events stored before the backup, verifying with the restored key', async () => {
    expect(await original.stop()).toBe(0);
    createdDbs.push(restored);
    const vars = {
      BACKUP: dirs.backup,
      KEY_BACKUP: dirs.keyBackup,
      NEW_DB: restored,
      NEW_DLQ_DIR: join(work, 'restored-dead-letters'),
    };
    const restoreStarted = Date.now();
    sh(RESTORE_DATABASE, vars);
    console.log(
      JSON.stringify({ restore: { createdbAndPgRestoreMs: Date.now() - restoreStarted } }),
    );
    sh(RESTORE_JOURNAL, vars);
    expect(await schemasOf(restored)).toEqual(schemasAtBackup);
    r = await startService(START_RESTORED, { ...vars, INSTANCE_ID: 'backup-restored' });
    const c = graphqlClient(r.url);
    expect((await c.gql(a, KEY)).auditChainKey.keyId).toBe(keyId);
    // The cursor key came with the dump: a cursor from before the backup pages on.
    const rest = (await c.gql(b, PAGE, { first: 500, after: cursor })).auditEvents;
    expect(rest.__typename).toBe('AuditEventConnection');
    expect(rest.edges).toHaveLength(before[b]!.length - 10);
    for (const t of [a, b]) {
      const ids = await storedIds(restored, t);
      expect(ids).toHaveLength(before[t]!.length);
      expect(ids).toEqual(sorted(before[t]!));
      for (const id of after[t]!) expect(ids).not.toContain(id);
      // Through the API too.
      expect(sorted(await pageIds(c, t))).toEqual(sorted(before[t]!));
      expect((await c.gql(t, CHECKPOINTS)).auditCheckpoints).toEqual(checkpointsAtBackup[t]);
      const v = await verify(c, t, now);
      expect(v.firstBreak).toBeNull();
      expect(v.ok).toBe(true);
      expect(v.eventsVerified).toBe(before[t]!.length);
      const withEvents = v.months.filter((m) => m.eventsVerified > 0);
      expect(withEvents).toHaveLength(t === a ? 2 : 1);
      for (const m of withEvents) expect(m).toMatchObject({ status: 'OK', checkpoints: 1 });
      // The books came back with the journal directory: the figures at the backup.
      // (Their terms, in the journal, are the only copy: see the control without it below.)
      expect(await statsOf(c, t)).toEqual(statsAtBackup[t]);
    }
  }, 180_000);

  it('accepts, stores, counts and chains new writes on from the restored heads', async () => {
    const c = graphqlClient(r.url);
    for (const t of [a, b]) {
      const month = utcMonth(now).toISOString();
      const head = checkpointsAtBackup[t]!.find((k) => k.month === month)!;
      expect(head).toBeDefined();
      const ids = [
        ...(await write(c, t, events(6, new Date(), `${t}-restored`), 'COMMITTED')),
        ...(await write(
          c,
          t,
          events(6, new Date(Date.now() + 6_000), `${t}-restored`),
          'BUFFERED',
        )),
      ];
      await flushed(c, t);
      const first = (await c.gql(t, EVENT, { id: ids[0] })).auditEvent;
      expect(first.chainSeq).toBe(head.seq + 1);
      expect(first.prevHash).toBe(head.hash);
      const s = await statsOf(c, t);
      const was = statsAtBackup[t]!;
      expect(s).toMatchObject({
        accepted: was.accepted + 12,
        stored: was.stored + 12,
        pending: 0,
        deadLettered: 0,
        identityHolds: true,
      });
      expect(balanced(s)).toBe(true);
      expect(await storedIds(restored, t)).toEqual(sorted([...before[t]!, ...ids]));
      const signed = (await c.gql(t, SIGN)).signAuditCheckpoints.data;
      expect(signed).toEqual([expect.objectContaining({ month, seq: head.seq + 12, keyId })]);
      const v = await verify(c, t, now);
      expect(v.firstBreak).toBeNull();
      expect(v.ok).toBe(true);
      expect(v.eventsVerified).toBe(before[t]!.length + 12);
      expect(v.months.find((m) => m.month === month)).toMatchObject({
        status: 'OK',
        lastSeq: head.seq + 12,
        checkpoints: 2,
      });
    }
  }, 120_000);

  it('runs a retention pass on the restored database: the month past retention is dropped, the rest verifies', async () => {
    const c = graphqlClient(r.url);
    // A retention whose cutoff is 5 days into the month after `old`: `old` is wholly past it.
    const days = Math.floor((now.getTime() - (utcMonth(now, -2).getTime() + 5 * DAY)) / DAY);
    const set = (await c.gql(a, SET_RETENTION, { days })).setRetention;
    expect(set).toMatchObject({
      retention: { days, source: 'TENANT' },
      event: { status: 'STORED' },
    });
    const run = (await c.gql(a, RUN)).runMaintenance;
    expect(run.__typename, JSON.stringify(run)).toBe('MaintenanceReport');
    expect(run.leader).toBe(true);
    expect(run.tenants).toHaveLength(1);
    expect(run.tenants[0].problems).toEqual([]);
    expect(run.tenants[0].dropped).toEqual([
      { month: old.toISOString(), partition: partitionNameFor(old), rowCount: 8, chainSeq: 8 },
    ]);
    const gone = await onDb(restored, async (db) => {
      const { rows } = await db.query<{ oid: string | null; drops: number }>(
        `select to_regclass($1)::text as oid,
                (select count(*)::int from auditgraph.retention_drops where tenant_id = $2) as drops`,
        [`"t_${a}"."${partitionNameFor(old)}"`, a],
      );
      return rows[0]!;
    });
    expect(gone).toEqual({ oid: null, drops: 1 });
    const s = await statsOf(c, a);
    expect(s).toMatchObject({
      accepted: statsAtBackup[a]!.accepted + 12 + 1, // the retention change is an event too
      expired: 8,
      identityHolds: true,
    });
    const v = await verify(c, a, now);
    expect(v.firstBreak).toBeNull();
    expect(v.ok).toBe(true);
    expect(v.months.find((m) => m.month === old.toISOString())!.status).toBe('DROPPED');
    expect(v.months.filter((m) => m.status !== 'DROPPED').every((m) => m.status === 'OK')).toBe(
      true,
    );
    expect(await r.stop()).toBe(0);
  }, 120_000);

  it('negative control: restored without the key file, the service refuses to start; after a rotation (the key lost) the old checkpoints still verify', async () => {
    createdDbs.push(noKey);
    const emptyKeys = join(work, 'no-key-backup');
    mkdirSync(emptyKeys);
    const vars = {
      BACKUP: dirs.backup,
      KEY_BACKUP: emptyKeys,
      NEW_DB: noKey,
      NEW_DLQ_DIR: join(work, 'nokey-dead-letters'),
    };
    sh(RESTORE_DATABASE, vars);
    sh(RESTORE_JOURNAL, vars);
    // The missing file is not taken for a first start: a new key would not be the deployment's.
    const refused = await startRefused(START_RESTORED, { ...vars, INSTANCE_ID: 'backup-no-key' });
    expect(refused.code).toBe(1);
    expect(refused.output).toMatch(
      /CHECKPOINT_KEY_FILE \(.*\) does not exist, and this deployment signs its checkpoints with /,
    );
    expect(refused.output).not.toMatch(/^\s+at /m);
    // The key is lost for good: the operator rotates to a new one. The retired key's public half
    // is in the database, endorsed by the new key, so what it signed still verifies.
    sh(ROTATE_LOST_KEY, vars);
    const n = await startService(START_RESTORED, { ...vars, INSTANCE_ID: 'backup-no-key' });
    const c = graphqlClient(n.url);
    expect((await c.gql(a, KEY)).auditChainKey.keyId).not.toBe(keyId);
    for (const t of [a, b]) {
      expect(await storedIds(noKey, t)).toEqual(sorted(before[t]!));
      const v = await verify(c, t, now);
      expect(v.firstBreak).toBeNull();
      expect(v.ok).toBe(true);
    }
    expect(await n.stop()).toBe(0);
  }, 180_000);

  it('restored without the journal directory, the books start again from zero while the events are there', async () => {
    createdDbs.push(noJournal);
    const vars = {
      BACKUP: dirs.backup,
      KEY_BACKUP: dirs.keyBackup,
      NEW_DB: noJournal,
      NEW_DLQ_DIR: join(work, 'nojournal-dead-letters'),
    };
    sh(RESTORE_DATABASE, vars);
    const j = await startService(START_RESTORED, { ...vars, INSTANCE_ID: 'backup-no-journal' });
    const c = graphqlClient(j.url);
    const s = await statsOf(c, b);
    expect(s).toMatchObject({ accepted: 0, stored: 0, pending: 0, identityHolds: true });
    expect(await storedIds(noJournal, b)).toHaveLength(before[b]!.length);
    expect((await verify(c, b, now)).ok).toBe(true);
    await write(c, b, events(3, new Date(), 'b-nojournal'), 'COMMITTED');
    expect(await statsOf(c, b)).toMatchObject({ accepted: 3, stored: 3, identityHolds: true });
    expect(await j.stop()).toBe(0);
  }, 120_000);
});

describe('with Redis: the books are in Redis, and a database restore does not rewind them', () => {
  const redisUrl = inject('redisUrl');
  const prefix = `ag-backup-${randomUUID().slice(0, 8)}:`;
  const tenant = newTenant('bkr');
  const now = new Date();
  const backupDir = join(work, 'redis-backup');
  const keyDir = join(work, 'redis-keys');
  const restoredDb = `${DB}_redis`;
  const vars = {
    REDIS_URL: redisUrl,
    REDIS_KEY_PREFIX: prefix,
    CHECKPOINT_KEY_FILE: join(keyDir, 'checkpoint-ed25519.pem'),
  };

  afterAll(async () => {
    await deleteRedisKeys(redisUrl, prefix);
  });

  it('restored, the books still count the events written after the backup; the chain verifies', async () => {
    mkdirSync(backupDir);
    // A deployment of its own (its own checkpoint key): a database of its own.
    const url = await extraDatabase('redis_src');
    const db = new URL(url).pathname.slice(1);
    const svc = await startService('exec node dist/main.js', {
      ...vars,
      DATABASE_URL: url,
      DLQ_DIR: join(work, 'redis-dlq'),
      INSTANCE_ID: 'backup-redis',
    });
    const c = graphqlClient(svc.url);
    const recent = recentIn(now);
    const ids = [
      ...(await write(c, tenant, events(20, recent, 'r-now'), 'COMMITTED')),
      ...(await write(c, tenant, events(10, recent, 'r-buf'), 'BUFFERED')),
    ];
    await flushed(c, tenant);
    expect((await c.gql(tenant, SIGN)).signAuditCheckpoints.data).toHaveLength(1);
    sh(BACKUP_DATABASE, { DB: db, BACKUP: backupDir });
    await write(c, tenant, events(7, new Date(), 'r-later'), 'COMMITTED');
    expect(await statsOf(c, tenant)).toMatchObject({ accepted: 37, stored: 37, fromBooks: true });
    expect(await svc.stop()).toBe(0);
    // What Redis holds of the tenant: its books (no dead letters, nothing journaled).
    const redis = new Redis(redisUrl);
    try {
      expect(await redis.hgetall(`${prefix}t:${tenant}:books`)).toMatchObject({
        accepted: '37',
        stored: '37',
      });
    } finally {
      redis.disconnect();
    }

    createdDbs.push(restoredDb);
    sh(RESTORE_DATABASE, { BACKUP: backupDir, NEW_DB: restoredDb });
    const r = await startService(START_RESTORED, {
      ...vars,
      BACKUP: backupDir,
      NEW_DB: restoredDb,
      KEY_BACKUP: keyDir,
      NEW_DLQ_DIR: join(work, 'redis-restored-dlq'),
      INSTANCE_ID: 'backup-redis-restored',
    });
    const rc = graphqlClient(r.url);
    expect(await storedIds(restoredDb, tenant)).toEqual(sorted(ids));
    const v = await verify(rc, tenant, now);
    expect(v.ok).toBe(true);
    expect(v.eventsVerified).toBe(30);
    // The books are Redis's, not the database's: 7 more stored than there are rows.
    const s = await statsOf(rc, tenant);
    expect(s).toMatchObject({ accepted: 37, stored: 37, identityHolds: true });
    expect(s.stored - ids.length).toBe(7);
    expect(await r.stop()).toBe(0);
  }, 180_000);
});

describe('the embedded data directory (./.data/, PGlite)', () => {
  const tenant = newTenant('bke');
  const home = join(work, 'embedded');
  const original = join(home, 'original');
  const backup = join(home, 'backup');
  const hotBackup = join(home, 'hot-backup');
  const cold = join(home, 'cold');
  const hot = join(home, 'hot');
  const now = new Date();
  const ids: string[] = [];
  let svc: Service;

  it('copied (cp -a) after a clean stop, starts on the copy with every event, and the chain verifies', async () => {
    for (const d of [original, backup, hotBackup, cold, hot]) mkdirSync(d, { recursive: true });
    // No DATABASE_URL, no paths: everything in ./.data of the working directory.
    svc = await startService(START_EMBEDDED, SERVICE, original);
    const c = graphqlClient(svc.url);
    const recent = recentIn(now);
    ids.push(...(await write(c, tenant, events(25, recent, 'e-now'), 'COMMITTED')));
    ids.push(...(await write(c, tenant, events(15, recent, 'e-buf'), 'BUFFERED')));
    await flushed(c, tenant);
    expect((await c.gql(tenant, SIGN)).signAuditCheckpoints.data).toHaveLength(1);
    const keyIdBefore = (await c.gql(tenant, KEY)).auditChainKey.keyId;
    expect(readdirSync(join(original, '.data')).sort()).toEqual([
      'checkpoint-ed25519.pem',
      'dead-letters',
      'pglite',
    ]);

    // A copy while it runs carries the lock of a live process: starting on it is refused.
    sh(BACKUP_EMBEDDED, { BACKUP: hotBackup }, original);
    expect(existsSync(join(hotBackup, '.data', 'pglite', 'auditgraph.lock'))).toBe(true);
    sh(RESTORE_EMBEDDED, { BACKUP: hotBackup }, hot);
    const refused = await startRefused(START_EMBEDDED, SERVICE, hot);
    expect(refused.code).not.toBe(0);
    expect(refused.output).toMatch(/^the embedded database in .* is in use by process \d+; /m);
    expect(refused.output).toContain(`in use by process ${svc.child.pid}`);

    expect(await svc.stop()).toBe(0);
    // A clean stop leaves no lock behind.
    expect(existsSync(join(original, '.data', 'pglite', 'auditgraph.lock'))).toBe(false);
    sh(BACKUP_EMBEDDED, { BACKUP: backup }, original);
    sh(RESTORE_EMBEDDED, { BACKUP: backup }, cold);
    const copy = await startService(START_EMBEDDED, SERVICE, cold);
    const cc = graphqlClient(copy.url);
    expect(sorted(await pageIds(cc, tenant))).toEqual(sorted(ids));
    expect((await cc.gql(tenant, KEY)).auditChainKey.keyId).toBe(keyIdBefore);
    const v = await verify(cc, tenant, now);
    expect(v.firstBreak).toBeNull();
    expect(v.ok).toBe(true);
    expect(v.eventsVerified).toBe(ids.length);
    expect(await statsOf(cc, tenant)).toMatchObject({
      accepted: ids.length,
      stored: ids.length,
      identityHolds: true,
    });
    await write(cc, tenant, events(2, new Date(), 'e-copy'), 'COMMITTED');
    expect((await statsOf(cc, tenant)).stored).toBe(ids.length + 2);
    expect(await copy.stop()).toBe(0);
  }, 300_000);

  it('a copy taken while the service ran (idle) starts once that process is gone: its lock is stale, every event is there', async () => {
    const copy = await startService(START_EMBEDDED, SERVICE, hot);
    const c = graphqlClient(copy.url);
    const seen = await pageIds(c, tenant);
    const v = await verify(c, tenant, now);
    const s = await statsOf(c, tenant);
    expect(sorted(seen)).toEqual(sorted(ids));
    expect(v.firstBreak).toBeNull();
    expect(v.ok).toBe(true);
    expect(s).toMatchObject({ accepted: ids.length, stored: ids.length, identityHolds: true });
    expect(await copy.stop()).toBe(0);
  }, 180_000);
});
