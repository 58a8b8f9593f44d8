import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import { RedisBooks } from '../src/ingest/journal/books.js';
import type { JournalEntry } from '../src/ingest/journal/journal.js';
import { RedisJournal } from '../src/ingest/journal/redis-journal.js';
import { RedisKeys } from '../src/redis/client.js';
import { records } from './support/pipeline-fakes.js';

/**
 * The books in Redis, on a real Redis: an append counts its events accepted and pending in the
 * same MULTI as the entry; a release books its outcome only if the entry was still there to
 * delete — so an entry released both by an instance taken over as dead (a long pause) and by its
 * taker is counted out once.
 */

const log = pino({ level: 'silent' });
const redis = new Redis(inject('redisUrl'));
const prefixes: string[] = [];

afterAll(async () => {
  for (const p of prefixes) {
    const found = await redis.keys(`${p}*`);
    if (found.length > 0) await redis.del(...found);
  }
  redis.disconnect();
});

function setup() {
  const prefix = `books-test-${randomUUID().slice(0, 8)}:`;
  prefixes.push(prefix);
  const keys = new RedisKeys(prefix);
  const books = new RedisBooks(redis, keys);
  const journal = (instance: string) => new RedisJournal(redis, keys, books, instance, log, 1_000);
  return { books, journal, keys };
}

const TENANT = 'books_t1' as TenantId;
const entry = (id: string, n: number): JournalEntry => ({
  id,
  tenant: TENANT,
  records: records(n),
});
const until = async (check: () => Promise<boolean>) => {
  for (let i = 0; i < 200 && !(await check()); i++) await new Promise((r) => setTimeout(r, 10));
};

describe('RedisJournal books', () => {
  it('counts an append as accepted and pending, and its release as its outcome, once — even released twice by two instances', async () => {
    const { books, journal } = setup();
    const paused = journal('paused-1');
    await paused.start();
    await Promise.all([paused.append(entry('e1', 2)), paused.append(entry('e2', 3))]);
    expect(await books.read(TENANT)).toMatchObject({ accepted: 5, pending: 5, stored: 0 });

    // No heartbeat for `paused-1`: a live instance takes its journal over.
    const taker = journal('taker-1');
    await taker.start();
    const [taken] = await taker.recover();
    expect(taken!.entries.map((e) => e.id).sort()).toEqual(['e1', 'e2']);

    // Both release e1: the paused one from its own (now empty) journal, the taker from its own.
    paused.release('e1', { stored: 2, duplicates: 0, deadLettered: 0 });
    taker.release('e1', { stored: 1, duplicates: 1, deadLettered: 0 });
    taker.release('e2', { stored: 0, duplicates: 0, deadLettered: 3 });
    await until(async () => (await books.read(TENANT)).pending === 0);
    await paused.stop();
    await taker.stop();
    expect(await books.read(TENANT)).toEqual({
      accepted: 5,
      stored: 1,
      duplicates: 1,
      pending: 0,
      deadLettered: 3,
      discarded: 0,
    });
  });

  it('books changes of their own (calls outside the journal, moves between final terms) in one MULTI', async () => {
    const { books } = setup();
    await Promise.all([
      books.book(TENANT, { accepted: 4, stored: 3, deadLettered: 1 }),
      books.book(TENANT, { deadLettered: -1, discarded: 1 }),
    ]);
    expect(await books.read(TENANT)).toEqual({
      accepted: 4,
      stored: 3,
      duplicates: 0,
      pending: 0,
      deadLettered: 0,
      discarded: 1,
    });
  });

  it('appends a group larger than one HSET takes, counting every entry', async () => {
    const { books, journal } = setup();
    const j = journal('large-1');
    await j.start();
    await Promise.all(Array.from({ length: 1_200 }, (_, i) => j.append(entry(`e${i}`, 1))));
    expect(await books.read(TENANT)).toMatchObject({ accepted: 1_200, pending: 1_200 });
    expect(j.held).toBe(1_200);
    await j.stop();
  });

  it('a refused append counts nothing', async () => {
    const { books, journal, keys } = setup();
    const j = journal('refused-1');
    await j.start();
    // The journal's hash is made a string: its HSET fails, and the script stops there.
    await redis.set(keys.service('journal', 'entries', 'refused-1'), 'not a hash');
    await expect(j.append(entry('e1', 2))).rejects.toThrow();
    expect(await books.read(TENANT)).toMatchObject({ accepted: 0, pending: 0 });
    await j.stop();
  });
});
