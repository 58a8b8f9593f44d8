import { getTableColumns, sql } from 'drizzle-orm';
import {
  bigint,
  bytea,
  check,
  index,
  integer,
  jsonb,
  type PgTable,
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
  /**
   * Position in the month's hash chain (1, 2, …), in commit order; `prev_hash` is the hash of the
   * event before it (or the month's genesis hash) and `hash` = SHA-256(prev_hash || JCS(event)).
   * Null `hash` only when written with CHAIN_HASHING=off.
   */
  chainSeq: bigint('chain_seq', { mode: 'number' }),
  prevHash: bytea('prev_hash'),
  hash: bytea('hash'),
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
  // Partition-local: a month's chain is read in order by walking this index of its partition.
  index('audit_events_chain_idx').on(t.chainSeq),
  check('audit_events_outcome_check', sql`${t.outcome} in ('SUCCESS', 'FAILURE', 'PENDING')`),
  check('audit_events_duration_check', sql`${t.durationMs} >= 0`),
]);

/** A table's column names in definition order, comma-separated: a SELECT or RETURNING list. */
export function columnList(table: PgTable): string {
  return Object.values(getTableColumns(table))
    .map((c) => c.name)
    .join(', ');
}

/** `audit_events`' columns (SQL name, type, nullability) by field name, as defined above. */
export const auditEventColumnsByField = getTableColumns(auditEvents);

/** Columns the batch writer fills itself: the batch, and the row's place in its month's chain. */
const WRITER_FIELDS = ['batchId', 'chainSeq', 'prevHash', 'hash'] as const;

/** A field of an event as a client or the service sends it (one column each). */
export type EventField = Exclude<
  keyof typeof auditEventColumnsByField,
  (typeof WRITER_FIELDS)[number]
>;

/**
 * The event's own fields, in table order: the columns of `audit_events` but the writer's
 * bookkeeping. A column added to the table joins every list made from this one.
 */
export const EVENT_FIELDS: readonly EventField[] = (
  Object.keys(auditEventColumnsByField) as (keyof typeof auditEventColumnsByField)[]
).filter((f): f is EventField => !(WRITER_FIELDS as readonly string[]).includes(f));

const eventIdColumns = {
  id: uuid('id').primaryKey(),
  /** Where the event with this id is stored: its look-up by id is exact (one partition). */
  occurredAt: ts('occurred_at').notNull(),
};

/**
 * Every stored event's id, once per tenant. A partitioned table's unique keys must include the
 * partition column, so `audit_events` alone can only make (occurred_at, id) unique; this table's
 * primary key makes the id itself unique across months. The batch writer claims its ids here in
 * the same transaction as it stores the events (an id already claimed is a duplicate, whatever
 * its occurredAt), and retention removes a month's ids when it drops the month.
 */
export const eventIds = pgTable('event_ids', eventIdColumns);

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

const journalSettlementColumns = {
  /** The journal entry (one BUFFERED call) some of whose events this batch settled. */
  entryId: uuid('entry_id').notNull(),
  batchId: uuid('batch_id').notNull(),
  /** Places in the entry's call of the events the batch stored or found duplicate. */
  positions: integer('positions').array().notNull(),
  committedAt: ts('committed_at').notNull().defaultNow(),
};

/**
 * What committed batches settled of each journal entry, written in the batch's transaction. A
 * process killed after a commit but before its journal let go of the entry leaves it to
 * recovery, which replays only the places not listed here: an event is stored once and counted
 * once, never come back as its own duplicate. Rows older than a week are removed by maintenance.
 */
export const journalSettlements = pgTable('journal_settlements', journalSettlementColumns, (t) => [
  primaryKey({ name: 'journal_settlements_pkey', columns: [t.entryId, t.batchId] }),
]);

const chainHeadColumns = {
  /** First instant of the UTC month: one chain per month partition. */
  month: ts('month').primaryKey(),
  /** Last position written; 0 before the first event. */
  seq: bigint('seq', { mode: 'number' }).notNull(),
  /** Hash of the event at `seq`; null before the first event (the genesis hash is derived). */
  hash: bytea('hash'),
  updatedAt: ts('updated_at').notNull().defaultNow(),
};

/**
 * The head of each month's chain. A batch locks the heads of its months once (in month order),
 * appends, and moves them. It is bookkeeping, not evidence: signed checkpoints are the evidence.
 */
export const chainHeads = pgTable('chain_heads', chainHeadColumns);

const chainCheckpointColumns = {
  month: ts('month').notNull(),
  seq: bigint('seq', { mode: 'number' }).notNull(),
  hash: bytea('hash').notNull(),
  signedAt: ts('signed_at').notNull(),
  /** SHA-256 of the signing public key (SPKI DER), hex. */
  keyId: varchar('key_id', { length: 64 }).notNull(),
  /** Ed25519 signature over the checkpoint's canonical (JCS) statement. */
  signature: bytea('signature').notNull(),
};

/** Signed statements "month M's chain had hash H at position N"; append-only. */
export const chainCheckpoints = pgTable('chain_checkpoints', chainCheckpointColumns, (t) => [
  primaryKey({ name: 'chain_checkpoints_pkey', columns: [t.month, t.seq] }),
]);

const legalHoldColumns = {
  id: uuid('id').primaryKey(),
  /** A hold covers the events of one correlation id, or every event in a time range. */
  correlationId: varchar('correlation_id', { length: 255 }),
  occurredFrom: ts('occurred_from'),
  occurredTo: ts('occurred_to'),
  reason: varchar('reason', { length: 1000 }).notNull(),
  placedAt: ts('placed_at').notNull().defaultNow(),
  placedBy: varchar('placed_by', { length: 200 }).notNull(),
  releasedAt: ts('released_at'),
  releasedBy: varchar('released_by', { length: 200 }),
  releaseReason: varchar('release_reason', { length: 1000 }),
};

/** Legal holds: while active, retention keeps every month holding a covered event. */
export const legalHolds = pgTable('legal_holds', legalHoldColumns, (t) => [
  check(
    'legal_holds_scope_check',
    sql`${t.correlationId} is not null or (${t.occurredFrom} is not null and ${t.occurredTo} is not null)`,
  ),
]);

/**
 * The same tables qualified with a tenant's schema, for the query builder. Keys and indexes are
 * left out: they matter to migrations, which use the unqualified definitions above.
 */
export function tenantTables(schemaName: string) {
  const schema = pgSchema(schemaName);
  return {
    auditEvents: schema.table('audit_events', auditEventColumns),
    eventIds: schema.table('event_ids', eventIdColumns),
    batchLedger: schema.table('batch_ledger', batchLedgerColumns),
    journalSettlements: schema.table('journal_settlements', journalSettlementColumns),
    chainHeads: schema.table('chain_heads', chainHeadColumns),
    chainCheckpoints: schema.table('chain_checkpoints', chainCheckpointColumns),
    legalHolds: schema.table('legal_holds', legalHoldColumns),
  };
}
export type TenantTables = ReturnType<typeof tenantTables>;
