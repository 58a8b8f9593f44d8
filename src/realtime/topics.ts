import { type AuditEventRecord, recordFromJson } from '../domain/event.js';
import type {
  BatchSettled,
  DeadLetterEvent,
  DeadLetterEventKind,
  FlushTrigger,
} from '../ingest/events.js';

/**
 * What travels on the realtime bus, per tenant. Messages cross Redis as JSON, so they are plain
 * data: instants are ISO strings, revived by whoever turns them into API objects.
 */
export const TOPICS = ['flushCompleted', 'deadLetterEvents', 'auditEventsAdded'] as const;
export type Topic = (typeof TOPICS)[number];

/** How one correlation id's events of a batch ended. */
export interface CorrelationCounts {
  correlationId: string;
  stored: number;
  duplicates: number;
  deadLettered: number;
}

/** A batch reached a final status for every event; counted per correlation id. */
export interface FlushCompletedMessage {
  batchId: string;
  trigger: FlushTrigger;
  attempts: number;
  committedAt: string;
  durationMs: number;
  instanceId: string;
  recovered: boolean;
  correlations: CorrelationCounts[];
}

export interface DeadLetterMessage {
  kind: DeadLetterEventKind;
  deadLetterId: string;
  events: number;
  attempts: number;
  error: string | null;
  at: string;
  instanceId: string;
}

/** A stored event as it travels: the record with ISO instants. */
export type StoredEventMessage = Omit<AuditEventRecord, 'occurredAt' | 'receivedAt'> & {
  occurredAt: string;
  receivedAt: string;
  /** Its position in its month's hash chain; null when the writer could not say. */
  chainSeq: number | null;
};

/** The events of one batch that were newly stored (duplicates and dead letters left out). */
export interface AuditEventsAddedMessage {
  batchId: string;
  instanceId: string;
  events: StoredEventMessage[];
}

export interface TopicMessages {
  flushCompleted: FlushCompletedMessage;
  deadLetterEvents: DeadLetterMessage;
  auditEventsAdded: AuditEventsAddedMessage;
}

export function flushCompletedMessage(b: BatchSettled): FlushCompletedMessage {
  const byCorrelation = new Map<string, CorrelationCounts>();
  b.records.forEach((record, i) => {
    let counts = byCorrelation.get(record.correlationId);
    if (!counts) {
      counts = { correlationId: record.correlationId, stored: 0, duplicates: 0, deadLettered: 0 };
      byCorrelation.set(record.correlationId, counts);
    }
    const status = b.statuses[i];
    if (status === 'STORED') counts.stored++;
    else if (status === 'DUPLICATE') counts.duplicates++;
    else if (status === 'DEAD_LETTERED') counts.deadLettered++;
  });
  return {
    batchId: b.batchId,
    trigger: b.trigger,
    attempts: b.attempts,
    committedAt: b.committedAt.toISOString(),
    durationMs: b.durationMs,
    instanceId: b.instanceId,
    recovered: b.recovered ?? false,
    correlations: [...byCorrelation.values()],
  };
}

/** The newly stored events of a batch, or null when it stored none. */
export function auditEventsAddedMessage(b: BatchSettled): AuditEventsAddedMessage | null {
  const events: StoredEventMessage[] = [];
  b.records.forEach((r, i) => {
    if (b.statuses[i] !== 'STORED') return;
    events.push({
      ...r,
      occurredAt: r.occurredAt.toISOString(),
      receivedAt: r.receivedAt.toISOString(),
      chainSeq: b.chainSeqs?.[i] ?? null,
    });
  });
  return events.length ? { batchId: b.batchId, instanceId: b.instanceId, events } : null;
}

export function deadLetterMessage(e: DeadLetterEvent): DeadLetterMessage {
  return {
    kind: e.kind,
    deadLetterId: e.deadLetterId,
    events: e.events,
    attempts: e.attempts,
    error: e.error,
    at: e.at.toISOString(),
    instanceId: e.instanceId,
  };
}

/** The record back from its travelling form. */
export function storedEventRecord(e: Omit<StoredEventMessage, 'chainSeq'>): AuditEventRecord {
  return recordFromJson(e);
}
