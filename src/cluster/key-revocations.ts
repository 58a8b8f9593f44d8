import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from '../logger.js';
import { createRedis, type RedisKeys } from '../redis/client.js';

/** Longest a revocation waits for every instance to confirm it dropped the key. */
export const REVOCATION_CONFIRM_MS = 3_000;

/**
 * Tells every instance that an API key was revoked, so that each drops it from its key cache
 * (and re-checks what the key holds open) before the revoking call returns.
 */
export interface KeyRevocations {
  start(): Promise<void>;
  stop(): Promise<void>;
  /**
   * Applies the revocation here, then on every other instance; resolves once all of them
   * confirmed. Rejects when that cannot be known (Redis unreachable, an instance silent for
   * REVOCATION_CONFIRM_MS): the key stays revoked in the database, and announcing again is safe.
   */
  announce(keyId: string): Promise<void>;
  /**
   * Whether this instance would hear of a revocation made elsewhere right now: while it would
   * not, its cached key look-ups must not be trusted.
   */
  readonly listening: boolean;
}

/** What an instance does on hearing of a revocation: synchronous, so it is done when confirmed. */
export type ApplyRevocation = (keyId: string) => void;

/** One process alone (no Redis): applying the revocation here is all there is. */
export class LocalKeyRevocations implements KeyRevocations {
  readonly listening = true;
  constructor(private readonly apply: ApplyRevocation) {}
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  async announce(keyId: string): Promise<void> {
    this.apply(keyId);
  }
}

interface Notice {
  /** This announcement, for its confirmations. */
  id: string;
  /** The announcing process, whose inbox the confirmations go to. */
  from: string;
  keyId: string;
}

/**
 * Revocations through Redis pub/sub. Every instance subscribes to one channel; an announcement
 * is published there, and PUBLISH answers how many subscribers received it; each applies it and
 * confirms on the announcer's own channel, and the announcer waits for that many confirmations.
 * An instance whose subscription is down (`listening` false) cannot hear one, so its key cache
 * is not trusted meanwhile, and everything it cached is treated as stale once it hears again.
 * With `apply` absent (the CLI) the process only announces.
 */
export class RedisKeyRevocations implements KeyRevocations {
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly waiting = new Map<string, () => void>();
  private subscribed = false;

  constructor(
    redisUrl: string,
    private readonly keys: RedisKeys,
    private readonly instanceId: string,
    private readonly log: Logger,
    private readonly apply: ApplyRevocation | undefined,
    /** Called when this instance may have missed revocations (its subscription was down). */
    private readonly onMissed: () => void = () => {},
  ) {
    this.pub = createRedis(redisUrl, `auditgraph-revocations-${instanceId}`, log, {
      failFast: true,
    });
    this.sub = createRedis(redisUrl, `auditgraph-revocations-sub-${instanceId}`, log);
  }

  /** The channel every instance hears revocations on (a fixed segment: no tenant id reaches it). */
  private get channel() {
    return this.keys.service('apikeys', 'revoked');
  }
  private inbox(instance: string) {
    return this.keys.service('apikeys', 'confirmations', instance);
  }
  private get channels() {
    return this.apply ? [this.channel, this.inbox(this.instanceId)] : [this.inbox(this.instanceId)];
  }

  get listening(): boolean {
    return this.subscribed && this.sub.status === 'ready';
  }

  async start(): Promise<void> {
    await Promise.all([this.pub.connect(), this.sub.connect()]);
    this.sub.on('message', (channel: string, text: string) => this.onMessage(channel, text));
    this.sub.on('close', () => {
      if (!this.subscribed) return;
      this.subscribed = false;
      this.onMissed();
    });
    // ioredis re-subscribes by itself after a reconnect; subscribing again here tells us when
    // that is confirmed, and what was cached meanwhile is stale from then on.
    this.sub.on('ready', () => {
      this.sub.subscribe(...this.channels).then(
        () => {
          this.subscribed = true;
          this.onMissed();
        },
        (err: Error) => this.log.warn({ err }, 'revocation channel not subscribed'),
      );
    });
    await this.sub.subscribe(...this.channels);
    this.subscribed = true;
  }

  async stop(): Promise<void> {
    this.subscribed = false;
    await this.sub.quit().catch(() => this.sub.disconnect());
    await this.pub.quit().catch(() => this.pub.disconnect());
  }

  async announce(keyId: string): Promise<void> {
    this.apply?.(keyId);
    const notice: Notice = { id: randomUUID(), from: this.instanceId, keyId };
    let confirmations = 0;
    let expected: number | undefined;
    let allConfirmed!: () => void;
    const all = new Promise<'ok'>((r) => (allConfirmed = () => r('ok')));
    // Confirmations may arrive before PUBLISH answers how many to expect.
    const check = () => {
      if (expected !== undefined && confirmations >= expected) allConfirmed();
    };
    this.waiting.set(notice.id, () => {
      confirmations++;
      check();
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      expected = await this.pub.publish(this.channel, JSON.stringify(notice));
      check();
      const timeout = new Promise<'timeout'>((r) => {
        timer = setTimeout(() => r('timeout'), REVOCATION_CONFIRM_MS);
      });
      if ((await Promise.race([all, timeout])) === 'timeout') {
        throw new Error(
          `${expected - confirmations} of ${expected} instances did not confirm the revocation ` +
            `within ${REVOCATION_CONFIRM_MS} ms`,
        );
      }
    } finally {
      clearTimeout(timer);
      this.waiting.delete(notice.id);
    }
  }

  private onMessage(channel: string, text: string): void {
    let msg: Partial<Notice>;
    try {
      msg = JSON.parse(text) as Partial<Notice>;
    } catch {
      return;
    }
    if (typeof msg.id !== 'string') return;
    if (channel !== this.channel) {
      this.waiting.get(msg.id)?.();
      return;
    }
    if (typeof msg.keyId !== 'string' || typeof msg.from !== 'string' || !this.apply) return;
    this.apply(msg.keyId);
    this.pub
      .publish(this.inbox(msg.from), JSON.stringify({ id: msg.id }))
      .catch((err: Error) => this.log.warn({ err, keyId: msg.keyId }, 'revocation not confirmed'));
  }
}
