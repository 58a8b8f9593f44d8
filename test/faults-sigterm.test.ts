import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import { RedisKeys } from '../src/redis/client.js';
import { countEvents, lockEvents, type TableLock } from './support/db.js';
import { deleteRedisKeys, type ServiceProcess, spawnService, within } from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  graphqlClient,
  newTenant,
  sqlClient,
} from './support/harness.js';

/**
 * Promise 6 with a real process and a real signal: the service runs as its own child process,
 * several clients stream BUFFERED events into it, and it gets SIGTERM mid-stream. It must refuse
 * what comes after (ShuttingDownError or a refused connection: not acknowledged), write what it
 * acknowledged, exit 0, and log its shutdown steps in order. Every acknowledged event must then be
 * stored (or, failing that, be in the dead-letter queue or the spool): none lost.
 *
 * The tenant's table is held locked from just before the signal until every client has been
 * refused, so the flush cannot finish early: the refusals and `/readyz` 503 are then observed
 * during the shutdown for certain, not by luck of timing.
 */

const WRITERS = 4;
const PER_CALL = 20;
const SIGNAL_AFTER = 2_000; // acknowledged events before SIGTERM

describe('SIGTERM under load', () => {
  const prefix = `test:faultterm:${randomBytes(4).toString('hex')}:`;
  const tenant = newTenant('term');
  let svc: ServiceProcess | undefined;
  let admin: pg.Client;
  let lock: TableLock | undefined;

  beforeAll(async () => {
    admin = await sqlClient();
  });

  afterAll(async () => {
    await lock?.release();
    await svc?.kill();
    await admin?.end();
    await dropTenants(tenant);
    await deleteRedisKeys(inject('redisUrl'), prefix);
  });

  it('acknowledged events are all stored, later calls are refused, and the process exits 0 after its shutdown steps in order', async () => {
    const dlqDir = mkdtempSync(join(tmpdir(), 'auditgraph-term-'));
    svc = await spawnService({
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      DLQ_DIR: dlqDir,
      DATABASE_APPLICATION_NAME: `ag-fault-${randomBytes(5).toString('hex')}`,
      FLUSH_INTERVAL_MS: '5000',
      BATCH_SIZE: '5000',
      SHUTDOWN_TIMEOUT_MS: '20000',
    });
    await svc.ready();
    const client = graphqlClient(`${svc.base}/graphql`);

    const first = await client.gql(tenant, CREATE, { input: { events: [event()] } });
    expect(first.createAuditEvents.stored).toBe(1);

    const acknowledged: string[] = [];
    const unknown: string[] = []; // calls whose answer never came: accepted or not, unknown
    const endings: string[] = [];
    const unexpected: string[] = [];
    let signalled = false;
    let reachedTarget!: () => void;
    const target = new Promise<void>((resolve) => {
      reachedTarget = resolve;
    });

    const writer = async (w: number) => {
      // Bounded: a writer stops at its first refusal, or after 2,000 calls whatever happens.
      for (let k = 0; k < 2_000; k++) {
        const events = Array.from({ length: PER_CALL }, () =>
          event({ id: randomUUID(), correlationId: `term-w${w}` }),
        );
        const ids = events.map((e) => e.id as string);
        let res: { status: number; body: any };
        try {
          res = await client.raw(tenant, {
            query: CREATE,
            variables: { input: { events, ack: 'BUFFERED' } },
          });
        } catch (err) {
          // Connection refused or reset: nothing was answered, so nothing was acknowledged.
          if (!signalled) unexpected.push(`w${w}: ${String(err)}`);
          unknown.push(...ids);
          endings.push(`connection: ${(err as Error).cause ?? (err as Error).message}`);
          return;
        }
        const r = res.body?.data?.createAuditEvents;
        if (r?.__typename === 'CreateAuditEventsPayload') {
          const statuses = (r.events as { id: string; status: string }[]).map((e) => e.status);
          if (statuses.some((s) => s !== 'BUFFERED')) unexpected.push(`w${w}: ${statuses}`);
          acknowledged.push(...(r.events as { id: string }[]).map((e) => e.id));
          if (acknowledged.length >= SIGNAL_AFTER) reachedTarget();
          continue;
        }
        if (r?.__typename === 'ShuttingDownError' && signalled) {
          endings.push('ShuttingDownError');
          return;
        }
        unexpected.push(`w${w}: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
        return;
      }
    };
    const writing = Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));

    await within(target, 30_000, `${SIGNAL_AFTER} acknowledged events`);
    lock = await lockEvents(tenant);
    signalled = true;
    expect(svc.child.kill('SIGTERM')).toBe(true);
    await within(writing, 30_000, 'every writer refused');

    // Still shutting down (the flush waits on our lock): not ready, and says why.
    const readyz = await fetch(`${svc.base}/readyz`);
    const readyBody = (await readyz.json()) as { reasons: string[] };
    expect(readyz.status).toBe(503);
    expect(readyBody.reasons).toContain('shutting down');
    const msgs = () => svc!.logs.map((l) => String(l.msg));
    expect(msgs()).not.toContain('stopped');

    await lock.release();
    const code = await within(svc.exited, 30_000, 'process exit after SIGTERM');

    console.info(
      `[faults-sigterm] acknowledged ${acknowledged.length} events from ${WRITERS} writers; ` +
        `endings ${JSON.stringify(endings)}; exit ${code}`,
    );
    expect(unexpected).toEqual([]);
    expect(code, svc.stderr()).toBe(0);
    expect(endings).toHaveLength(WRITERS);
    expect(endings.filter((e) => e === 'ShuttingDownError')).toHaveLength(WRITERS);

    // Every acknowledged event: stored exactly once, or else dead-lettered or spooled.
    const { rows } = await admin.query<{ id: string; n: number }>(
      `select id::text, count(*)::int as n from "t_${tenant}".audit_events
        where id = any($1::uuid[]) group by id`,
      [acknowledged],
    );
    const stored = new Set(rows.map((r) => r.id));
    expect(rows.filter((r) => r.n !== 1)).toEqual([]);
    const elsewhere = await deadLetteredOrSpooled(tenant, prefix, dlqDir);
    const missing = acknowledged.filter((id) => !stored.has(id) && !elsewhere.has(id));
    expect(missing).toEqual([]);
    expect(stored.size).toBe(acknowledged.length);
    const unknownStored = unknown.length
      ? (
          await admin.query<{ n: number }>(
            `select count(*)::int as n from "t_${tenant}".audit_events where id = any($1::uuid[])`,
            [unknown],
          )
        ).rows[0]!.n
      : 0;
    expect(await countEvents(admin, tenant)).toBe(1 + acknowledged.length + unknownStored);

    // The shutdown steps, in order.
    const order = [
      (m: string) => m === 'stopping',
      (m: string) => m.startsWith('stopping: refusing new writes'),
      (m: string) => m.startsWith('stopping: retry worker'),
      (m: string) => m.startsWith('stopping: subscriptions'),
      (m: string) => m.startsWith('stopping: HTTP server'),
      (m: string) => m === 'stopped',
    ];
    // In the order the service logged them (each line's time), not the order the lines were read
    // from the pipe: on a machine under heavy load the two were seen to differ.
    const logged = svc.logs
      .map((l, i) => ({ l, i }))
      .sort((a, b) => Date.parse(String(a.l.time)) - Date.parse(String(b.l.time)) || a.i - b.i)
      .map(({ l }) => l);
    const at = order.map((p) => logged.findIndex((l) => p(String(l.msg))));
    expect(
      at.every((i) => i >= 0),
      msgs().join('\n'),
    ).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(logged[at[0]!]!.signal).toBe('SIGTERM');
    expect(logged[at[5]!]!.pendingLost).toBe(0);
    const errors = svc.logs.filter((l) => Number(l.level) >= 50);
    expect(errors).toEqual([]);
  });
});

/** Ids held for `tenant` in the dead-letter stream (under `prefix`) or in the local spool. */
async function deadLetteredOrSpooled(
  tenant: string,
  prefix: string,
  dlqDir: string,
): Promise<Set<string>> {
  const ids = new Set<string>();
  const r = new Redis(inject('redisUrl'));
  const keys = new RedisKeys(prefix);
  try {
    for (const [, fields] of await r.xrange(keys.tenant(tenant as TenantId, 'dlq'), '-', '+')) {
      const text = fields[1];
      if (text) for (const rec of JSON.parse(text).records) ids.add(rec.id);
    }
    for (const text of Object.values(
      await r.hgetall(keys.tenant(tenant as TenantId, 'dlq', 'parked')),
    )) {
      for (const rec of JSON.parse(text).records) ids.add(rec.id);
    }
  } finally {
    await r.quit();
  }
  const spool = join(dlqDir, 'spool', tenant);
  if (existsSync(spool)) {
    for (const f of readdirSync(spool).filter((n) => n.endsWith('.json'))) {
      for (const rec of JSON.parse(readFileSync(join(spool, f), 'utf8')).records) ids.add(rec.id);
    }
  }
  return ids;
}
