import { randomUUID } from 'node:crypto';
import { encodeGlobalID } from '@pothos/plugin-relay';
import { type MigrationMeta, readMigrationFiles } from 'drizzle-orm/migrator';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { createDatabase, type Database } from '../src/db/client.js';
import { PartitionManager } from '../src/db/partitions.js';
import { auditEventColumnsByField } from '../src/db/tenant-tables.js';
import { ChainHasher, canonicalEvent, chainMonth, genesisHash } from '../src/domain/chain.js';
import type { AuditEventRecord } from '../src/domain/event.js';
import type { TenantId } from '../src/domain/tenant.js';
import { BatchWriter } from '../src/ingest/batch-writer.js';
import { createLogger } from '../src/logger.js';
import { utcMonth, waitUntil } from './support/db.js';
import { extraDatabase } from './support/file-database.js';
import { CREATE, graphqlClient, newTenant, startApp } from './support/harness.js';
import { type Instance, spawnInstance } from './support/processes.js';

/*
 * Upgrades. A database at the previous schema version — every migration but the newest, as the
 * drizzle/ folders say at test time, so the test moves with each new migration — holds a tenant
 * whose events were written the way that version writes them. The current service starts on it,
 * migrates it, and must read those events back field by field, verify their chains, and chain
 * new events after them. The second test is a rolling upgrade: an instance of the previous
 * version keeps writing while two new instances start at once and migrate.
 */

const DRIZZLE = new URL('../drizzle/', import.meta.url).pathname;

interface MigrationSets {
  control: MigrationMeta[];
  tenant: MigrationMeta[];
}

/** Both migration sets, in the order the migrator applies them (src/db/migrations.ts). */
function currentMigrations(): MigrationSets {
  return {
    control: readMigrationFiles({ migrationsFolder: `${DRIZZLE}control` }),
    tenant: readMigrationFiles({ migrationsFolder: `${DRIZZLE}tenant` }),
  };
}

/**
 * The previous schema version. When the newest migration (by the time drizzle-kit gave its
 * folder) is a tenant migration, that one is left out. When it is a control migration, the
 * release may have added a tenant migration as well: the last of each set that has more than
 * one is left out, so the start-up under test applies both.
 */
function previousMigrations(current: MigrationSets): MigrationSets & { left: string[] } {
  const newestControl = current.control.at(-1)!;
  const newestTenant = current.tenant.at(-1)!;
  if (newestTenant.folderMillis >= newestControl.folderMillis && current.tenant.length > 1) {
    return {
      control: current.control,
      tenant: current.tenant.slice(0, -1),
      left: [`tenant/${newestTenant.name}`],
    };
  }
  const cut = (set: MigrationMeta[]) => (set.length > 1 ? set.slice(0, -1) : set);
  const control = cut(current.control);
  const tenant = cut(current.tenant);
  return {
    control,
    tenant,
    left: [
      ...current.control.slice(control.length).map((m) => `control/${m.name}`),
      ...current.tenant.slice(tenant.length).map((m) => `tenant/${m.name}`),
    ],
  };
}

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
}

/**
 * Installs the previous version: its control migrations, then `tenant` registered and migrated
 * to its tenant migrations, each set in one transaction and recorded as the migrator records it.
 */
async function installPrevious(c: pg.Client, previous: MigrationSets, tenant: string) {
  const run = async (m: MigrationMeta) => {
    for (const statement of m.sql) if (statement.trim()) await c.query(statement);
  };
  await c.query('begin');
  for (const m of previous.control) {
    await run(m);
    await c.query('insert into auditgraph.control_migrations (name, hash) values ($1, $2)', [
      m.name,
      m.hash,
    ]);
  }
  await c.query('commit');
  const schema = `t_${tenant}`;
  await c.query('begin');
  await c.query('insert into auditgraph.tenants (tenant_id, schema_name) values ($1, $2)', [
    tenant,
    schema,
  ]);
  await c.query(`create schema "${schema}"`);
  await c.query(`select set_config('search_path', $1, true)`, [`"${schema}"`]);
  for (const m of previous.tenant) {
    await run(m);
    await c.query(
      'insert into auditgraph.tenant_migrations (tenant_id, name, hash) values ($1, $2, $3)',
      [tenant, m.name, m.hash],
    );
  }
  await c.query(
    'update auditgraph.tenants set migration = $2, migrated_at = now() where tenant_id = $1',
    [tenant, previous.tenant.at(-1)!.name],
  );
  await c.query('commit');
}

