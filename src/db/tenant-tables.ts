import { sql } from 'drizzle-orm';
import {
  check,
  index,
  integer,
  jsonb,
  pgSchema,
  pgTable,
  primaryKey,
  timestamp,
  uuid,
  varchar,
} from 'drizzle-orm/pg-core';

/**
 * Tables that live in every tenant schema (`t_<tenant>`). They are declared without a schema so
 * drizzle-kit writes unqualified migrations, which the migrator runs with the tenant's schema as
 * `search_path` (set with set_config(..., true) inside the migration transaction).
 *
 * `audit_events` is `PARTITION BY RANGE (occurred_at)`, one partition per UTC month; drizzle-kit
 * cannot express that, so the clause is appended by hand to the generated CREATE TABLE.
 */

// Millisecond precision so JavaScript Date cursors are exact.
const ts = (name: string) => timestamp(name, { precision: 3, withTimezone: true, mode: 'date' });

const auditEventColumns = {
  id: uuid('id').notNull(),
  occurredAt: ts('occurred_at').notNull(),
  receivedAt: ts('received_at').notNull(),
  eventType: varchar('event_type', { length: 100 }).notNull(),
  category: varchar('category', { length: 50 }).notNull(),
  action: varchar('action', { length: 50 }).notNull(),
  outcome: varchar('outcome', { length: 16 }).notNull(),
  correlationId: varchar('correlation_id', { length: 255 }).notNull(),
  actorType: varchar('actor_type', { length: 100 }).notNull(),
  actorId: varchar('actor_id', { length: 255 }).notNull(),
  actorIp: varchar('actor_ip', { length: 45 }),
  resourceType: varchar('resource_type', { length: 100 }).notNull(),
  resourceId: varchar('resource_id', { length: 255 }).notNull(),
  resourceName: varchar('resource_name', { length: 255 }),
  parentEventId: uuid('parent_event_id'),
  severity: varchar('severity', { length: 20 }),
  durationMs: integer('duration_ms'),
  errorCode: varchar('error_code', { length: 50 }),
  errorMessage: varchar('error_message', { length: 4096 }),
  namespace: varchar('namespace', { length: 253 }),
  clusterId: varchar('cluster_id', { length: 255 }),
  traceId: varchar('trace_id', { length: 255 }),
  spanId: varchar('span_id', { length: 255 }),
  data: jsonb('data').$type<Record<string, unknown>>(),
  batchId: uuid('batch_id').notNull(),
};

// Every keyset order and filter has an index ending in (occurred_at, id).
export const auditEvents = pgTable('audit_events', auditEventColumns, (t) => [
  primaryKey({ name: 'audit_events_pkey', columns: [t.occurredAt, t.id] }),
  index('audit_events_id_idx').on(t.id),
  index('audit_events_correlation_idx').on(t.correlationId, t.occurredAt, t.id),
  index('audit_events_event_type_idx').on(t.eventType, t.occurredAt, t.id),
  index('audit_events_actor_idx').on(t.actorType, t.actorId, t.occurredAt, t.id),
  index('audit_events_resource_idx').on(t.resourceType, t.resourceId, t.occurredAt, t.id),
  index('audit_events_data_idx').using('gin', sql`${t.data} jsonb_path_ops`),
  check('audit_events_outcome_check', sql`${t.outcome} in ('SUCCESS', 'FAILURE', 'PENDING')`),
  check('audit_events_duration_check', sql`${t.durationMs} >= 0`),
]);

const batchLedgerColumns = {
  batchId: uuid('batch_id').primaryKey(),
  committedAt: ts('committed_at').notNull().defaultNow(),
  eventCount: integer('event_count').notNull(),
  storedCount: integer('stored_count').notNull(),
  /** Positions in the batch that were duplicates, so a retried batch reports the same statuses. */
  duplicatePositions: integer('duplicate_positions').array().notNull(),
  /** Positions the database rejected (data errors); they went to the dead-letter queue. */
  rejectedPositions: integer('rejected_positions').array().notNull().default(sql`'{}'`),
  instanceId: varchar('instance_id', { length: 100 }).notNull(),
};

/**
 * One row per committed batch, written in the batch's own transaction: a retry after an unknown
 * commit outcome finds its batch id here and is recognised as already done.
 */
export const batchLedger = pgTable('batch_ledger', batchLedgerColumns);

/**
 * The same tables qualified with a tenant's schema, for the query builder. Keys and indexes are
 * left out: they matter to migrations, which use the unqualified definitions above.
 */
export function tenantTables(schemaName: string) {
  const schema = pgSchema(schemaName);
  return {
    auditEvents: schema.table('audit_events', auditEventColumns),
    batchLedger: schema.table('batch_ledger', batchLedgerColumns),
  };
}
export type TenantTables = ReturnType<typeof tenantTables>;
