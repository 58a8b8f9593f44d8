import { describe, expect, it } from 'vitest';
import { RateLimitedError } from '../../src/domain/errors.js';
import type { TenantId } from '../../src/domain/tenant.js';
import { WriteRateLimiter } from '../../src/ingest/write-rate-limiter.js';
import { createLogger } from '../../src/logger.js';
import { RedisKeys } from '../../src/redis/client.js';

/*
 * The rate limiter's own memory of a refusal (in memory, without Redis: the limit is this
 * process's): once a tenant is refused, every call until that refusal's retry time is refused
 * without asking the limiter, and then the limiter decides again. The shared (Redis) budget is
 * tested end to end in limits.test.ts.
 */

const A = 'rate_a' as TenantId;
const B = 'rate_b' as TenantId;

function limiter(eventsPerSecond: number, burstEvents: number) {
  return new WriteRateLimiter(
    { eventsPerSecond, burstEvents, keys: new RedisKeys('unit:') },
    undefined,
    createLogger({ logLevel: 'silent' }),
  );
}

describe('write rate limiter', () => {
  it('knows nothing of a tenant never refused, and nothing at all when off', async () => {
    expect(limiter(100, 0).refusal(A)).toBeNull();
    const off = limiter(0, 0);
    await off.consume(A, 1_000_000);
    expect(off.refusal(A)).toBeNull();
  });

  it('after a refusal, refuses the tenant until its retry time without consuming', async () => {
    const l = limiter(100, 1);
    await l.consume(A, 100);
    await l.consume(A, 1); // the burst's one event
    // Negative control: nothing is known before the limiter itself refuses.
    expect(l.refusal(A)).toBeNull();
    const refused = await l.consume(A, 1).then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(RateLimitedError);
    const retryAfterMs = (refused as RateLimitedError).retryAfterMs;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(1_000);

    const now = Date.now();
    const known = l.refusal(A, now);
    expect(known).toBeInstanceOf(RateLimitedError);
    expect(known!.retryAfterMs).toBeLessThanOrEqual(retryAfterMs);
    // Another tenant's budget is its own.
    expect(l.refusal(B, now)).toBeNull();
    await l.consume(B, 100);
    // Past the retry time the memory is gone and the limiter decides again.
    expect(l.refusal(A, now + retryAfterMs + 1)).toBeNull();
    await new Promise((r) => setTimeout(r, retryAfterMs + 20));
    await expect(l.consume(A, 100)).resolves.toBeUndefined();
  });
});
