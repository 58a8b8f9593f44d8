import { randomUUID } from 'node:crypto';
import type { TenantRegistry } from '../db/tenant-registry.js';
import { type AuditEventRecord, LIMITS } from '../domain/event.js';
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

const clip = (s: string, n: number) => (s.length > n ? s.slice(0, n) : s);

/** What PostgreSQL can store of a client-supplied string: no NUL, no lone surrogate. */
const storable = (s: string) => s.toWellFormed().replaceAll('\u0000', '\uFFFD');

/** The record's data as JSON that jsonb accepts and the data limits allow. */
function dataJson(data: Record<string, unknown> | undefined): string | null {
  if (!data) return null;
  const json = JSON.stringify(data, (_key, value: unknown) => {
    if (typeof value === 'string') return storable(value);
    if (value && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Date)) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [storable(k), v]));
    }
    return value;
  });
  if (Buffer.byteLength(json, 'utf8') <= LIMITS.dataBytes / 4) return json;
  return JSON.stringify({ truncated: true, bytes: Buffer.byteLength(json, 'utf8') });
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
  return {
    id: randomUUID(),
    occurredAt: now,
    receivedAt: now,
    eventType: r.eventType,
    category: 'access',
    action: clip(r.action, LIMITS.action),
    outcome: 'SUCCESS',
    correlationId: clip(storable(r.correlationId) || 'none', LIMITS.correlationId),
    actorType: clip(r.actor.type, LIMITS.actorType),
    actorId: clip(storable(r.actor.id), LIMITS.actorId),
    actorIp: null,
    resourceType: clip(r.resource.type, LIMITS.resourceType),
    resourceId: clip(storable(r.resource.id), LIMITS.resourceId),
    resourceName: r.resource.name ? clip(storable(r.resource.name), LIMITS.resourceName) : null,
    parentEventId: null,
    severity: 'info',
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: dataJson(r.data),
  };
}
