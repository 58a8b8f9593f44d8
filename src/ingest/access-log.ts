import type { TenantRegistry } from '../db/tenant-registry.js';
import type { AuditEventRecord } from '../domain/event.js';
import { serviceEventRecord } from '../domain/service-event.js';
import type { TenantId } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { IngestService } from './ingest-service.js';

/** The event types the service writes about access to a tenant. */
export type AccessEventType =
  | 'auditgraph.access.read'
  | 'auditgraph.apikey.created'
  | 'auditgraph.apikey.revoked'
  | 'auditgraph.tenant.provisioned'
  | 'auditgraph.deadletter.replayed'
  | 'auditgraph.deadletter.discarded';

export interface AccessRecord {
  tenant: TenantId;
  eventType: AccessEventType;
  /** e.g. `read`, `create`, `revoke`, `provision`, `replay`, `discard`. */
  action: string;
  /** Who: for a key, `{ type: 'api_key', id: <its label> }`. */
  actor: { type: string; id: string };
  /** What was touched: `{ type: 'audit_log', id: 'auditEvents' }`, `{ type: 'api_key', id }`… */
  resource: { type: string; id: string; name?: string | null };
  /** The request that did it. */
  correlationId: string;
  data?: Record<string, unknown>;
}

/**
 * Access is itself audited: key and tenant administration, dead-letter replays and discards,
 * and (AUDIT_READS) reads of the audit log are written as events into the affected tenant's own
 * log, through the same ingest path as every other event (`ack: BUFFERED`). So they are
 * accepted and counted like any other event (promise 1), and a read costs no extra round trip
 * to the database before it is answered.
 *
 * Recording never fails the action it records: a refusal (backpressure, shutdown) is logged
 * at error level with the record, so the log still holds it.
 */
export class AccessLog {
  constructor(
    private readonly ingest: IngestService,
    private readonly tenants: TenantRegistry,
    private readonly log: Logger,
    private readonly opts: { auditReads: boolean },
  ) {}

  /** Whether reads of the audit log are recorded (AUDIT_READS). */
  get auditsReads(): boolean {
    return this.opts.auditReads;
  }

  /** Accepts the record into the tenant's log; true when it was accepted. */
  async record(r: AccessRecord): Promise<boolean> {
    const record = accessEventRecord(r);
    try {
      await this.tenants.ensure(r.tenant, false);
      await this.ingest.accept(r.tenant, [record], 'BUFFERED');
      return true;
    } catch (err) {
      this.log.error(
        { err: (err as Error).message, tenant: r.tenant, access: { ...r, tenant: undefined } },
        'access record not accepted',
      );
      return false;
    }
  }
}

/** The event an access record is written as (category `access`, the request as correlation id). */
export function accessEventRecord(r: AccessRecord, now = new Date()): AuditEventRecord {
  return serviceEventRecord({ ...r, category: 'access', severity: 'info' }, now);
}