/** The month's partition, created as the partition manager of that version creates it. */
async function createPartition(c: pg.Client, schema: string, month: Date) {
  const name = `audit_events_y${month.getUTCFullYear()}m${String(month.getUTCMonth() + 1).padStart(2, '0')}`;
  await c.query(
    `create table "${schema}"."${name}" (like "${schema}".audit_events including defaults including constraints)`,
  );
  await c.query(
    `alter table "${schema}".audit_events attach partition "${schema}"."${name}"
       for values from ('${month.toISOString()}') to ('${utcMonth(month, 1).toISOString()}')`,
  );
  await c.query(
    `create trigger audit_events_no_truncate before truncate on "${schema}"."${name}"
       for each statement execute function "${schema}".audit_truncate_refused()`,
  );
}

/** An event as stored: its record and what the writer added. */
interface StoredEvent {
  record: AuditEventRecord;
  batchId: string;
  chainSeq: number;
  prevHash: Buffer;
  hash: Buffer;
}

/** Column name → field of the record, for every event column the service defines. */
const FIELD_OF_COLUMN = new Map(
  Object.entries(auditEventColumnsByField).map(([field, column]) => [column.name, field]),
);

/**
 * Writes one batch the way the previous version's batch writer does, in plain SQL, in one
 * transaction: the heads of the batch's month chains taken (creating missing ones), the ids
 * claimed, each event chained — SHA-256 of the previous hash and the event's RFC 8785 form, the
 * month's genesis hash first — and stored with its batch, the heads moved, the batch in the
 * ledger. The event columns are those the previous version's table has: a column this writer
 * cannot fill fails the test, naming it.
 */
async function writeAsPrevious(
  c: pg.Client,
  tenant: string,
  records: readonly AuditEventRecord[],
): Promise<StoredEvent[]> {
  const schema = `t_${tenant}`;
  const hasher = new ChainHasher();
  const { rows: columns } = await c.query<{ column_name: string }>(
    `select column_name from information_schema.columns
      where table_schema = $1 and table_name = 'audit_events' order by ordinal_position`,
    [schema],
  );
  const names = columns.map((r) => r.column_name);
  for (const n of names) {
    if (!FIELD_OF_COLUMN.has(n))
      throw new Error(`the previous version's audit_events.${n} is unknown here`);
  }
  const batchId = randomUUID();
  const stored: StoredEvent[] = [];
  await c.query('begin');
  try {
    const heads = new Map<number, { seq: number; hash: Buffer | null }>();
    const months = [...new Set(records.map((r) => chainMonth(r.occurredAt).getTime()))].sort(
      (a, b) => a - b,
    );
    for (const m of months) {
      const { rows } = await c.query<{ seq: string; hash: Buffer | null }>(
        `insert into "${schema}".chain_heads as h (month, seq) values ($1, 0)
         on conflict (month) do update set updated_at = h.updated_at returning seq, hash`,
        [new Date(m).toISOString()],
      );
      heads.set(m, { seq: Number(rows[0]!.seq), hash: rows[0]!.hash });
    }
    for (const r of records) {
      const month = chainMonth(r.occurredAt);
      const head = heads.get(month.getTime())!;
      const prevHash = head.hash ?? genesisHash(tenant, month);
      const data = r.dataJson === null ? null : JSON.parse(r.dataJson);
      const hash = hasher.link(prevHash, canonicalEvent({ ...r, data }));
      head.seq += 1;
      head.hash = hash;
      const event: StoredEvent = { record: r, batchId, chainSeq: head.seq, prevHash, hash };
      const value = (column: string): unknown => {
        const field = FIELD_OF_COLUMN.get(column)!;
        if (field === 'data') return r.dataJson;
        if (field in event && field !== 'record') return event[field as keyof StoredEvent];
        const v = r[field as keyof AuditEventRecord];
        return v instanceof Date ? v.toISOString() : v;
      };
      await c.query(`insert into "${schema}".event_ids (id, occurred_at) values ($1, $2)`, [
        r.id,
        r.occurredAt.toISOString(),
      ]);
      await c.query(
        `insert into "${schema}".audit_events (${names.join(', ')})
         values (${names.map((_, i) => `$${i + 1}`).join(', ')})`,
        names.map(value),
      );
      stored.push(event);
    }
    for (const [m, head] of heads) {
      await c.query(
        `update "${schema}".chain_heads set seq = $2, hash = $3, updated_at = now() where month = $1`,
        [new Date(m).toISOString(), head.seq, head.hash],
      );
    }
    await c.query(
      `insert into "${schema}".batch_ledger
         (batch_id, event_count, stored_count, duplicate_positions, rejected_positions, instance_id)
       values ($1, $2, $2, '{}', '{}', 'previous-version')`,
      [batchId, records.length],
    );
    await c.query('commit');
  } catch (err) {
    await c.query('rollback');
    throw err;
  }
  return stored;
}

