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
  | 'FANOUT_LOST'
  | 'FANOUT_UNAVAILABLE';

const INTERRUPT_MESSAGES: Record<InterruptReason, string> = {
  SHUTTING_DOWN: 'the instance is shutting down',
  SLOW_CONSUMER: 'the subscriber fell too far behind and messages would have been dropped',
  FANOUT_LOST: 'the connection to Redis (fan-out across instances) was lost',
  FANOUT_UNAVAILABLE:
    'the subscription could not be registered with Redis (fan-out across instances)',
};

/**
 * The last message of a subscription that the server ended: messages after it would be lost, so
 * the stream stops instead. Resubscribe, then re-query `auditEvents` from your last position.
 */
export class SubscriptionInterruptedError extends AuditError {
  readonly retryable = true;
  constructor(
    readonly reason: InterruptReason,
    detail?: string,
  ) {
    super(
      `subscription ended: ${INTERRUPT_MESSAGES[reason]}${detail ? ` (${detail})` : ''}; ` +
        'resubscribe, then re-query auditEvents from your last position',
    );
  }
}

export type LiveItem<T> = T | SubscriptionReady | SubscriptionInterruptedError;

/**
 * One subscriber's queue, as an async iterator. Unlike an async generator, `return()` ends it at
 * once even while a `next()` is waiting for a message — a client that unsubscribes from a quiet
 * topic is released immediately, not at the next message.
 *
 * Bounded: past `maxQueued` undelivered messages the subscription is interrupted
 * (SLOW_CONSUMER) after the messages already queued, never silently thinned out.
 */
export class LiveSubscription<T> implements AsyncIterableIterator<LiveItem<T>> {
  private queue: LiveItem<T>[] = [];
  private waiter: ((r: IteratorResult<LiveItem<T>>) => void) | undefined;
  private ended = false;
  private release: (() => void) | undefined;

  constructor(private readonly maxQueued: number) {}

  /** Called once when the subscription ends, however it ends (unregisters the listener). */
  onEnd(release: () => void): void {
    if (this.ended) release();
    else this.release = release;
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Queues a message (dropped when ended). */
  push(item: T): void {
    if (this.ended) return;
    if (this.queue.length >= this.maxQueued) {
      this.interrupt(new SubscriptionInterruptedError('SLOW_CONSUMER', `${this.maxQueued} queued`));
      return;
    }
    this.deliver(item);
  }

  /** Puts the ready marker before anything already queued: it is always the first message. */
  ready(marker: SubscriptionReady): void {
    if (this.ended) return;
    if (this.waiter) this.deliver(marker);
    else this.queue.unshift(marker);
  }

  /** Ends the stream: what is queued, then `error`, then done. */
  interrupt(error: SubscriptionInterruptedError): void {
    if (this.ended) return;
    this.deliver(error);
    this.end();
  }

  next(): Promise<IteratorResult<LiveItem<T>>> {
    const item = this.queue.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }

  return(): Promise<IteratorResult<LiveItem<T>>> {
    this.queue = [];
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  throw(): Promise<IteratorResult<LiveItem<T>>> {
    return this.return();
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  private deliver(item: LiveItem<T>): void {
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      waiter({ value: item, done: false });
    } else {
      this.queue.push(item);
    }
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
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
