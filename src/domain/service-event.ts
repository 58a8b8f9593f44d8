import { randomUUID } from 'node:crypto';
import { type AuditEventRecord, LIMITS, RESERVED_EVENT_TYPE_PREFIX } from './event.js';

/**
 * Events the service writes itself (access records, legal holds, retention changes): built here
 * from parts that may hold client-supplied text, made storable and cut to the data model's
 * limits, so recording an action never fails on what the action carried.
 */
export interface ServiceEvent {
  eventType: string;
  category: string;
  /** e.g. `read`, `revoke`, `place`. */
  action: string;
  severity: string;
  /** Who: for a key, `{ type: 'api_key', id: <its label> }`. */
  actor: { type: string; id: string };
  resource: { type: string; id: string; name?: string | null };
  /** The request that did it. */
  correlationId: string;
  data?: Record<string, unknown>;
}

const clip = (s: string, n: number) => (s.length > n ? s.slice(0, n) : s);

/** What PostgreSQL can store of a client-supplied string: no NUL, no lone surrogate. */
const storable = (s: string) => s.toWellFormed().replaceAll('\u0000', '\uFFFD');

/** The data as JSON that jsonb accepts and the data limits allow. */
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

/** The record a service event is written as: now, SUCCESS, a fresh id. */
export function serviceEventRecord(e: ServiceEvent, now = new Date()): AuditEventRecord {
  return {
    id: randomUUID(),
    occurredAt: now,
    receivedAt: now,
    eventType: clip(e.eventType, LIMITS.eventType),
    category: clip(e.category, LIMITS.category),
    action: clip(e.action, LIMITS.action),
    outcome: 'SUCCESS',
    correlationId: clip(storable(e.correlationId) || 'none', LIMITS.correlationId),
    actorType: clip(storable(e.actor.type) || 'unknown', LIMITS.actorType),
    actorId: clip(storable(e.actor.id) || 'unknown', LIMITS.actorId),
    actorIp: null,
    resourceType: clip(storable(e.resource.type) || 'unknown', LIMITS.resourceType),
    resourceId: clip(storable(e.resource.id) || 'unknown', LIMITS.resourceId),
    resourceName: e.resource.name ? clip(storable(e.resource.name), LIMITS.resourceName) : null,
    parentEventId: null,
    severity: clip(e.severity, LIMITS.severity),
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: dataJson(e.data),
  };
}

/**
 * Whether an event type is one the service writes itself (`auditgraph.access.read`, …): the
 * namespace writers may not use.
 */
export function isServiceEventType(eventType: string): boolean {
  return eventType.startsWith(RESERVED_EVENT_TYPE_PREFIX);
}
