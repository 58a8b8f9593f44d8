import type { Config } from '../config.js';
import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import { BackpressureError, LimitExceededError } from '../domain/errors.js';
import type { AuditEventRecord } from '../domain/event.js';
import { serviceEventRecord } from '../domain/service-event.js';
import type { TenantId } from '../domain/tenant.js';
import { asError, type Logger } from '../logger.js';
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
 * accepted and counted like any other event (accepted = stored + duplicates + pending +
 * deadLettered + discarded), and a read costs no extra round trip to the database before it is
 * answered.
 *
 * Access records are held in the tenant's own access-record share of the buffer
 * (ACCESS_LOG_BUFFER_CAPACITY), never in its BUFFER_CAPACITY: reads cannot starve the tenant's
 * writes. A read is recorded before it is answered, or refused (`recordRead` throws): with
 * AUDIT_READS no read is served unrecorded. An administrative action is already done when it is
 * recorded, so recording it (`record`) never fails it: a refusal (shutdown, a full process
 * buffer) is logged at error level with the record, so the log still holds it.
 */
export class AccessLog {
  /** When a refused read was last logged, per tenant: a flood of refusals logs once a second. */
  private readonly refusalLogged = new Map<TenantId, number>();

  constructor(
    private readonly ingest: IngestService,
    private readonly tenants: TenantProvisioner,
    private readonly log: Logger,
    private readonly opts: Pick<Config, 'auditReads' | 'bufferMaxBytes' | 'dlqMaxEvents'>,
  ) {}

  /** Whether reads of the audit log are recorded (AUDIT_READS). */
  get auditsReads(): boolean {
    return this.opts.auditReads;
  }

  /**
   * Accepts the record of a read, or throws why it could not: LimitExceededError (the tenant's
   * access-record share, or the process's buffer, is full; retryable), ShuttingDownError. The
   * caller then refuses the read.
   */
  async recordRead(r: AccessRecord): Promise<void> {
    await this.tenants.ensure(r.tenant, false);
    try {
      await this.ingest.accept(r.tenant, [accessEventRecord(r)], 'BUFFERED', 'read');
    } catch (err) {
      const now = Date.now();
      if (now - (this.refusalLogged.get(r.tenant) ?? 0) >= 1_000) {
        this.refusalLogged.set(r.tenant, now);
        this.log.warn(
          { err: asError(err), tenant: r.tenant, resource: r.resource.id },
          'read refused: its access record could not be accepted (AUDIT_READS)',
        );
      }
      if (err instanceof BackpressureError) {
        const max =
          err.limit === 'BUFFER_MAX_BYTES' ? this.opts.bufferMaxBytes : this.opts.dlqMaxEvents;
        throw new LimitExceededError(
          err.limit,
          max,
          'the record of this read (AUDIT_READS) could not be buffered, so the read was refused',
        );
      }
      throw err;
    }
  }

  /** Accepts the record of an administrative action into the tenant's log; true when accepted. */
  async record(r: AccessRecord): Promise<boolean> {
    const record = accessEventRecord(r);
    try {
      await this.tenants.ensure(r.tenant, false);
      await this.ingest.accept(r.tenant, [record], 'BUFFERED', 'admin');
      return true;
    } catch (err) {
      this.log.error(
        { err: asError(err), tenant: r.tenant, access: { ...r, tenant: undefined } },
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
