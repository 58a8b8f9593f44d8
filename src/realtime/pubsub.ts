import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { TenantId } from '../domain/tenant.js';
import { asError, type Logger } from '../logger.js';
import { createRedis, RedisKeys } from '../redis/client.js';
import {
  LiveSubscription,
  QueueBudget,
  SubscriptionInterruptedError,
  SubscriptionReady,
} from './live-subscription.js';
import type { Topic, TopicMessages } from './topics.js';

/** Undelivered messages one subscriber may have queued before it is interrupted (SLOW_CONSUMER). */
export const MAX_QUEUED_PER_SUBSCRIPTION = 10_000;

/**
 * Messages handed to subscribers per turn of the event loop. Delivering one message to a
 * thousand subscribers means a thousand executions and socket writes; done at once, it holds
 * the loop for hundreds of milliseconds and every other request (other tenants' included)
 * waits. In slices, requests are served between them. Order per subscriber is kept: one queue.
 * Messages waiting for their slice are held for their subscribers and counted as theirs
 * (SUBSCRIPTION_QUEUE_MAX_BYTES): when messages arrive faster than the process delivers them,
 * the backlog does not grow past the bound, subscribers are cut off (OVERLOADED) instead.
 */
const DELIVERIES_PER_TURN = 64;

/** Bytes a message waiting in the backlog holds per subscriber besides its share of the text. */
const BACKLOG_ENTRY_BYTES = 8;

/** Longest wait for Redis to confirm a SUBSCRIBE before the subscription is refused. */
const REGISTER_TIMEOUT_MS = 5_000;

/**
 * Tenant-scoped pub/sub. With `REDIS_URL` every message goes through Redis, so subscribers on
 * every instance (this one included) receive what any instance publishes; without it, delivery
 * is in-process. Each instance publishes only what it settled itself.
 */
export interface RealtimeBus {
  readonly mode: 'redis' | 'in-process';
  start(): Promise<void>;
  /**
   * Fire and forget: a failure is logged; the events themselves are safe in the database.
   * `build` makes the message (null: nothing to send), and is called only when someone, on any
   * instance, subscribes to the tenant's topic — serialising every batch's events for a live
   * tail nobody watches is a tenth of the write path's CPU.
   */
  publish<K extends Topic>(tenant: TenantId, topic: K, build: () => TopicMessages[K] | null): void;
  /**
   * A subscriber's stream. Its first item is a SubscriptionReady, queued once the subscription is
   * registered (with Redis: SUBSCRIBE confirmed), so every message published after the client
   * saw it is delivered. `map` turns one message into the items to deliver (zero or more).
   *
   * Every subscriber of a channel is handed the same message object, decoded once: `map` must
   * not change it, and work that does not depend on the subscriber belongs in a cache keyed by
   * the message (see subscriptions.ts). `weigh` tells the bytes an item holds while queued
   * (SUBSCRIPTION_QUEUE_MAX_BYTES); by default, the serialised size of the whole message.
   */
  subscribe<K extends Topic, Out>(
    tenant: TenantId,
    topic: K,
    map: (message: TopicMessages[K]) => Iterable<Out>,
    weigh?: (item: Out) => number,
  ): LiveSubscription<Out>;
  /** Open subscriptions on this instance. */
  readonly size: number;
  /** Bytes of messages queued for this instance's subscribers and not yet delivered. */
  readonly queuedBytes: number;
  /**
   * Delivers what this instance published so far to its own subscribers (with Redis: waits for
   * the publishes, then for a round trip on the subscriber connection, which Redis answers after
   * the messages it already pushed), then ends every subscription with SHUTTING_DOWN and closes
   * the Redis connections. Idempotent.
   */
  stop(deadlineMs?: number): Promise<void>;
}

/** A subscriber of a channel. */
interface Listener {
  /** Its queue: messages waiting in the backlog for it are charged to it meanwhile. */
  sub: LiveSubscription<unknown>;
  /** Takes the decoded message (shared by all) and its serialised size; returns items queued. */
  take(message: unknown, bytes: number): number;
}

/** One message on its way to the listeners of its channel (as they were when it arrived). */
interface Delivery {
  listeners: Listener[];
  next: number;
  message: unknown;
  bytes: number;
  /** What it is charged to each listener until handed over (the listeners share it). */
  share: number;
}

