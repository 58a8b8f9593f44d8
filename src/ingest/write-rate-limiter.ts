import type { Redis } from 'ioredis';
import {
  BurstyRateLimiter,
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from 'rate-limiter-flexible';
import { RateLimitedError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { RedisKeys } from '../redis/client.js';

export interface WriteRateOptions {
  /** Events per second per tenant; 0 switches the limit off. */
  eventsPerSecond: number;
  /** Events a tenant may send beyond that rate within `BURST_WINDOW_S`. */
  burstEvents: number;
  /** Names in Redis (and of the in-memory fallback's windows). */
  keys: RedisKeys;
}

/** The window over which the burst allowance is counted. */
export const BURST_WINDOW_S = 10;

/**
 * The per-tenant write rate, counted in events (a call of 100 events costs 100). With Redis the
 * budget is shared by every instance; without it (embedded mode) it is this process's. Built on
 * rate-limiter-flexible's BurstyRateLimiter: `eventsPerSecond` per one-second window, plus
 * `burstEvents` per ten-second window for the seconds that go over — a bucket that holds
 * `eventsPerSecond + burstEvents` and refills at `eventsPerSecond`, approximated with fixed
 * windows. When Redis does not answer, each instance limits on its own (in memory) rather than
 * refusing writes or letting them through unlimited.
 */
export class WriteRateLimiter {
  private readonly limiter: BurstyRateLimiter | null;
  /**
   * Per tenant, until when (epoch ms) its last refusal holds. Both windows are fixed: within them
   * the counts only grow, so every call until the refusal's `msBeforeNext` is refused too, and
   * saying so needs neither Redis nor the call's events.
   */
  private readonly refusedUntil = new Map<TenantId, number>();

  constructor(opts: WriteRateOptions, redis: Redis | undefined, log: Logger) {
    if (opts.eventsPerSecond <= 0) {
      this.limiter = null;
      return;
    }
    const memory = (keyPrefix: string, points: number, duration: number) =>
      new RateLimiterMemory({ keyPrefix, points, duration });
    const limiter = (window: 'rate' | 'burst', points: number, duration: number) => {
      const keyPrefix = opts.keys.rateLimit(window);
      if (!redis) return memory(keyPrefix, points, duration);
      return new RateLimiterRedis({
        storeClient: redis,
        keyPrefix,
        points,
        duration,
        rejectIfRedisNotReady: true,
        insuranceLimiter: memory(keyPrefix, points, duration),
      });
    };
    this.limiter = new BurstyRateLimiter(
      limiter('rate', opts.eventsPerSecond, 1),
      limiter('burst', Math.max(1, opts.burstEvents), BURST_WINDOW_S),
    );
    log.debug(
      { eventsPerSecond: opts.eventsPerSecond, burstEvents: opts.burstEvents, shared: !!redis },
      'write rate limit on',
    );
  }

  /**
   * The RateLimitedError consume() would surely throw now, known without asking the limiter: the
   * tenant was refused within the windows that refusal named. Null when a call might pass.
   */
  refusal(tenant: TenantId, now = Date.now()): RateLimitedError | null {
    const until = this.refusedUntil.get(tenant);
    if (until === undefined) return null;
    if (now < until) return new RateLimitedError(Math.max(1, Math.ceil(until - now)));
    this.refusedUntil.delete(tenant);
    return null;
  }

  /** Takes `events` from the tenant's budget, or throws RateLimitedError. */
  async consume(tenant: TenantId, events: number): Promise<void> {
    if (!this.limiter || events <= 0) return;
    const known = this.refusal(tenant);
    if (known) throw known;
    try {
      await this.limiter.consume(tenant, events);
    } catch (res) {
      if (res instanceof RateLimiterRes) {
        const retryAfterMs = Math.max(1, Math.ceil(res.msBeforeNext));
        this.remember(tenant, Date.now() + retryAfterMs);
        throw new RateLimitedError(retryAfterMs);
      }
      throw res;
    }
  }

  private remember(tenant: TenantId, until: number): void {
    // Bounded by the tenants refused within the last window; stale entries go when it grows.
    if (this.refusedUntil.size >= 10_000) {
      const now = Date.now();
      for (const [t, u] of this.refusedUntil) if (u <= now) this.refusedUntil.delete(t);
    }
    this.refusedUntil.set(tenant, until);
  }
}
