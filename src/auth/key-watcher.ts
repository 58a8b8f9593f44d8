import type { ApiKeyStore } from '../db/api-key-store.js';
import { apiKeyProblem } from '../domain/api-key.js';
import { UnauthenticatedError } from '../domain/errors.js';
import { asError, type Logger } from '../logger.js';

type OnInvalid = (error: UnauthenticatedError) => void;

/**
 * Re-checks the keys of open WebSocket connections and subscriptions every `intervalMs`, so a
 * revoked or expired key loses what it holds open, not only its next request. One timer for all
 * of them; each key is looked up once per tick, through the key cache. A revocation (made here
 * or announced by another instance) drops the key from the cache and calls `recheckNow`, so what
 * the key holds open is closed at once rather than at the next tick.
 */
export class KeyWatcher {
  private readonly watched = new Map<string, Set<OnInvalid>>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  /** A re-check was asked for while one was running: run another after it. */
  private again = false;

  constructor(
    private readonly keys: ApiKeyStore,
    private readonly log: Logger,
    private readonly intervalMs: number,
  ) {}

  /** Calls `onInvalid` once when the key (by hash) stops being usable; returns the unwatch. */
  watch(keyHash: string, onInvalid: OnInvalid): () => void {
    let once = true;
    const callback: OnInvalid = (err) => {
      if (!once) return;
      once = false;
      onInvalid(err);
    };
    let set = this.watched.get(keyHash);
    if (!set) {
      set = new Set();
      this.watched.set(keyHash, set);
    }
    set.add(callback);
    this.timer ??= setInterval(() => void this.tick(), this.intervalMs).unref();
    return () => {
      const s = this.watched.get(keyHash);
      s?.delete(callback);
      if (s?.size === 0) this.watched.delete(keyHash);
      if (this.watched.size === 0) this.stop();
    };
  }

  /** Re-checks every watched key now (after a revocation). */
  recheckNow(): void {
    if (this.watched.size === 0) return;
    if (this.ticking) {
      this.again = true;
      return;
    }
    void this.tick();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = true;
    try {
      for (const [hash, callbacks] of [...this.watched]) {
        let problem: string | null;
        try {
          const key = await this.keys.byHash(hash);
          problem = key ? apiKeyProblem(key) : 'the API key was deleted';
        } catch (err) {
          // The database is unreachable: keep what is open; the next tick tries again.
          this.log.warn({ err: asError(err) }, 'api key re-check failed');
          continue;
        }
        if (!problem) continue;
        this.watched.delete(hash);
        for (const cb of callbacks) cb(new UnauthenticatedError(problem));
      }
    } finally {
      this.ticking = false;
      if (this.again) {
        this.again = false;
        void this.tick();
      }
    }
  }
}
