import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type App, buildApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { createDatabase, DataDirInUseError } from '../src/db/client.js';
import { monthStart, partitionName } from '../src/db/partitions.js';
import {
  CREATE,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  PAGE,
  STATS,
  type TestApp,
} from './support/harness.js';

/**
 * The core path on the embedded database (PGlite, no DATABASE_URL): buffered writes and the
 * flush barrier, paging, idempotency, on-demand partitions, the accounting identity, and
 * durability across a restart on the same data directory.
 */

/** Everything this file writes to disk lives under one temporary directory. */
const root = mkdtempSync(join(tmpdir(), 'auditgraph-embedded-'));
const dataDir = join(root, 'pglite');
const tenant = newTenant('emb');
const CORR = 'emb-run';
const BUFFERED_CALLS = 3;
const PER_CALL = 40;
const TOTAL = BUFFERED_CALLS * PER_CALL;
const DAY = 86_400_000;

function config() {
  return loadConfig({
    AUTH_MODE: 'dev',
    DATA_DIR: dataDir,
    // The local dead-letter directory (where the release has one) stays out of the repo too.
    DLQ_DIR: join(root, 'dead-letters'),
    CHECKPOINT_KEY_FILE: join(root, 'checkpoint-ed25519.pem'),
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    // Long enough that BUFFERED events wait in the buffer until flushAudit asks for them.
    FLUSH_INTERVAL_MS: '60000',
    CURSOR_SECRET: 'embedded-test-secret-embedded-test-0123',
  });
}

type Client = Pick<TestApp, 'gql' | 'raw'>;

async function start(): Promise<{ app: App; client: Client }> {
  const app = buildApp(config());
  const { port } = await app.start();
  return { app, client: graphqlClient(`http://127.0.0.1:${port}/graphql`) };
}

async function countRows(app: App): Promise<number> {
  const [row] = await app.db.query<{ n: number }>(
    `select count(*)::int as n from "t_${tenant}".audit_events`,
  );
  return row!.n;
}

/** Every page of `filter`, forward, `size` at a time: the ids in order and the first cursor. */
async function pageAll(
  client: Client,
  filter: Record<string, unknown>,
  size: number,
): Promise<{ ids: string[]; times: number[]; pages: number; firstEndCursor: string | null }> {
  const ids: string[] = [];
  const times: number[] = [];
  let after: string | null = null;
  let pages = 0;
  let firstEndCursor: string | null = null;
  for (;;) {
    const r: Record<string, any> = await client.gql(tenant, PAGE, { first: size, after, filter });
    const c = r.auditEvents;
    expect(c.__typename, JSON.stringify(c)).toBe('AuditEventConnection');
    pages++;
    for (const e of c.edges) {
      ids.push(e.node.id);
      times.push(new Date(e.node.occurredAt).getTime());
    }
    if (pages === 1) firstEndCursor = c.pageInfo.endCursor;
    if (!c.pageInfo.hasNextPage) break;
    after = c.pageInfo.endCursor;
    expect(pages).toBeLessThan(100); // a cursor that never advances would loop forever
  }
  return { ids, times, pages, firstEndCursor };
}

let first: { app: App; client: Client };
let second: { app: App; client: Client } | undefined;
const bufferedIds: string[] = [];
let storedBeforeRestart = 0;
let statsBeforeRestart: Record<string, number> = {};
let cursorBeforeRestart: string | null = null;

beforeAll(async () => {
  first = await start();
}, 180_000);

afterAll(async () => {
  await second?.app.stop();
  await first?.app.stop(); // idempotent
  rmSync(root, { recursive: true, force: true });
}, 120_000);

