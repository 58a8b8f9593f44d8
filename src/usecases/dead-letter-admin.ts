import { ValidationError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import { isLowerUuid } from '../domain/uuid.js';
import type { DeadLetter, DeadLetterStore } from '../ingest/dead-letter-queue.js';
import type { IngestEvents } from '../ingest/events.js';
import type { IngestService } from '../ingest/ingest-service.js';
import type { RetryWorker } from '../ingest/retry-worker.js';
import type { Logger } from '../logger.js';
import type { Actor } from './actor.js';

/** At most this many dead letters are replayed by one request. */
export const REPLAY_MAX_IDS = 1000;

/** Why a dead letter is given up, trimmed: 1 to 1000 characters, or a ValidationError. */
export function discardReason(raw: string): string {
  const reason = raw.trim();
  if (reason.length < 1 || reason.length > 1000) {
    throw ValidationError.single('input.reason', 'must be 1 to 1000 characters');
  }
  return reason;
}

/**
 * What an operator does with parked dead letters: replay them (attempts start again) or give
 * one up for good (counted as discarded, logged with the reason — never silent). Each step is
 * told to the write path's listeners (deadLetterEvents subscribers, metrics) and recorded in the
 * tenant's log.
 */
export class DeadLetterAdmin {
  constructor(
    private readonly deadLetters: DeadLetterStore,
    private readonly retryWorker: RetryWorker,
    private readonly ingest: IngestService,
    private readonly events: IngestEvents,
    private readonly instanceId: string,
    private readonly log: Logger,
  ) {}

  /**
   * Replays the given parked dead letters (or, `ids` null, every parked one of the tenant);
   * answers those replayed and the ids that are not parked dead letters of the tenant.
   */
  async replay(
    actor: Actor,
    tenant: TenantId,
    ids: readonly string[] | null,
    requestId: string,
  ): Promise<{ replayed: DeadLetter[]; notFound: string[] }> {
    const wanted =
      ids ?? (await this.deadLetters.list(tenant, { state: 'PARKED' })).map((d) => d.id);
    if (wanted.length > REPLAY_MAX_IDS) {
      throw ValidationError.single('input.ids', `at most ${REPLAY_MAX_IDS} ids`);
    }
    const replayed: DeadLetter[] = [];
    const notFound: string[] = [];
    for (const id of wanted) {
      const dl = isLowerUuid(id) ? await this.deadLetters.replay(tenant, id) : null;
      if (!dl) notFound.push(id);
      else {
        replayed.push(dl);
        this.tell(tenant, 'REPLAYED', dl, dl.error);
      }
    }
    this.log.info(
      { tenant, replayed: replayed.length, requestId },
      'dead letters replayed by request',
    );
    for (const dl of replayed) {
      await actor.recordAccess({
        tenant,
        eventType: 'auditgraph.deadletter.replayed',
        action: 'replay',
        resource: { type: 'dead_letter', id: dl.id },
        data: { events: dl.records.length, attempts: dl.attempts },
      });
    }
    if (replayed.length) void this.retryWorker.runOnce();
    return { replayed, notFound };
  }

  /** Gives up a parked dead letter; null when the tenant has no parked dead letter with this id. */
  async discard(
    actor: Actor,
    tenant: TenantId,
    id: string,
    reasonRaw: string,
    requestId: string,
  ): Promise<DeadLetter | null> {
    const reason = discardReason(reasonRaw);
    const dl = isLowerUuid(id) ? await this.deadLetters.discard(tenant, id) : null;
    if (!dl) return null;
    this.ingest.recordDiscarded(tenant, dl.records.length);
    this.log.warn(
      { tenant, deadLetterId: dl.id, events: dl.records.length, reason, requestId },
      'dead letter discarded',
    );
    this.tell(tenant, 'DISCARDED', dl, reason);
    await actor.recordAccess({
      tenant,
      eventType: 'auditgraph.deadletter.discarded',
      action: 'discard',
      resource: { type: 'dead_letter', id: dl.id },
      data: { events: dl.records.length, attempts: dl.attempts, reason },
    });
    return dl;
  }

  private tell(
    tenant: TenantId,
    kind: 'REPLAYED' | 'DISCARDED',
    dl: DeadLetter,
    error: string | null,
  ): void {
    this.events.deadLetter({
      tenant,
      kind,
      deadLetterId: dl.id,
      events: dl.records.length,
      attempts: dl.attempts,
      error,
      at: new Date(),
      instanceId: this.instanceId,
    });
  }
}
