import { CommitTimeoutError } from '../domain/errors.js';
import type { AuditEventRecord } from '../domain/event.js';
import { serviceEventRecord } from '../domain/service-event.js';
import type { TenantId } from '../domain/tenant.js';
import type { IngestService } from '../ingest/ingest-service.js';
import { asError, type Logger } from '../logger.js';

/** The event types the service writes about a tenant's retention and legal holds. */
export type LifecycleEventType =
  | 'auditgraph.legal_hold.placed'
  | 'auditgraph.legal_hold.released'
  | 'auditgraph.retention.changed';

/** A lifecycle change to record as an audit event of the tenant. */
export interface LifecycleRecord {
  tenant: TenantId;
  eventType: LifecycleEventType;
  /** e.g. `place`, `release`, `set`. */
  action: string;
  /** Who: `{ type: 'api_key', id: <label> }`, or `{ type: 'anonymous', … }` in AUTH_MODE=dev. */
  actor: { type: string; id: string };
  /** `{ type: 'legal_hold', id }`, `{ type: 'retention', id: <tenant> }`. */
  resource: { type: string; id: string };
  /** The request that did it. */
  correlationId: string;
  data: Record<string, unknown>;
}

/** What became of the event that records a lifecycle change. */
export interface RecordedEvent {
  id: string;
  occurredAt: Date;
  /** STORED, DUPLICATE, DEAD_LETTERED; PENDING after a commit timeout; NOT_ACCEPTED if refused. */
  status: 'STORED' | 'DUPLICATE' | 'DEAD_LETTERED' | 'PENDING' | 'NOT_ACCEPTED';
  /** Why it was not accepted (NOT_ACCEPTED only). */
  error: string | null;
}

/** The event a lifecycle record is written as (category `lifecycle`). */
export function lifecycleEventRecord(r: LifecycleRecord, now = new Date()): AuditEventRecord {
  return serviceEventRecord({ ...r, category: 'lifecycle', severity: 'notice' }, now);
}

/**
 * Legal holds and retention changes are themselves audit events of the tenant, written through
 * the ingest path like any other (`ack: COMMITTED`), so they are accepted, counted in auditStats
 * and chained like every event. The change itself is already committed when it is recorded;
 * a refusal to record (backpressure, shutdown) is reported to the caller and logged at error
 * level with the whole record, never dropped silently.
 */
export class LifecycleLog {
  constructor(
    private readonly ingest: IngestService,
    private readonly log: Logger,
  ) {}

  /** Accepts the record into the tenant's log (COMMITTED) and says what became of it. */
  async record(r: LifecycleRecord): Promise<RecordedEvent> {
    const record = lifecycleEventRecord(r);
    const base = { id: record.id, occurredAt: record.occurredAt, error: null };
    try {
      const [accepted] = await this.ingest.accept(r.tenant, [record], 'COMMITTED');
      const status = accepted?.status;
      if (status === 'STORED' || status === 'DUPLICATE' || status === 'DEAD_LETTERED') {
        return { ...base, status };
      }
      return { ...base, status: 'PENDING' };
    } catch (err) {
      if (err instanceof CommitTimeoutError) {
        // Accepted and still being written: it will be stored (or dead-lettered), not lost.
        this.log.warn(
          { tenant: r.tenant, eventId: record.id, eventType: r.eventType },
          'lifecycle event accepted but not yet committed',
        );
        return { ...base, status: 'PENDING' };
      }
      this.log.error(
        {
          err: asError(err),
          tenant: r.tenant,
          lifecycle: { ...r, tenant: undefined },
        },
        'lifecycle event not accepted',
      );
      return { ...base, status: 'NOT_ACCEPTED', error: (err as Error).message };
    }
  }
}
