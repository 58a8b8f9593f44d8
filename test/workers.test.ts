import { randomBytes, randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { waitUntil } from './support/db.js';
import { deleteRedisKeys } from './support/faults.js';
import {
  CREATE,
  dropTenants,
  event,
  graphqlClient,
  newTenant,
  sqlClient,
  storedCounts,
} from './support/harness.js';
import { spawnInstance } from './support/processes.js';

/**
 * WORKERS=2: one primary, two service processes sharing its port, each an instance of its own
 * (shared PostgreSQL and Redis). Both answer, auditStats names both; a worker killed with -9 is
 * started again under its name and replays its own journal; SIGTERM to the primary stops both
 * gracefully. Every event answered BUFFERED is stored once.
 */

const STATS = `query { auditStats { __typename ... on AuditStats { accepted stored pending instances } } }`;

describe('WORKERS=2', () => {
  const prefix = `test:workers:${randomBytes(4).toString('hex')}:`;
  const tenant = newTenant('workers');
  let admin: pg.Client;

  beforeAll(async () => {
    admin = await sqlClient();
  });
  afterAll(async () => {
    await admin?.end();
    await dropTenants(tenant);
    await deleteRedisKeys(inject('redisUrl'), prefix);
  });

  it('serves one port from two instances; a killed worker comes back under its name and replays its journal; SIGTERM stops both with nothing lost', async () => {
    const base = `wk-${randomBytes(3).toString('hex')}`;
    const svc = await spawnInstance({
      WORKERS: '2',
      INSTANCE_ID: base,
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      FLUSH_INTERVAL_MS: '60000',
      BATCH_SIZE: '5000',
      CLUSTER_HEARTBEAT_MS: '200',
    });
    const acknowledged: string[] = [];
    try {
      const listening = () => svc.logs.filter((l) => l.msg === 'listening');
      await waitUntil(
        'both workers listening',
        async () => listening().length,
        (n) => n === 2,
        60_000,
        50,
      );
      expect(
        listening()
          .map((l) => l.instance)
          .sort(),
      ).toEqual([`${base}-w0`, `${base}-w1`]);
      expect(new Set(listening().map((l) => l.port)).size).toBe(1);
      const started = svc.logs.filter((l) => l.msg === 'worker started');
      const killed = started.find((l) => l.worker === 0)!.workerPid as number;

      const client = graphqlClient(svc.url);
      const write = async () => {
        const events = Array.from({ length: 10 }, () => event({ id: randomUUID() }));
        const r = await client.gql(tenant, CREATE, { input: { events, ack: 'BUFFERED' } });
        expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
        acknowledged.push(...events.map((e) => e.id as string));
      };
      // Concurrent calls open several connections: the workers share them.
      await Promise.all(Array.from({ length: 20 }, write));
      const stats = (await client.gql(tenant, STATS)).auditStats;
      expect(stats.instances).toEqual([`${base}-w0`, `${base}-w1`]);
      expect(stats).toMatchObject({ accepted: 200, pending: 200 });

      // kill -9 one worker: the primary starts it again; it replays what it had journaled.
      process.kill(killed, 'SIGKILL');
      await waitUntil(
        'the killed worker back',
        async () => listening().length,
        (n) => n === 3,
        60_000,
        50,
      );
      const restarted = svc.logs.find((l) => l.msg === 'worker exited; starting it again');
      expect(restarted).toMatchObject({ worker: 0, workerPid: killed, signal: 'SIGKILL' });
      expect(listening()[2]!.instance).toBe(`${base}-w0`);
      const name = `${base}-w0`;
      await waitUntil(
        'its journal replayed by the worker under the same name',
        async () => svc.logs.find((l) => l.msg === 'journal recovery written' && l.from === name),
        (l) => l !== undefined,
        30_000,
        50,
      );
      for (let k = 0; k < 5; k++) await write();
    } finally {
      expect(await svc.stop('SIGTERM', 60_000)).toBe(0);
    }
    const counts = await storedCounts(admin, tenant, acknowledged);
    expect(acknowledged.filter((id) => counts.get(id) !== 1)).toEqual([]);
    expect(acknowledged).toHaveLength(250);
  }, 180_000);

  it('refuses more than one worker without a database server and Redis (the embedded database and the local journal have one owner)', () => {
    expect(() => loadConfig({ WORKERS: '2' })).toThrow(ConfigError);
    expect(() => loadConfig({ WORKERS: '2', DATABASE_URL: 'postgres://x@127.0.0.1/db' })).toThrow(
      /WORKERS: more than 1 needs DATABASE_URL and REDIS_URL/,
    );
  });
});
