import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childServices, type ServiceProcess, within } from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  graphqlClient,
  newTenant,
  sqlClient,
  storedCounts,
} from './support/harness.js';

/**
 * Recovery replays exactly what was not written. A process killed after a batch committed but
 * before its journal let go of the batch's calls leaves those calls in the journal; the commit
 * recorded, in its own transaction, which places of each call it settled, and recovery replays
 * only the others: every event stored once, none coming back as its own duplicate. The window
 * between a commit and a release is too short to hit on purpose with a kill, so it is set up by
 * hand here: a call journaled by a killed process, part of whose events a commit then stored.
 */

const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending recovered identityHolds } } }`;

describe('journal recovery after a commit the journal did not see', () => {
  const tenants: string[] = [];
  const services = childServices();
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await sqlClient();
  });

  afterAll(async () => {
    await services.cleanup();
    await admin?.end();
    await dropTenants(...tenants);
  });

  const spawn = (dlqDir: string) =>
    services.spawn({
      DLQ_DIR: dlqDir,
      FLUSH_INTERVAL_MS: '30000',
      BATCH_SIZE: '5000',
      RATE_LIMIT_EVENTS_PER_SECOND: '0',
    });
  const dir = () => services.tempDir('auditgraph-recovery-');
  const write = async (svc: ServiceProcess, tenant: string, events: unknown[], ack: string) => {
    const r = await graphqlClient(`${svc.base}/graphql`).gql(tenant, CREATE, {
      input: { events, ack },
    });
    expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
  };
  const flushAndStats = async (svc: ServiceProcess, tenant: string) => {
    const client = graphqlClient(`${svc.base}/graphql`);
    const flushed = await client.gql(tenant, FLUSH, { timeoutMs: 20_000 });
    expect(flushed.flushAudit.__typename).toBe('FlushAuditPayload');
    return (await client.gql(tenant, STATS)).auditStats;
  };
  const storedOnce = async (tenant: string, ids: string[]) =>
    [...(await storedCounts(admin, tenant, ids)).values()].filter((n) => n === 1).length;

  /**
   * A process journals a BUFFERED call of 10 events and is killed before writing it; another
   * (its own journal, the same database) then stores the call's first `committed` events, as the
   * killed process's last batch would have, recording that batch's places when `recorded`.
   */
  async function killedAfterCommit(committed: number, recorded: boolean) {
    const tenant = newTenant('recovery');
    tenants.push(tenant);
    const journalDir = dir();
    const victim = await spawn(journalDir);
    const events = Array.from({ length: 10 }, () => event({ id: randomUUID() }));
    const ids = events.map((e) => e.id as string);
    await write(victim, tenant, events, 'BUFFERED');
    await victim.kill();
    const lines = readFileSync(join(journalDir, 'journal', 'journal.log'), 'utf8').trim();
    const entry = (JSON.parse(lines.split('\n').at(-1)!) as { a: { id: string } }).a.id;

    const other = await spawn(dir());
    await write(other, tenant, events.slice(0, committed), 'COMMITTED');
    await other.kill();
    if (recorded) {
      await admin.query(
        `insert into "t_${tenant}".journal_settlements (entry_id, batch_id, positions)
         values ($1, $2, $3::int4[])`,
        [entry, randomUUID(), Array.from({ length: committed }, (_, i) => i)],
      );
    }
    const again = await spawn(journalDir);
    const stats = await flushAndStats(again, tenant);
    await again.kill();
    return { tenant, ids, stats, logs: again.logs };
  }

  it('a batch records, in its transaction, which places of each journaled call it settled', async () => {
    const tenant = newTenant('recovery');
    tenants.push(tenant);
    const svc = await spawn(dir());
    const events = Array.from({ length: 5 }, () => event({ id: randomUUID() }));
    await write(svc, tenant, events, 'BUFFERED');
    await write(svc, tenant, [event({ id: randomUUID() })], 'COMMITTED');
    await flushAndStats(svc, tenant);
    await svc.kill();
    const { rows } = await admin.query<{ positions: number[] }>(
      `select positions from "t_${tenant}".journal_settlements`,
    );
    // The BUFFERED call's five places; the COMMITTED call is not journaled, so has none.
    expect(rows).toEqual([{ positions: [0, 1, 2, 3, 4] }]);
  });

  it('replays only the places no committed batch settled: stored once, no duplicates', async () => {
    const { tenant, ids, stats, logs } = await within(
      killedAfterCommit(6, true),
      60_000,
      'the kill, the commit and the recovery',
    );
    expect(await storedOnce(tenant, ids)).toBe(10);
    expect(stats).toMatchObject({ recovered: 4, duplicates: 0, pending: 0, identityHolds: true });
    const recovered = logs.find((l) => l.msg?.startsWith('journal recovered'));
    expect(recovered).toMatchObject({ events: 4, alreadyStored: 6 });
  });

  it('negative control: without the record, the same replay turns stored events into duplicates', async () => {
    const { tenant, ids, stats } = await within(
      killedAfterCommit(6, false),
      60_000,
      'the kill, the commit and the recovery',
    );
    expect(await storedOnce(tenant, ids)).toBe(10);
    expect(stats).toMatchObject({ recovered: 10, duplicates: 6 });
  });
});