/** Builds the bus for this configuration; nothing connects until `start()`. */
export function createRealtimeBus(
  config: Pick<Config, 'redisUrl' | 'redisKeyPrefix' | 'subscriptionQueueMaxBytes'>,
  opts: { instanceId: string; log: Logger },
): RealtimeBus {
  const budget = new QueueBudget(config.subscriptionQueueMaxBytes);
  return config.redisUrl
    ? new RedisBus(
        config.redisUrl,
        new RedisKeys(config.redisKeyPrefix),
        opts.instanceId,
        opts.log,
        budget,
      )
    : new InProcessBus(opts.instanceId, opts.log, budget);
}

abstract class BaseBus {
  protected readonly live = new Set<LiveSubscription<unknown>>();
  protected stopping = false;
  private readonly deliveries: Delivery[] = [];
  private draining: NodeJS.Immediate | undefined;

  constructor(
    protected readonly instanceId: string,
    protected readonly log: Logger,
    private readonly budget: QueueBudget,
  ) {}

  get size(): number {
    return this.live.size;
  }

  get queuedBytes(): number {
    return this.budget.bytes;
  }

  subscribe<K extends Topic, Out>(
    tenant: TenantId,
    topic: K,
    map: (message: TopicMessages[K]) => Iterable<Out>,
    weigh?: (item: Out) => number,
  ): LiveSubscription<Out> {
    const sub = new LiveSubscription<Out>(MAX_QUEUED_PER_SUBSCRIPTION, this.budget);
    if (this.stopping) {
      sub.interrupt(new SubscriptionInterruptedError('SHUTTING_DOWN'));
      return sub;
    }
    const take = (message: unknown, bytes: number) => {
      if (sub.isEnded) return 0;
      let n = 0;
      try {
        for (const item of map(message as TopicMessages[K])) {
          sub.push(item, weigh ? weigh(item) : bytes);
          n++;
          if (sub.isEnded) break;
        }
      } catch (err) {
        this.log.error({ err, tenant, topic }, 'subscription message mapping failed');
      }
      return n;
    };
    const listener: Listener = { sub: sub as LiveSubscription<unknown>, take };
    this.live.add(sub as LiveSubscription<unknown>);
    const registered = this.register(this.channel(tenant, topic), listener, tenant, topic);
    sub.onEnd(() => {
      this.live.delete(sub as LiveSubscription<unknown>);
      registered.unregister();
    });
    registered.ready.then(
      () => sub.ready(new SubscriptionReady(this.instanceId, new Date())),
      (err: unknown) => {
        this.log.warn({ err: asError(err), tenant, topic }, 'subscription not registered');
        sub.interrupt(new SubscriptionInterruptedError('FANOUT_UNAVAILABLE', errorMessage(err)));
      },
    );
    return sub;
  }

  /**
   * Hands a message to the listeners of its channel: now if the loop allows, else in slices.
   * Until a listener has it, it holds its share of the message (the text once, shared, and its
   * place in the list) against the budget; a listener shed for room never gets it.
   */
  protected fanOut(listeners: Iterable<Listener>, message: unknown, bytes: number): void {
    const list = [...listeners];
    const share = Math.ceil(bytes / list.length) + BACKLOG_ENTRY_BYTES;
    for (const l of list) l.sub.expect(share);
    this.deliveries.push({ listeners: list, next: 0, message, bytes, share });
    if (!this.draining) this.deliver();
  }

  /** Delivers up to DELIVERIES_PER_TURN items (all with `all`), then yields to the loop. */
  protected deliver(all = false): void {
    this.draining = undefined;
    let budget = DELIVERIES_PER_TURN;
    while (this.deliveries.length > 0 && (all || budget > 0)) {
      const d = this.deliveries[0]!;
      while (d.next < d.listeners.length && (all || budget > 0)) {
        const l = d.listeners[d.next++]!;
        l.sub.arrived(d.share);
        budget -= Math.max(1, l.take(d.message, d.bytes));
      }
      if (d.next >= d.listeners.length) this.deliveries.shift();
    }
    if (this.deliveries.length > 0) this.draining = setImmediate(() => this.deliver());
  }

  /** Delivers everything still on its way (at shutdown, before the subscriptions end). */
  protected deliverAll(): void {
    if (this.draining) clearImmediate(this.draining);
    this.deliver(true);
  }

  protected interruptAll(error: () => SubscriptionInterruptedError): void {
    for (const sub of [...this.live]) sub.interrupt(error());
  }

  protected abstract channel(tenant: TenantId, topic: Topic): string;
  protected abstract register(
    channel: string,
    listener: Listener,
    tenant: TenantId,
    topic: Topic,
  ): { ready: Promise<void>; unregister(): void };
}