let serial = 0;
/** A record with every field set (or, with `sparse`, every optional one null). */
function record(occurredAt: Date, correlationId: string, sparse = false): AuditEventRecord {
  serial++;
  const optional = (v: string) => (sparse ? null : v);
  return {
    id: randomUUID(),
    occurredAt,
    receivedAt: new Date(occurredAt.getTime() + 250),
    eventType: 'deployment.rollout.finished',
    category: 'deployment',
    action: 'rollout',
    outcome: serial % 3 === 0 ? 'FAILURE' : 'SUCCESS',
    correlationId,
    actorType: 'service',
    actorId: `deployer-${serial}`,
    actorIp: optional('2001:db8::7'),
    resourceType: 'service',
    resourceId: `svc-${serial % 4}`,
    resourceName: optional('Bücher “api”'),
    parentEventId: sparse ? null : randomUUID(),
    severity: optional('warning'),
    durationMs: sparse ? null : 1000 + serial,
    errorCode: optional('E_ROLLOUT'),
    errorMessage: optional('line one\nline two'),
    namespace: optional('prod'),
    clusterId: optional('eu-1'),
    traceId: optional('4bf92f3577b34da6a3ce929d0e0e4736'),
    spanId: optional('00f067aa0ba902b7'),
    dataJson: sparse
      ? null
      : JSON.stringify({ n: serial, ok: true, list: [1, 2.5, 'x'], nested: { z: null, a: 'é' } }),
  };
}

/** The event as `auditEvents` must show it: every field of AuditEvent. */
function asGraphQL(e: StoredEvent) {
  const r = e.record;
  return {
    id: encodeGlobalID('AuditEvent', `${r.id}@${r.occurredAt.toISOString()}`),
    eventId: r.id,
    occurredAt: r.occurredAt.toISOString(),
    receivedAt: r.receivedAt.toISOString(),
    eventType: r.eventType,
    category: r.category,
    action: r.action,
    outcome: r.outcome,
    correlationId: r.correlationId,
    actor: { type: r.actorType, actorId: r.actorId, ip: r.actorIp },
    resource: { type: r.resourceType, resourceId: r.resourceId, name: r.resourceName },
    parentEventId: r.parentEventId,
    severity: r.severity,
    durationMs: r.durationMs,
    errorCode: r.errorCode,
    errorMessage: r.errorMessage,
    namespace: r.namespace,
    clusterId: r.clusterId,
    traceId: r.traceId,
    spanId: r.spanId,
    data: r.dataJson === null ? null : JSON.parse(r.dataJson),
    batchId: e.batchId,
    chainSeq: e.chainSeq,
    prevHash: e.prevHash.toString('hex'),
    hash: e.hash.toString('hex'),
  };
}