describe('embedded mode (PGlite)', () => {
  it('uses the embedded database when DATABASE_URL is unset', () => {
    expect(first.app.db.kind).toBe('pglite');
    expect(config().database).toEqual({ kind: 'pglite', dataDir });
  });

  it('holds BUFFERED events as pending until flushAudit, which stores every one of them', async () => {
    const { client, app } = first;
    // Noise under another correlation id, which paging by CORR must not return. Written first:
    // a COMMITTED call drains the whole queue, buffered events included.
    const noise = await client.gql(tenant, CREATE, {
      input: { events: [event({ correlationId: 'other' }), event({ correlationId: 'other' })] },
    });
    expect(noise.createAuditEvents.stored).toBe(2);
    const base = Date.now() - 60_000;
    for (let c = 0; c < BUFFERED_CALLS; c++) {
      const events = Array.from({ length: PER_CALL }, (_, i) =>
        event({
          correlationId: CORR,
          // Some events share a millisecond, so paging must order ties by id.
          occurredAt: new Date(base + c * PER_CALL + Math.floor(i / 2)).toISOString(),
        }),
      );
      const r = await client.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
      expect(r.createAuditEvents).toMatchObject({ accepted: PER_CALL, buffered: PER_CALL });
      bufferedIds.push(...r.createAuditEvents.events.map((e: { id: string }) => e.id));
    }

    const before = (await client.gql(tenant, STATS)).auditStats;
    expect(before).toMatchObject({ accepted: TOTAL + 2, stored: 2, pending: TOTAL });
    expect(await countRows(app)).toBe(2);

    const f = await client.gql(tenant, FLUSH, { timeoutMs: 30_000 });
    expect(f.flushAudit).toMatchObject({
      __typename: 'FlushAuditPayload',
      stored: TOTAL,
      duplicates: 0,
      deadLettered: 0,
      waitedFor: TOTAL,
    });
    expect(await countRows(app)).toBe(TOTAL + 2);
  });

  it('pages by correlation id through every buffered event exactly once, newest first', async () => {
    const { ids, times, pages, firstEndCursor } = await pageAll(
      first.client,
      { correlationId: CORR },
      25,
    );
    expect(pages).toBe(Math.ceil(TOTAL / 25));
    expect(ids).toHaveLength(TOTAL);
    expect(new Set(ids).size).toBe(TOTAL);
    expect([...ids].sort()).toEqual([...bufferedIds].sort());
    for (let i = 1; i < times.length; i++) expect(times[i]).toBeLessThanOrEqual(times[i - 1]!);
    cursorBeforeRestart = firstEndCursor;
  });

  it('answers DUPLICATE for a COMMITTED re-send of the same (id, occurredAt)', async () => {
    const { client, app } = first;
    const occurredAt = new Date(Date.now() - 5_000).toISOString();
    const events = [
      event({ id: randomUUID(), occurredAt, correlationId: 'idem' }),
      event({ id: randomUUID(), occurredAt, correlationId: 'idem' }),
    ];
    const once = await client.gql(tenant, CREATE, { input: { events, ack: 'COMMITTED' } });
    expect(once.createAuditEvents).toMatchObject({ stored: 2, duplicates: 0 });
    const rows = await countRows(app);
    const again = await client.gql(tenant, CREATE, { input: { events } });
    expect(again.createAuditEvents).toMatchObject({ accepted: 2, stored: 0, duplicates: 2 });
    expect(again.createAuditEvents.events.map((e: { status: string }) => e.status)).toEqual([
      'DUPLICATE',
      'DUPLICATE',
    ]);
    expect(again.createAuditEvents.events.map((e: { id: string }) => e.id)).toEqual(
      events.map((e) => e.id),
    );
    expect(await countRows(app)).toBe(rows);
  });

  it('creates the partition of an old month on demand and stores the event in it', async () => {
    const { client, app } = first;
    const old = new Date(Date.now() - 200 * DAY);
    const name = partitionName(monthStart(old));
    const attached = () =>
      app.db.query<{ relname: string }>(
        `select c.relname from pg_inherits i
           join pg_class c on c.oid = i.inhrelid
          where i.inhparent = $1::regclass and c.relname = $2`,
        [`"t_${tenant}".audit_events`, name],
      );
    expect(await attached()).toHaveLength(0);
    const r = await client.gql(tenant, CREATE, {
      input: { events: [event({ occurredAt: old.toISOString(), correlationId: 'old' })] },
    });
    expect(r.createAuditEvents.stored).toBe(1);
    expect(await attached()).toHaveLength(1);
    const [row] = await app.db.query<{ n: number }>(
      `select count(*)::int as n from "t_${tenant}"."${name}"`,
    );
    expect(row!.n).toBe(1);
  });

  it('keeps the accounting identity, with stored equal to count(*)', async () => {
    const { client, app } = first;
    const s = (await client.gql(tenant, STATS)).auditStats;
    expect(s.__typename).toBe('AuditStats');
    expect(s.pending).toBe(0);
    expect(s.accepted).toBe(s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded);
    expect(s.identityHolds).toBe(true);
    expect(s).toMatchObject({ accepted: TOTAL + 2 + 4 + 1, duplicates: 2, failedWrites: 0 });
    expect(await countRows(app)).toBe(s.stored);
    storedBeforeRestart = s.stored;
    statsBeforeRestart = s;
  });

  it('refuses a second opener of the data directory while the service holds it (a CLI would lose its writes)', async () => {
    expect(() => createDatabase({ kind: 'pglite', dataDir }, first.app.log)).toThrow(
      DataDirInUseError,
    );
    // Other processes, as `npm run keys`, `npm run db:migrate` and a second `npm start` would be:
    // each refused with the one line that says why (no stack trace), nothing written.
    const env = {
      PATH: process.env.PATH,
      DATA_DIR: dataDir,
      AUTH_MODE: 'keys',
      PORT: '0',
      CHECKPOINT_KEY_FILE: join(root, 'checkpoint-ed25519.pem'),
      DLQ_DIR: join(root, 'dead-letters'),
    };
    for (const args of [
      ['--import', 'tsx', 'src/cli/keys.ts', 'list'],
      ['--import', 'tsx', 'src/db/migrate-cli.ts'],
      ['dist/main.js'],
    ]) {
      const run = spawnSync(process.execPath, args, {
        cwd: fileURLToPath(new URL('..', import.meta.url)),
        env,
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(run.status, args.join(' ')).toBe(1);
      expect(run.stdout, args.join(' ')).toBe('');
      expect(run.stderr.trim().split('\n'), args.join(' ')).toEqual([
        expect.stringMatching(/^the embedded database in .* is in use by process \d+; /),
      ]);
    }
  }, 120_000);

  it('keeps every event across a stop and a restart on the same data directory', async () => {
    await first.app.stop();
    second = await start();
    expect(await countRows(second.app)).toBe(storedBeforeRestart);
    const { ids } = await pageAll(second.client, { correlationId: CORR }, 50);
    expect([...ids].sort()).toEqual([...bufferedIds].sort());
    // The identity's terms are the books (in the journal file), not the process's: the new
    // instance answers what the first had counted.
    const s = (await second.client.gql(tenant, STATS)).auditStats;
    const { accepted, stored, duplicates, pending, deadLettered, discarded } = statsBeforeRestart;
    expect(s).toMatchObject({
      accepted,
      stored,
      duplicates,
      pending,
      deadLettered,
      discarded,
      identityHolds: true,
    });
    expect(s.stored).toBe(storedBeforeRestart);
  }, 180_000);

  it('accepts a cursor issued before the restart (same CURSOR_SECRET) and continues after it', async () => {
    expect(cursorBeforeRestart).not.toBeNull();
    const r = await second!.client.gql(tenant, PAGE, {
      first: 500,
      after: cursorBeforeRestart,
      filter: { correlationId: CORR },
    });
    expect(r.auditEvents.__typename).toBe('AuditEventConnection');
    expect(r.auditEvents.edges).toHaveLength(TOTAL - 25);
    expect(r.auditEvents.pageInfo.hasPreviousPage).toBe(true);
  });

  it('still accepts writes after the restart', async () => {
    const r = await second!.client.gql(tenant, CREATE, { input: { events: [event()] } });
    expect(r.createAuditEvents.stored).toBe(1);
    expect(await countRows(second!.app)).toBe(storedBeforeRestart + 1);
  });
});