/** One process: delivery is a synchronous call into each subscriber's queue. */
class InProcessBus extends BaseBus implements RealtimeBus {
  readonly mode = 'in-process' as const;
  private readonly channels = new Map<string, Set<Listener>>();

  async start(): Promise<void> {}

  publish<K extends Topic>(tenant: TenantId, topic: K, build: () => TopicMessages[K] | null): void {
    const listeners = this.channels.get(this.channel(tenant, topic));
    if (!listeners || listeners.size === 0) return;
    const message = build();
    if (message === null) return;
    // Serialised once, for its size only: every subscriber gets the same object, uncopied.
    this.fanOut(listeners, message, JSON.stringify(message).length);
  }

  async stop(): Promise<void> {
    this.deliverAll();
    this.stopping = true;
    this.interruptAll(() => new SubscriptionInterruptedError('SHUTTING_DOWN'));
  }

  protected channel(tenant: TenantId, topic: Topic): string {
    return `${tenant}:${topic}`;
  }

  protected register(channel: string, listener: Listener) {
    let listeners = this.channels.get(channel);
    if (!listeners) {
      listeners = new Set();
      this.channels.set(channel, listeners);
    }
    listeners.add(listener);
    return {
      ready: Promise.resolve(),
      unregister: () => {
        listeners.delete(listener);
        if (listeners.size === 0 && this.channels.get(channel) === listeners) {
          this.channels.delete(channel);
        }
      },
    };
  }
}

interface RedisChannel {
  listeners: Set<Listener>;
  /** Settles when Redis confirmed the SUBSCRIBE (shared by everyone who joined meanwhile). */
  subscribed: Promise<void>;
}

/** How long a publisher trusts that a channel has a subscriber somewhere before asking again. */
const INTEREST_TRUSTED_MS = 1_000;

/**
 * Redis pub/sub: one publisher and one subscriber connection per instance; one Redis channel per
 * tenant and topic (`<prefix>realtime:<tenant>:<topic>`), subscribed while this instance has a
 * local subscriber for it. Pub/sub keeps no history and ignores the DB index (hence the prefix):
 * when the subscriber connection drops, every open subscription is interrupted (FANOUT_LOST)
 * rather than left to miss messages silently.
 *
 * Who listens, across instances: an instance with a local subscriber of a channel is a member of
 * its interest set (`t:<tenant>:interest:<topic>`), added before the subscription is ready and
 * removed when its last local subscriber leaves. A publisher that does not know of a subscriber
 * asks the set (one SCARD) before it builds a message, and sends nothing when it is empty; one
 * that found a member trusts it for INTEREST_TRUSTED_MS (sending to nobody is harmless). Nothing
 * published after a SubscriptionReady is skipped: its publisher asks after the member was added.
 * (An instance killed with subscribers leaves its membership behind: publishers then keep
 * sending to nobody, as they all did before.)
 */
class RedisBus extends BaseBus implements RealtimeBus {
  readonly mode = 'redis' as const;
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly channels = new Map<string, RedisChannel>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private publishFailing = false;
  private stopped: Promise<void> | undefined;
  /** Channels known to have a subscriber somewhere, until when. */
  private readonly interest = new Map<string, number>();

  constructor(
    url: string,
    private readonly keys: RedisKeys,
    instanceId: string,
    log: Logger,
    budget: QueueBudget,
  ) {
    super(instanceId, log, budget);
    this.pub = createRedis(url, `auditgraph-pub-${instanceId}`, log);
    this.sub = createRedis(url, `auditgraph-sub-${instanceId}`, log);
    this.sub.on('message', (channel: string, text: string) => this.dispatch(channel, text));
    this.sub.on('close', () => {
      if (this.stopping || this.live.size === 0) return;
      this.log.warn(
        { subscriptions: this.live.size },
        'realtime fan-out lost; ending subscriptions',
      );
      this.interruptAll(() => new SubscriptionInterruptedError('FANOUT_LOST'));
    });
  }

  async start(): Promise<void> {
    const results = await Promise.allSettled([this.pub.connect(), this.sub.connect()]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      // Not fatal: the events are safe in the database; subscriptions are refused until Redis
      // answers again (ioredis keeps reconnecting).
      this.log.warn(
        { err: asError(failed.reason) },
        'redis unavailable at start: realtime fan-out will resume when it answers',
      );
    } else {
      this.log.info({ prefix: this.keys.prefix }, 'realtime fan-out through redis pub/sub');
    }
  }

