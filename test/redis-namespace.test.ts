import { randomBytes, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import type { DeadLetter } from '../src/ingest/dead-letter-queue.js';
import { RedisDeadLetterStore } from '../src/ingest/redis-dead-letter-store.js';
import { createLogger } from '../src/logger.js';
import { RedisKeys } from '../src/realtime/redis.js';

const redisUrl = () => inject('redisUrl');
const log = createLogger({ logLevel: 'silent' });
const filePrefix = `test:${randomBytes(4).toString('hex')}:`;
const clients: Redis[] = [];

function client(): Redis {
  const r = new Redis(redisUrl());
  clients.push(r);
  return r;
}

afterAll(async () => {
  const r = new Redis(redisUrl());
  const keys = await r.keys(`${filePrefix}*`);
  if (keys.length) await r.del(...keys);
  await r.quit();
  for (const c of clients) await c.quit();
});

describe('dead letters in Redis', () => {
  it('refuses a dead letter when any command of its MULTI fails, instead of reporting it stored', async () => {
    const keys = new RedisKeys(`${filePrefix}multi:`);
    const r = client();
    const store = new RedisDeadLetterStore(r, keys, 'test', log);
    // Something else holds the depth counters' name: their HINCRBYs fail with WRONGTYPE while
    // the XADD of the same MULTI succeeds.
    await r.set(keys.key('dlq', 'depth'), 'not a hash');
    await expect(store.add(deadLetter('multi_a'))).rejects.toThrow(/WRONGTYPE/);
    await r.del(keys.key('dlq', 'depth'));
    const dl = deadLetter('multi_a');
    await store.add(dl);
    expect((await store.get('multi_a' as TenantId, dl.id))?.id).toBe(dl.id);
  });
});

function deadLetter(tenant: string): DeadLetter {
  const now = new Date();
  return {
    id: randomUUID(),
    tenant: tenant as TenantId,
    state: 'ACTIVE',
    records: [],
    errorCode: null,
    error: 'x',
    attempts: 1,
    firstFailedAt: now,
    lastFailedAt: now,
    nextAttemptAt: new Date(Date.now() + 3_600_000),
  };
}
