import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countEvents, create, lockEvents, stats } from './support/db.js';
import { dropTenants, event, newTenant, sqlClient, startApp } from './support/harness.js';

/**
 * Promise 6: stopping loses nothing. A graceful stop refuses new writes with ShuttingDownError,
 * writes every BUFFERED event it holds, and only then returns.
 */

const events = (n: number) => Array.from({ length: n }, () => event({ id: randomUUID() }));

describe('graceful stop', () => {
  let c: pg.Client;
  const tenants = [newTenant('stopa'), newTenant('stopb'), newTenant('stopc')];

  beforeAll(async () => {
    c = await sqlClient();
  });
  afterAll(async () => {
    await c?.end();
    await dropTenants(...tenants);
  });

  it('app.stop() writes every BUFFERED event of every tenant before it returns', async () => {
    const [a, b] = tenants as [string, string];
    // The interval never fires and no call reaches BATCH_SIZE: only the stop can write them.
    const t = await startApp({ FLUSH_INTERVAL_MS: '60000', BATCH_SIZE: '500' });
    try {
      for (const tn of [a, b]) {
        expect((await create(t, tn, [event()])).stored).toBe(1);
        for (let i = 0; i < 3; i++) {
          expect((await create(t, tn, events(100), 'BUFFERED')).buffered).toBe(100);
        }
        expect(await stats(t, tn)).toMatchObject({ accepted: 301, stored: 1, pending: 300 });
        expect(await countEvents(c, tn)).toBe(1);
      }
    } finally {
      await t.stop();
    }
    expect(await countEvents(c, a)).toBe(301);
    expect(await countEvents(c, b)).toBe(301);
  });

  it('a write after stop began answers ShuttingDownError and is not accepted, while stop still writes what it holds', async () => {
    const tn = tenants[2]!;
    const t = await startApp({
      FLUSH_INTERVAL_MS: '60000',
      SHUTDOWN_TIMEOUT_MS: '30000',
    });
    let stopping: Promise<void> | undefined;
    try {
      expect((await create(t, tn, [event()])).stored).toBe(1);
      expect((await create(t, tn, events(50), 'BUFFERED')).buffered).toBe(50);

      // Hold the stop in its flush (the batch INSERT waits on our lock), so the HTTP server is
      // certainly still listening when the next call arrives: no race with the server closing.
      const lock = await lockEvents(tn);
      try {
        let stopped = false;
        stopping = t.stop().then(() => {
          stopped = true;
        });

        for (const ack of ['BUFFERED', 'COMMITTED'] as const) {
          const r = await create(t, tn, events(5), ack);
          expect(r.__typename).toBe('ShuttingDownError');
          expect(r.retryable).toBe(true);
        }
        const ready = await fetch(t.url.replace(/\/graphql$/, '/readyz'));
        expect(ready.status).toBe(503);

        // Nothing of the refused calls was accepted; the 50 are still held, not dropped.
        expect(await stats(t, tn)).toMatchObject({
          accepted: 51,
          stored: 1,
          pending: 50,
          identityHolds: true,
        });
        expect(stopped).toBe(false);
        expect(await lock.count()).toBe(1);
      } finally {
        await lock.release();
      }
      await stopping;
      expect(await countEvents(c, tn)).toBe(51);
    } finally {
      await (stopping ?? t.stop());
    }
  });
});
