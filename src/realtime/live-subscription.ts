import { AuditError } from '../domain/errors.js';

/**
 * The first message of every subscription: from now on, everything published on any instance
 * reaches this subscriber. A client that acts (writes, flushes) only after seeing it cannot miss
 * the messages its action causes.
 */
export class SubscriptionReady {
  constructor(
    readonly instanceId: string,
    readonly subscribedAt: Date,
  ) {}
}

export type InterruptReason =
  | 'SHUTTING_DOWN'
  | 'SLOW_CONSUMER'
  | 'OVERLOADED'
  | 'FANOUT_LOST'
  | 'FANOUT_UNAVAILABLE'
  | 'UNAUTHENTICATED';

const INTERRUPT_MESSAGES: Record<InterruptReason, string> = {
  SHUTTING_DOWN: 'the instance is shutting down',
  SLOW_CONSUMER: 'the subscriber fell too far behind and messages would have been dropped',
  OVERLOADED:
    'the messages queued for subscribers on this instance reached their bound ' +
    '(SUBSCRIPTION_QUEUE_MAX_BYTES) and this subscription held the most of them',
  FANOUT_LOST: 'the connection to Redis (fan-out across instances) was lost',
  FANOUT_UNAVAILABLE:
    'the subscription could not be registered with Redis (fan-out across instances)',
  UNAUTHENTICATED: 'the API key was revoked or expired, or the token expired',
};

/**
 * The last message of a subscription that the server ended: messages after it would be lost, so
 * the stream stops instead. Resubscribe (the live tail: `after` the last cursor it sent).
 */
export class SubscriptionInterruptedError extends AuditError {
  /** Resubscribing can succeed, except with a key that was revoked or expired. */
  readonly retryable: boolean;
  readonly code = 'SUBSCRIPTION_INTERRUPTED' as const;
  constructor(
    readonly reason: InterruptReason,
    detail?: string,
  ) {
    super(
      `subscription ended: ${INTERRUPT_MESSAGES[reason]}${detail ? ` (${detail})` : ''}; ` +
        (reason === 'UNAUTHENTICATED'
          ? 'subscribe again with a valid key'
          : 'resubscribe (auditEventsAdded: with `after` the last cursor you received)'),
    );
    this.retryable = reason !== 'UNAUTHENTICATED';
  }
}

export type LiveItem<T> = T | SubscriptionReady | SubscriptionInterruptedError;

/** A queue whose undelivered bytes count against a QueueBudget. */
export interface BudgetHolder {
  /** Bytes of its messages queued (or on their way to it) and not yet delivered. */
  readonly queuedBytes: number;
  /** Drops what it has queued (releasing those bytes) and ends with OVERLOADED. */
  shed(): void;
}

/**
 * The bytes every subscriber of the process may have queued, together. Without it each queue
 * is bounded on its own, and many subscribers that read slowly (or not at all) can hold
 * gigabytes between them. When a message would pass the bound, the subscriptions holding the
 * most are cut off (OVERLOADED) until it fits: the ones flooding the process or not reading
 * lose their place, never the process, and subscribers that keep up keep theirs.
 */
export class QueueBudget {
  private used = 0;
  private readonly holders = new Set<BudgetHolder>();

  constructor(readonly maxBytes: number) {}

  /** Bytes queued over all subscriptions now. */
  get bytes(): number {
    return this.used;
  }

  /**
   * Takes `bytes` for `holder`'s next message, shedding the largest holders while they do not
   * fit. False when `holder` itself was shed (it is then ended and must not queue the message).
   */
  reserve(holder: BudgetHolder, bytes: number): boolean {
    while (this.used + bytes > this.maxBytes) {
      let largest: BudgetHolder | undefined;
      for (const h of this.holders)
        if (!largest || h.queuedBytes > largest.queuedBytes) largest = h;
      // Nobody else holds anything: the message alone is too large for the bound.
      if (!largest || largest === holder || largest.queuedBytes < holder.queuedBytes) {
        holder.shed();
        return false;
      }
      largest.shed();
    }
    this.used += bytes;
    this.holders.add(holder);
    return true;
  }

  /** Gives back bytes of `holder`'s messages that were delivered or dropped. */
  release(holder: BudgetHolder, bytes: number): void {
    this.used -= bytes;
    if (holder.queuedBytes === 0) this.holders.delete(holder);
  }
}

/**
 * One subscriber's queue, as an async iterator. Unlike an async generator, `return()` ends it at
 * once even while a `next()` is waiting for a message — a client that unsubscribes from a quiet
 * topic is released immediately, not at the next message.
 *
 * Bounded: past `maxQueued` undelivered messages the subscription is interrupted
 * (SLOW_CONSUMER) after the messages already queued, never silently thinned out. With a
 * `budget`, the bytes it has queued also count against the process-wide bound (OVERLOADED), and
 * so does its share of the messages still on their way to it (`expect`, `arrived`).
 */