  publish<K extends Topic>(tenant: TenantId, topic: K, build: () => TopicMessages[K] | null): void {
    if (this.stopped) return;
    const channel = this.channel(tenant, topic);
    const trusted = (this.interest.get(channel) ?? 0) > Date.now();
    const p = trusted
      ? this.send(channel, build)
      : this.pub.scard(this.interestKey(tenant, topic)).then((members) => {
          if (members === 0) return;
          this.interest.set(channel, Date.now() + INTEREST_TRUSTED_MS);
          return this.send(channel, build);
        });
    const tracked = p.then(
      () => {
        if (this.publishFailing) this.log.info('realtime publish works again');
        this.publishFailing = false;
      },
      (err: unknown) => {
        if (!this.publishFailing) {
          this.log.warn(
            { err: asError(err), tenant, topic },
            'realtime publish failed; subscribers miss this message (the events are not affected)',
          );
        }
        this.publishFailing = true;
      },
    );
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }

  private async send<M>(channel: string, build: () => M | null): Promise<void> {
    const message = build();
    if (message !== null) await this.pub.publish(channel, JSON.stringify(message));
  }

  private interestKey(tenant: TenantId, topic: Topic): string {
    return this.keys.tenant(tenant, 'interest', topic);
  }

  stop(deadlineMs = 2_000): Promise<void> {
    this.stopped ??= (async () => {
      const deadline = Date.now() + deadlineMs;
      try {
        await withDeadline(Promise.allSettled([...this.inFlight]), deadline);
        // Redis answers this PING after every message it already pushed to this connection.
        if (this.channels.size > 0 && this.sub.status === 'ready') {
          await withDeadline(this.sub.ping(), deadline);
        }
      } catch (err) {
        this.log.warn({ err: asError(err) }, 'realtime drain at shutdown incomplete');
      }
      this.deliverAll();
      this.stopping = true;
      this.interruptAll(() => new SubscriptionInterruptedError('SHUTTING_DOWN'));
      await Promise.allSettled([quit(this.pub), quit(this.sub)]);
    })();
    return this.stopped;
  }

  protected channel(tenant: TenantId, topic: Topic): string {
    return this.keys.realtimeChannel(tenant, topic);
  }

  protected register(channel: string, listener: Listener, tenant: TenantId, topic: Topic) {
    let state = this.channels.get(channel);
    if (!state) {
      // Ready once it receives and every publisher will find it listed (see the class comment).
      const interest = this.interestKey(tenant, topic);
      const subscribed = withDeadline(
        Promise.all([this.sub.subscribe(channel), this.pub.sadd(interest, this.instanceId)]),
        Date.now() + REGISTER_TIMEOUT_MS,
      ).then(() => undefined);
      state = { listeners: new Set(), subscribed };
      this.channels.set(channel, state);
      const created = state;
      // A failed SUBSCRIBE must not be shared with later subscribers: they try again.
      subscribed.catch(() => {
        if (this.channels.get(channel) === created) this.channels.delete(channel);
      });
    }
    state.listeners.add(listener);
    const joined = state;
    return {
      ready: joined.subscribed,
      unregister: () => {
        joined.listeners.delete(listener);
        if (joined.listeners.size > 0 || this.channels.get(channel) !== joined) return;
        this.channels.delete(channel);
        if (this.pub.status !== 'end') {
          this.pub.srem(this.interestKey(tenant, topic), this.instanceId).catch((err: unknown) => {
            this.log.debug({ err: asError(err), channel }, 'interest not withdrawn');
          });
        }
        if (this.sub.status === 'end') return;
        this.sub.unsubscribe(channel).catch((err: unknown) => {
          this.log.debug({ err: asError(err), channel }, 'unsubscribe failed');
        });
      },
    };
  }

  private dispatch(channel: string, text: string): void {
    const state = this.channels.get(channel);
    if (!state || state.listeners.size === 0) return;
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch (err) {
      this.log.error({ err: asError(err), channel }, 'unreadable realtime message dropped');
      return;
    }
    // Parsed once per channel: every local subscriber gets the same object.
    this.fanOut(state.listeners, message, text.length);
  }
}

async function quit(client: Redis): Promise<void> {
  if (client.status === 'end') return;
  try {
    await withDeadline(client.quit(), Date.now() + 1_000);
  } catch {
    client.disconnect();
  }
}

function withDeadline<T>(p: Promise<T>, deadline: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error('timed out waiting for redis')),
        Math.max(0, deadline - Date.now()),
      );
    }),
  ]);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
