import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import type { TenantId } from '../src/domain/tenant.js';
import { createLogger } from '../src/logger.js';
import { LiveSubscription, SubscriptionReady } from '../src/realtime/live-subscription.js';
import { createRealtimeBus, type RealtimeBus } from '../src/realtime/pubsub.js';
import type { FlushCompletedMessage } from '../src/realtime/topics.js';
import { redisEnv } from './support/realtime.js';

const log = createLogger({ logLevel: 'silent' });
const A = 'tenant_a' as TenantId;
const B = 'tenant_b' as TenantId;

function message(batchId: string): FlushCompletedMessage {
  return {
    batchId,
    trigger: 'flush',
    attempts: 1,
    committedAt: new Date().toISOString(),
    durationMs: 1,
    recovered: false,
    instanceId: 'x',
    correlations: [{ correlationId: 'c', stored: 1, duplicates: 0, deadLettered: 0 }],
  };
}

describe('LiveSubscription', () => {
  it('ends a next() that is waiting when the subscriber returns (no wait for a message)', async () => {
    const sub = new LiveSubscription<number>(10);
    const waiting = sub.next();
    await sub.return();
    await expect(waiting).resolves.toEqual({ value: undefined, done: true });
  });

  it('puts the ready marker first, before messages that arrived while registering', async () => {
    const sub = new LiveSubscription<number>(10);
    sub.push(1);
    sub.ready(new SubscriptionReady('i', new Date()));
    expect((await sub.next()).value).toBeInstanceOf(SubscriptionReady);
    expect((await sub.next()).value).toBe(1);
  });

  it('interrupts a slow consumer after what was queued, never thinning the stream', async () => {
    const sub = new LiveSubscription<number>(3);
    let released = 0;
    sub.onEnd(() => released++);
    for (let i = 1; i <= 5; i++) sub.push(i);
    const got = [];
    for await (const v of sub) got.push(v);
    expect(got.slice(0, 3)).toEqual([1, 2, 3]);
    expect(got[3]).toMatchObject({ reason: 'SLOW_CONSUMER', retryable: true });
    expect(got).toHaveLength(4);
    expect(released).toBe(1);
  });
});