export class LiveSubscription<T> implements AsyncIterableIterator<LiveItem<T>>, BudgetHolder {
  private queue: LiveItem<T>[] = [];
  /** Bytes of each queued item (0 for markers), in the queue's order. */
  private sizes: number[] = [];
  private held = 0;
  /** Part of `held`: messages on their way to it that have not reached its queue yet. */
  private expectedBytes = 0;
  private waiter: ((r: IteratorResult<LiveItem<T>>) => void) | undefined;
  private ended = false;
  private release: (() => void) | undefined;

  constructor(
    private readonly maxQueued: number,
    private readonly budget?: QueueBudget,
  ) {}

  get queuedBytes(): number {
    return this.held;
  }

  /** Called once when the subscription ends, however it ends (unregisters the listener). */
  onEnd(release: () => void): void {
    if (this.ended) release();
    else this.release = release;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * Queues a message of about `bytes` (its serialised size; dropped when ended). A message that
   * a waiting reader takes at once is never counted.
   */
  push(item: T, bytes = 0): void {
    if (this.ended) return;
    if (this.queue.length >= this.maxQueued) {
      this.interrupt(new SubscriptionInterruptedError('SLOW_CONSUMER', `${this.maxQueued} queued`));
      return;
    }
    if (this.waiter || bytes === 0 || !this.budget) {
      this.deliver(item);
      return;
    }
    if (!this.budget.reserve(this, bytes)) return;
    this.held += bytes;
    this.deliver(item, bytes);
  }

  /**
   * A message is on its way to this subscriber (waiting in the bus for its turn): `bytes` of it
   * count against the budget until `arrived` — held in the bus, it is memory held for this
   * subscriber as much as its queue is. May shed the largest holders, this one included.
   */
  expect(bytes: number): void {
    if (this.ended || bytes <= 0 || !this.budget) return;
    if (!this.budget.reserve(this, bytes)) return;
    this.held += bytes;
    this.expectedBytes += bytes;
  }

  /** The message `expect`ed with `bytes` is handed over now (pushed next, or not at all). */
  arrived(bytes: number): void {
    const b = Math.min(bytes, this.expectedBytes);
    if (b <= 0) return;
    this.expectedBytes -= b;
    this.held -= b;
    this.budget?.release(this, b);
  }

  /** Puts the ready marker before anything already queued: it is always the first message. */
  ready(marker: SubscriptionReady): void {
    if (this.ended) return;
    if (this.waiter) this.deliver(marker);
    else {
      this.queue.unshift(marker);
      this.sizes.unshift(0);
    }
  }

  /**
   * Cut off to free the process-wide budget: what is queued is dropped (the reader learns it
   * from the OVERLOADED error, which is delivered next) and its bytes are given back at once.
   */
  shed(): void {
    const queued = this.queue.length;
    this.dropQueued();
    if (this.ended) {
      // Already ended (e.g. SLOW_CONSUMER) but not yet read to the end: its last word changes.
      this.queue.push(new SubscriptionInterruptedError('OVERLOADED', `${queued} messages dropped`));
      this.sizes.push(0);
      return;
    }
    this.interrupt(new SubscriptionInterruptedError('OVERLOADED', `${queued} messages dropped`));
  }

  /** Ends the stream: what is queued, then `error`, then done. */
  interrupt(error: SubscriptionInterruptedError): void {
    if (this.ended) return;
    this.deliver(error);
    this.end();
  }

  next(): Promise<IteratorResult<LiveItem<T>>> {
    const item = this.queue.shift();
    if (item !== undefined) {
      const bytes = this.sizes.shift() ?? 0;
      if (bytes > 0) {
        this.held -= bytes;
        this.budget?.release(this, bytes);
      }
      return Promise.resolve({ value: item, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  return(): Promise<IteratorResult<LiveItem<T>>> {
    this.dropQueued();
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  throw(): Promise<IteratorResult<LiveItem<T>>> {
    return this.return();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private deliver(item: LiveItem<T>, bytes = 0): void {
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      waiter({ value: item, done: false });
    } else {
      this.queue.push(item);
      this.sizes.push(bytes);
    }
  }

  private dropQueued(): void {
    this.queue = [];
    this.sizes = [];
    const held = this.held;
    this.held = 0;
    this.expectedBytes = 0;
    if (held > 0) this.budget?.release(this, held);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    // Nothing more is queued once ended: what was on its way is not held for it any more.
    this.arrived(this.expectedBytes);
    const release = this.release;
    this.release = undefined;
    release?.();
    if (this.waiter && this.queue.length === 0) {
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter({ value: undefined, done: true });
    }
  }
}

/** A stream of exactly one item (a typed error answered instead of subscribing). */
export function single<T>(item: T): AsyncIterableIterator<T> {
  let done = false;
  return {
    next: () => {
      if (done) return Promise.resolve({ value: undefined, done: true });
      done = true;
      return Promise.resolve({ value: item, done: false });
    },
    return: () => {
      done = true;
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}
