import { ShuttingDownError } from '../domain/errors.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { DeadLetterStore } from '../ingest/dead-letter-queue.js';
import type { AuditEventReader } from '../query/audit-event-reader.js';
import {
  type LiveItem,
  SubscriptionInterruptedError,
  SubscriptionReady,
} from '../realtime/live-subscription.js';
import type { RealtimeBus } from '../realtime/pubsub.js';
import type { FlushCompletedMessage } from '../realtime/topics.js';

export type EventWaitOutcome = 'STORED' | 'DEAD_LETTERED' | 'TIMED_OUT';

export interface EventWaitResult {
  /** STORED: `count` are stored; DEAD_LETTERED: the rest cannot come (they are dead letters). */
  outcome: EventWaitOutcome;
  count: number;
  /** Events of the correlation id stored (queryable) when the wait ended, counted up to `count`. */
  stored: number;
  /** Events of the correlation id in the dead-letter queue when the wait ended. */
  deadLettered: number;
  /** The newest of those dead letters' last error. */
  lastError: string | null;
  waitedMs: number;
}

export interface EventWaitRequest {
  correlationId: string;
  count: number;
  timeoutMs: number;
}

/** How long a wait whose fan-out dropped pauses before it subscribes again. */
const RESUBSCRIBE_DELAY_MS = 100;

/**
 * Waiting for a correlation id's events to be stored: what a test needs before it reads them
 * back, in one call, with no polling.
 *
 * The table is the truth; the live messages only say when to look again. The wait subscribes
 * to the tenant's batch completions first (on every instance), then counts the stored events
 * once; from then on every batch that stores events of the correlation id is announced after its
 * commit, so adding announced `stored` to that count can only reach `count` early (a batch
 * committed between the subscription and the count is in both), never late — and when it does,
 * the table is counted again, exactly. A dead letter of the correlation id (announced, or there
 * before the wait began) is looked up in the dead-letter queue. When the fan-out is interrupted
 * the wait subscribes again and counts again, so no batch is missed.
 */
export class EventWaits {
  constructor(
    private readonly realtime: RealtimeBus,
    private readonly reader: Pick<AuditEventReader, 'countCorrelation'>,
    private readonly deadLetters: Pick<DeadLetterStore, 'list'>,
  ) {}

  async wait(
    tenant: TenantId,
    req: EventWaitRequest,
    signal?: AbortSignal,
  ): Promise<EventWaitResult> {
    const started = Date.now();
    const deadline = started + req.timeoutMs;
    const state = { stored: 0, deadLettered: 0, lastError: null as string | null };
    const result = (outcome: EventWaitOutcome): EventWaitResult => ({
      outcome,
      count: req.count,
      ...state,
      waitedMs: Date.now() - started,
    });
    const recount = async (deadLetters: boolean) => {
      state.stored = await this.reader.countCorrelation(
        tenantSchema(tenant),
        req.correlationId,
        req.count,
      );
      if (deadLetters) Object.assign(state, await this.deadLettersOf(tenant, req.correlationId));
    };
    const decided = (): EventWaitOutcome | null => {
      if (state.stored >= req.count) return 'STORED';
      if (state.deadLettered > 0 && state.stored + state.deadLettered >= req.count) {
        return 'DEAD_LETTERED';
      }
      return null;
    };
    const timer = new Deadline(deadline, signal);
    let first = true;
    try {
      for (;;) {
        const sub = this.realtime.subscribe(tenant, 'flushCompleted', (m: FlushCompletedMessage) =>
          m.correlations.some((c) => c.correlationId === req.correlationId) ? [m] : [],
        );
        try {
          const ready = await timer.race(sub.next());
          if (ready === undefined) break;
          if (!ready.done && ready.value instanceof SubscriptionReady) {
            await recount(first || state.deadLettered > 0);
            first = false;
            if (decided()) return result(decided()!);
            let announced = state.stored;
            for (;;) {
              const step = await timer.race(sub.next());
              if (step === undefined || step.done) break;
              const m = step.value as LiveItem<FlushCompletedMessage>;
              if (m instanceof SubscriptionInterruptedError) {
                if (m.reason === 'SHUTTING_DOWN') throw new ShuttingDownError();
                break;
              }
              if (m instanceof SubscriptionReady) continue;
              const mine = m.correlations.find((c) => c.correlationId === req.correlationId);
              announced += mine?.stored ?? 0;
              const deadLetters = m.recovered || (mine?.deadLettered ?? 0) > 0;
              if (announced < req.count && !deadLetters) continue;
              await recount(deadLetters || state.deadLettered > 0);
              announced = state.stored;
              if (decided()) return result(decided()!);
            }
          } else if (
            ready.value instanceof SubscriptionInterruptedError &&
            ready.value.reason === 'SHUTTING_DOWN'
          ) {
            throw new ShuttingDownError();
          }
        } finally {
          await sub.return();
        }
        if (timer.over()) break;
        await timer.race(new Promise((r) => setTimeout(r, RESUBSCRIBE_DELAY_MS)));
        if (timer.over()) break;
      }
      // The time ran out (or the caller left): what the table holds now is the answer.
      if (!signal?.aborted) await recount(true);
      return result(decided() ?? 'TIMED_OUT');
    } finally {
      timer.clear();
    }
  }

  /** The correlation id's events in the dead-letter queue, and the newest one's last error. */
  private async deadLettersOf(
    tenant: TenantId,
    correlationId: string,
  ): Promise<{ deadLettered: number; lastError: string | null }> {
    let deadLettered = 0;
    let newest: { at: number; error: string } | null = null;
    for (const dl of await this.deadLetters.list(tenant)) {
      const n = dl.records.filter((r) => r.correlationId === correlationId).length;
      if (n === 0) continue;
      deadLettered += n;
      const at = dl.lastFailedAt.getTime();
      if (!newest || at > newest.at) newest = { at, error: dl.error };
    }
    return { deadLettered, lastError: newest?.error ?? null };
  }
}

/** A wait's end: its deadline or its caller's abort, whichever comes first. */
class Deadline {
  private readonly ended: Promise<undefined>;
  private timer: NodeJS.Timeout | undefined;
  private done = false;
  private unlisten: (() => void) | undefined;

  constructor(
    private readonly at: number,
    signal?: AbortSignal,
  ) {
    this.ended = new Promise<undefined>((resolve) => {
      const end = () => {
        this.done = true;
        resolve(undefined);
      };
      this.timer = setTimeout(end, Math.max(0, at - Date.now()));
      if (!signal) return;
      if (signal.aborted) return end();
      signal.addEventListener('abort', end, { once: true });
      this.unlisten = () => signal.removeEventListener('abort', end);
    });
  }

  over(): boolean {
    return this.done || Date.now() >= this.at;
  }

  /** `p`, or undefined once the wait has ended. */
  race<T>(p: Promise<T>): Promise<T | undefined> {
    return Promise.race([p, this.ended]);
  }

  clear(): void {
    clearTimeout(this.timer);
    this.unlisten?.();
  }
}