const EVENTS = `query Events($filter: AuditEventFilter) {
  auditEvents(first: 500, filter: $filter, order: OCCURRED_AT_ASC) {
    edges { node {
      id eventId occurredAt receivedAt eventType category action outcome correlationId
      actor { type actorId ip } resource { type resourceId name }
      parentEventId severity durationMs errorCode errorMessage namespace clusterId traceId spanId
      data batchId chainSeq prevHash hash
    } }
    pageInfo { hasNextPage }
  }
}`;

const VERIFY = `query Verify($from: DateTime!, $to: DateTime!) {
  verifyAuditChain(from: $from, to: $to) {
    ok eventsVerified
    months { month status eventsVerified lastSeq lastHash checkpoints }
    firstBreak { kind seq eventId message }
  }
}`;

const SIGN = `mutation { signAuditCheckpoints { data { month seq hash } } }`;

type Gql = ReturnType<typeof graphqlClient>['gql'];

async function eventsOf(gql: Gql, tenant: string, correlationId: string) {
  const r = await gql(tenant, EVENTS, { filter: { correlationId } });
  expect(r.auditEvents.pageInfo.hasNextPage).toBe(false);
  return r.auditEvents.edges.map((e: { node: Record<string, unknown> }) => e.node);
}

/** Events for `create`: `n` at `base` + k ms, with ids, in one correlation id. */
function inputs(n: number, base: number, correlationId: string) {
  return Array.from({ length: n }, (_, k) => ({
    id: randomUUID(),
    occurredAt: new Date(base + k).toISOString(),
    eventType: 'deployment.rollout.finished',
    category: 'deployment',
    action: 'rollout',
    outcome: 'SUCCESS',
    correlationId,
    actor: { type: 'service', id: 'deployer-new' },
    resource: { type: 'service', id: 'svc-new' },
    data: { k },
  }));
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  const failures: unknown[] = [];
  for (const clean of cleanups.splice(0).reverse()) await clean().catch((e) => failures.push(e));
  if (failures.length) throw failures[0];
});

/** The months the tests write in: the previous one and this one (never before its start). */
function months() {
  const now = Date.now();
  const thisMonth = utcMonth(new Date(now));
  return {
    previous: utcMonth(new Date(now), -1),
    current: thisMonth,
    next: utcMonth(new Date(now), 1),
    /** An instant of this month before now, for events "of now" that sort after older ones. */
    recent: Math.max(thisMonth.getTime() + 60_000, now - 3_600_000),
  };
}