describe.each(['in-process', 'redis'] as const)('realtime bus (%s)', (mode) => {
  const buses: RealtimeBus[] = [];
  const prefix = `test:${randomBytes(4).toString('hex')}:`;
  async function bus(instanceId: string, env: Record<string, string> = {}): Promise<RealtimeBus> {
    const config = loadConfig({ ...(mode === 'redis' ? redisEnv(prefix) : {}), ...env });
    const b = createRealtimeBus(config, { instanceId, log });
    await b.start();
    buses.push(b);
    return b;
  }
  afterEach(async () => {
    await Promise.all(buses.splice(0).map((b) => b.stop()));
  });

  it("delivers after ready what any instance publishes, only to the topic's tenant", async () => {
    const here = await bus('here');
    const there = mode === 'redis' ? await bus('there') : here;
    const subA = here.subscribe(A, 'flushCompleted', (m) => [m.batchId]);
    const subB = here.subscribe(B, 'flushCompleted', (m) => [m.batchId]);
    expect((await subA.next()).value).toMatchObject({ instanceId: 'here' });
    expect((await subB.next()).value).toBeInstanceOf(SubscriptionReady);
    there.publish(B, 'flushCompleted', () => message('for-b'));
    there.publish(A, 'flushCompleted', () => message('for-a'));
    expect((await subB.next()).value).toBe('for-b');
    // Published after B's: had it leaked to A, it would be A's first message.
    expect((await subA.next()).value).toBe('for-a');
    expect(here.size).toBe(2);
    await subA.return();
    await subB.return();
    expect(here.size).toBe(0);
  });

  it('builds no message for a topic nobody subscribes to anywhere, and builds it again once someone does', async () => {
    // Two buses that never published (nothing trusted yet): what one knows comes from Redis.
    const publisher = await bus('publisher');
    const listener = mode === 'redis' ? await bus('listener') : publisher;
    let built = 0;
    const build = (id: string) => () => {
      built++;
      return message(id);
    };
    publisher.publish(A, 'flushCompleted', build('to-nobody'));
    await publisher.stop(); // waits for what it had in flight
    expect(built).toBe(0);
    // Negative control: a subscriber on the other instance, ready; a publisher that never knew.
    const again = mode === 'redis' ? await bus('publisher-2') : await bus('in-process-2');
    const sub = (mode === 'redis' ? listener : again).subscribe(A, 'flushCompleted', (m) => [
      m.batchId,
    ]);
    await sub.next();
    again.publish(A, 'flushCompleted', build('heard'));
    expect((await sub.next()).value).toBe('heard');
    expect(built).toBe(1);
    await sub.return();
    if (mode === 'redis') {
      // The last local subscriber gone, the instance leaves the set: a new publisher builds nothing.
      await new Promise((r) => setTimeout(r, 50));
      const third = await bus('publisher-3');
      third.publish(A, 'flushCompleted', build('gone'));
      await third.stop();
      expect(built).toBe(1);
    }
  });

  it('ends every subscription with SHUTTING_DOWN on stop, after what was published', async () => {
    const b = await bus('stopping');
    const sub = b.subscribe(A, 'flushCompleted', (m) => [m.batchId]);
    await sub.next();
    b.publish(A, 'flushCompleted', () => message('last'));
    await b.stop();
    const rest = [];
    for await (const v of sub) rest.push(v);
    expect(rest[0]).toBe('last');
    expect(rest[1]).toMatchObject({ reason: 'SHUTTING_DOWN' });
    const late = b.subscribe(A, 'flushCompleted', (m) => [m.batchId]);
    expect((await late.next()).value).toMatchObject({ reason: 'SHUTTING_DOWN' });
  });

  // In process, a publish reaches the bus at once: the backlog it leaves is known synchronously.
  (mode === 'in-process' ? it : () => undefined)(
    'counts messages waiting for their turn against SUBSCRIPTION_QUEUE_MAX_BYTES',
    async () => {
      const max = 64 * 1024;
      const b = await bus('backlog', { SUBSCRIPTION_QUEUE_MAX_BYTES: String(max) });
      const subs = Array.from({ length: 200 }, () =>
        b.subscribe(A, 'flushCompleted', (m) => [m.batchId]),
      );
      for (const sub of subs) await sub.next(); // ready; then nobody reads
      const ids = Array.from({ length: 100 }, (_, i) => `m${i}`);
      for (const id of ids) b.publish(A, 'flushCompleted', () => message(id));
      // Most of it waits in the bus for its turn: held for the subscribers, so within the
      // bound, and subscriptions were cut off for room before the loop turned even once.
      expect(b.queuedBytes).toBeGreaterThan(0);
      expect(b.queuedBytes).toBeLessThanOrEqual(max);
      expect(b.size).toBeLessThan(subs.length);
      await b.stop();
      let overloaded = 0;
      for (const sub of subs) {
        const got: unknown[] = [];
        for await (const v of sub) got.push(v);
        const last = got.pop() as { reason?: string };
        // Every message in order, or a prefix of them and the reason it was cut off.
        expect(got).toEqual(ids.slice(0, got.length));
        if (last.reason === 'OVERLOADED') overloaded++;
        else
          expect({ last, got: got.length }).toEqual({
            last: expect.objectContaining({ reason: 'SHUTTING_DOWN' }),
            got: ids.length,
          });
      }
      expect(overloaded).toBeGreaterThan(0);
      expect(b.queuedBytes).toBe(0);
    },
  );

  // Only the Redis bus has a subscriber connection to lose; the in-process bus has no such test.
  (mode === 'redis' ? it : () => undefined)(
    'interrupts subscriptions (FANOUT_LOST) when the subscriber connection drops',
    async () => {
      const instanceId = `lost-${randomBytes(3).toString('hex')}`;
      const b = await bus(instanceId);
      const sub = b.subscribe(A, 'flushCompleted', (m) => [m.batchId]);
      await sub.next();
      const admin = new Redis(redisEnv().REDIS_URL);
      try {
        // Only this bus's own subscriber connection, found by its name.
        const list = (await admin.client('LIST')) as string;
        const line = list.split('\n').find((l) => l.includes(`name=auditgraph-sub-${instanceId} `));
        const id = /id=(\d+)/.exec(line ?? '')?.[1];
        expect(id).toBeDefined();
        await admin.client('KILL', 'ID', id!);
      } finally {
        admin.disconnect();
      }
      expect((await sub.next()).value).toMatchObject({ reason: 'FANOUT_LOST', retryable: true });
      expect((await sub.next()).done).toBe(true);
      // Once Redis answers again, new subscriptions work.
      const again = b.subscribe(A, 'flushCompleted', (m) => [m.batchId]);
      expect((await again.next()).value).toBeInstanceOf(SubscriptionReady);
      await again.return();
    },
  );
});