describe('upgrade from the previous schema version', () => {
  it('start-up migrates the tenant; its events read back field by field, verify, and new ones chain after them', async () => {
    const current = currentMigrations();
    const previous = previousMigrations(current);
    expect(previous.left.length).toBeGreaterThan(0);
    // A database of its own (dropped after the file): nothing else migrated it.
    const db = { url: await extraDatabase('up_start') };
    const tenant = newTenant('up');
    const schema = `t_${tenant}`;
    const sql = await connect(db.url);
    cleanups.push(() => sql.end());
    await installPrevious(sql, previous, tenant);
    const { previous: lastMonth, current: thisMonth, next, recent } = months();
    await createPartition(sql, schema, lastMonth);
    await createPartition(sql, schema, thisMonth);

    // Events of the previous version: two months, two batches each, full and sparse ones.
    const corr = `upgrade-${tenant}`;
    const old: StoredEvent[] = [];
    for (const [month, at] of [
      [lastMonth, lastMonth.getTime() + 3_600_000],
      [thisMonth, recent],
    ] as const) {
      for (let b = 0; b < 2; b++) {
        const batch = Array.from({ length: 5 }, (_, k) =>
          record(new Date(at + b * 10 + k), corr, k === 4),
        );
        old.push(...(await writeAsPrevious(sql, tenant, batch)));
      }
      expect(
        old.filter((e) => chainMonth(e.record.occurredAt).getTime() === month.getTime()),
      ).toHaveLength(10);
    }

    const app = await startApp({ DATABASE_URL: db.url, AUDIT_READS: 'false' });
    cleanups.push(() => app.stop());

    // Migrated: every migration of both sets recorded once, the tenant at the newest.
    const applied = await sql.query<{ name: string }>(
      'select name from auditgraph.tenant_migrations where tenant_id = $1 order by name',
      [tenant],
    );
    expect(applied.rows.map((r) => r.name)).toEqual(current.tenant.map((m) => m.name));
    const control = await sql.query<{ name: string }>(
      'select name from auditgraph.control_migrations order by name',
    );
    expect(control.rows.map((r) => r.name)).toEqual(current.control.map((m) => m.name));
    const row = await sql.query<{ migration: string }>(
      'select migration from auditgraph.tenants where tenant_id = $1',
      [tenant],
    );
    expect(row.rows[0]!.migration).toBe(current.tenant.at(-1)!.name);

    // Every field of every event written before, as the previous version stored it.
    const before = await eventsOf(app.gql, tenant, corr);
    expect(before).toEqual(old.map(asGraphQL));

    const range = { from: lastMonth.toISOString(), to: next.toISOString() };
    const verified = (await app.gql(tenant, VERIFY, range)).verifyAuditChain;
    expect(verified.firstBreak).toBeNull();
    expect(verified.ok).toBe(true);
    expect(verified.eventsVerified).toBe(20);
    expect(
      verified.months.map((m: Record<string, unknown>) => [m.month, m.status, m.lastSeq]),
    ).toEqual([
      [lastMonth.toISOString(), 'OK', 10],
      [thisMonth.toISOString(), 'OK', 10],
    ]);

    // New writes land after them: positions 11.. of each month, linked to the last old hash.
    const fresh = [
      ...inputs(3, lastMonth.getTime() + 7_200_000, corr),
      ...inputs(3, recent + 1_000, corr),
    ];
    const created = (await app.gql(tenant, CREATE, { input: { events: fresh, ack: 'COMMITTED' } }))
      .createAuditEvents;
    expect(created.__typename).toBe('CreateAuditEventsPayload');
    expect(created.stored).toBe(6);
    const after = await eventsOf(app.gql, tenant, corr);
    expect(after).toHaveLength(26);
    for (const month of [lastMonth, thisMonth]) {
      const inMonth = (e: { occurredAt: string }) =>
        chainMonth(new Date(e.occurredAt)).getTime() === month.getTime();
      const lastOld = old
        .filter((e) => inMonth({ occurredAt: e.record.occurredAt.toISOString() }))
        .at(-1)!;
      const added = after
        .filter(
          (e: { eventId: string; occurredAt: string }) =>
            fresh.some((f) => f.id === e.eventId) && inMonth(e),
        )
        .sort((a: { chainSeq: number }, b: { chainSeq: number }) => a.chainSeq - b.chainSeq);
      expect(added.map((e: { chainSeq: number }) => e.chainSeq)).toEqual([11, 12, 13]);
      expect(added[0].prevHash).toBe(lastOld.hash.toString('hex'));
    }
    await app.gql(tenant, SIGN);
    const again = (await app.gql(tenant, VERIFY, range)).verifyAuditChain;
    expect(again.firstBreak).toBeNull();
    expect(again.ok).toBe(true);
    expect(again.eventsVerified).toBe(26);
    expect(again.months.map((m: Record<string, unknown>) => [m.status, m.lastSeq])).toEqual([
      ['OK', 13],
      ['OK', 13],
    ]);
    expect(again.months.every((m: { checkpoints: number }) => m.checkpoints >= 1)).toBe(true);

    // The tenant's recorded version is its newest migration's, and an instance of an earlier
    // release (here: the current one, after a later release recorded its own) does not write
    // its older name over it.
    const version = async () =>
      (await sql.query('select migration from auditgraph.tenants where tenant_id = $1', [tenant]))
        .rows[0].migration as string;
    expect(await version()).toBe(current.tenant.at(-1)!.name);
    const later = '99991231235959_a_later_release';
    await sql.query('update auditgraph.tenants set migration = $2 where tenant_id = $1', [
      tenant,
      later,
    ]);
    await app.app.graph.migrator.migrateTenant(tenant as TenantId);
    expect(await version()).toBe(later);
  });

  it('rolling: the previous version keeps writing while two new instances start at once and migrate it', async () => {
    const current = currentMigrations();
    const previous = previousMigrations(current);
    // A database of its own (dropped after the file): nothing else migrated it.
    const db = { url: await extraDatabase('up_rolling') };
    const tenant = newTenant('roll');
    const schema = `t_${tenant}`;
    const sql = await connect(db.url);
    cleanups.push(() => sql.end());
    await installPrevious(sql, previous, tenant);
    const { previous: lastMonth, next, recent } = months();

    // The old instance: the service's own batch writer, called as the previous version calls
    // it — without a journal, whose settlements are what the newest migration adds. Without
    // one it sends the previous version's statements, so it runs against either schema.
    const config = loadConfig({
      DATABASE_URL: db.url,
      DATABASE_APPLICATION_NAME: `ag-old-${tenant}`,
      LOG_LEVEL: 'silent',
    });
    const log = createLogger(config);
    const oldDb: Database = createDatabase(config.database, log);
    cleanups.push(() => oldDb.close());
    const oldWriter = new BatchWriter(oldDb, new PartitionManager(oldDb, log), log, 'old');
    const corr = `rolling-${tenant}`;
    let oldStored = 0;
    let n = 0;
    const latencies: { at: number; ms: number }[] = [];
    let writing = true;
    const oldLoop = (async () => {
      while (writing) {
        const batch = Array.from({ length: 10 }, () =>
          record(new Date(recent + n++), corr, n % 5 === 0),
        );
        const t0 = performance.now();
        const result = await oldWriter.write(schema, randomUUID(), batch);
        latencies.push({ at: Date.now(), ms: performance.now() - t0 });
        expect(result.statuses.every((s) => s === 'STORED')).toBe(true);
        oldStored += batch.length;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    cleanups.push(async () => {
      writing = false;
      await oldLoop.catch(() => {});
    });
    await waitUntil(
      'old writes',
      async () => oldStored,
      (v) => v >= 50,
      10_000,
    );

    // Watches for any session of the old instance waiting on a lock, from now until both new
    // instances are up (after that, the new instances' own writes contend for the tenant's chain
    // heads with the old one's, as any two writers of a tenant do: that is not the migration).
    let oldWaitingOnLocks = 0;
    let watching = true;
    const watcher = (async () => {
      const w = await connect(db.url);
      try {
        while (watching) {
          const { rows } = await w.query<{ n: number }>(
            `select count(*)::int as n from pg_stat_activity
              where application_name = $1 and wait_event_type = 'Lock'`,
            [`ag-old-${tenant}`],
          );
          oldWaitingOnLocks = Math.max(oldWaitingOnLocks, rows[0]!.n);
          await new Promise((r) => setTimeout(r, 5));
        }
      } finally {
        await w.end();
      }
    })();
    cleanups.push(async () => {
      watching = false;
      await watcher;
    });

    // Two new instances start at once. The tenant's migration lock is held here until both
    // wait on it, so both really contend for it when it is let go.
    const gate = await connect(db.url);
    cleanups.push(() => gate.end());
    await gate.query('begin');
    await gate.query('select pg_advisory_xact_lock(hashtext($1))', [
      `auditgraph:migrate:${tenant}`,
    ]);
    const env = { DATABASE_URL: db.url, AUDIT_READS: 'false', CHECKPOINT_INTERVAL_MS: '0' };
    const startedAt = Date.now();
    const starting = [
      spawnInstance({ ...env, INSTANCE_ID: `new-a-${tenant}` }),
      spawnInstance({ ...env, INSTANCE_ID: `new-b-${tenant}` }),
    ];
    for (const s of starting) {
      cleanups.push(async () => {
        const inst = await s.catch(() => null);
        await inst?.stop();
      });
    }
    await waitUntil(
      'both new instances waiting on the tenant migration lock',
      async () => {
        const { rows } = await sql.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity
            where application_name like $1 and wait_event_type = 'Lock' and wait_event = 'advisory'`,
          [`ag-new-%-${tenant}`],
        );
        return rows[0]!.n;
      },
      (v) => v === 2,
      60_000,
    );
    const releasedAt = Date.now();
    await gate.query('commit');
    const instances: Instance[] = await Promise.all(starting);
    const upAt = Date.now();
    watching = false;
    await watcher;

    // One of them migrated the tenant (the missing migrations, once), the other found it done.
    const missing = current.tenant.length - previous.tenant.length;
    const migratedLogs = instances.map((i) =>
      i.logs.filter((l) => l.msg === 'tenant schema migrated' && l.tenant === tenant),
    );
    expect(migratedLogs.map((l) => l.map((e) => e.migrations)).sort()).toEqual([[], [missing]]);
    for (const i of instances) {
      expect(i.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    }
    const applied = await sql.query<{ name: string }>(
      'select name from auditgraph.tenant_migrations where tenant_id = $1 order by name',
      [tenant],
    );
    expect(applied.rows.map((r) => r.name)).toEqual(current.tenant.map((m) => m.name));

    // The old instance writes on against the migrated schema, beside the new ones.
    const storedAtUp = oldStored;
    await waitUntil(
      'old writes after the upgrade',
      async () => oldStored,
      (v) => v >= storedAtUp + 50,
      10_000,
    );
    const viaNew = [
      ...inputs(5, lastMonth.getTime() + 3_600_000, corr),
      ...inputs(5, recent + 500_000, corr),
    ];
    for (const [k, inst] of instances.entries()) {
      const r = await graphqlClient(inst.url).gql(tenant, CREATE, {
        input: { events: viaNew.slice(k * 5, k * 5 + 5), ack: 'COMMITTED' },
      });
      expect(r.createAuditEvents.stored).toBe(5);
    }
    writing = false;
    await oldLoop;

    const gql = graphqlClient(instances[0]!.url).gql;
    const verified = (
      await gql(tenant, VERIFY, { from: lastMonth.toISOString(), to: next.toISOString() })
    ).verifyAuditChain;
    expect(verified.firstBreak).toBeNull();
    expect(verified.ok).toBe(true);
    expect(verified.eventsVerified).toBe(oldStored + viaNew.length);
    const { rows: counted } = await sql.query<{ n: number }>(
      `select count(*)::int as n from "${schema}".audit_events`,
    );
    expect(counted[0]!.n).toBe(oldStored + viaNew.length);

    // Nothing the migration did made the old instance wait on a lock.
    expect(oldWaitingOnLocks).toBe(0);
    const during = latencies.filter((l) => l.at >= releasedAt && l.at <= upAt + 1_000);
    const baseline = latencies.filter((l) => l.at < startedAt);
    const max = (ls: { ms: number }[]) => Math.max(...ls.map((l) => l.ms));
    expect(during.length).toBeGreaterThan(0);
    expect(max(during)).toBeLessThan(2_000);
    console.info(
      `rolling upgrade: ${baseline.length} old batches before (max ${max(baseline).toFixed(0)} ms), ` +
        `${during.length} while migrating (max ${max(during).toFixed(0)} ms), ` +
        `migration lock released to both up ${upAt - releasedAt} ms, ` +
        `old sessions waiting on a lock: ${oldWaitingOnLocks}, ` +
        `events ${oldStored} old + ${viaNew.length} new`,
    );
  });
});
