import { isDeepStrictEqual } from 'node:util';
import { type Database, type Sql, sqlState } from '../db/client.js';
import type { PartitionManager } from '../db/partitions.js';
import { type AuditEventRecord, eventKey } from '../domain/event.js';
import type { Logger } from '../logger.js';
import { classifyWriteError, describeWriteError } from './failure-classifier.js';

/** REJECTED: the database refused this row (a data error, isolated from the rest of its batch). */
export type WriteStatus = 'STORED' | 'DUPLICATE' | 'REJECTED';

export interface RowRejection {
  sqlState: string | null;
  message: string;
}

export interface BatchWriteResult {
  /** One status per record, in the order given. */
  statuses: WriteStatus[];
  /** Why each REJECTED record (by position) was refused. */
  rejections: Map<number, RowRejection>;
  /** Duplicates whose content differs from the stored event (the stored event wins). */
  conflicts: number;
  /** True when the batch id was already in the ledger: an earlier attempt had committed. */
  alreadyCommitted: boolean;
}

const COLUMNS = [
  ['id', 'uuid'],
  ['occurred_at', 'timestamptz'],
  ['received_at', 'timestamptz'],
  ['event_type', 'text'],
  ['category', 'text'],
  ['action', 'text'],
  ['outcome', 'text'],
  ['correlation_id', 'text'],
  ['actor_type', 'text'],
  ['actor_id', 'text'],
  ['actor_ip', 'text'],
  ['resource_type', 'text'],
  ['resource_id', 'text'],
  ['resource_name', 'text'],
  ['parent_event_id', 'uuid'],
  ['severity', 'text'],
  ['duration_ms', 'int4'],
  ['error_code', 'text'],
  ['error_message', 'text'],
  ['namespace', 'text'],
  ['cluster_id', 'text'],
  ['trace_id', 'text'],
  ['span_id', 'text'],
  ['data', 'jsonb'],
] as const;

function columnArrays(records: readonly AuditEventRecord[]): unknown[][] {
  const cols: unknown[][] = COLUMNS.map(() => new Array(records.length));
  records.forEach((r, i) => {
    const values = [
      r.id,
      r.occurredAt.toISOString(),
      r.receivedAt.toISOString(),
      r.eventType,
      r.category,
      r.action,
      r.outcome,
      r.correlationId,
      r.actorType,
      r.actorId,
      r.actorIp,
      r.resourceType,
      r.resourceId,
      r.resourceName,
      r.parentEventId,
      r.severity,
      r.durationMs,
      r.errorCode,
      r.errorMessage,
      r.namespace,
      r.clusterId,
      r.traceId,
      r.spanId,
      r.dataJson,
    ];
    values.forEach((v, c) => {
      cols[c]![i] = v;
    });
  });
  return cols;
}

/**
 * Writes one batch of one tenant in one transaction: a single `INSERT … SELECT FROM unnest(…)`
 * (a fixed 26 bind parameters whatever the batch size, so the 65,535-parameter cap never
 * applies), `ON CONFLICT DO NOTHING` for idempotency, and the batch id into the ledger in the
 * same transaction. Partitions are ensured beforehand, outside the transaction.
 */
export class BatchWriter {
  constructor(
    private readonly db: Database,
    private readonly partitions: PartitionManager,
    private readonly log: Logger,
    private readonly instanceId: string,
  ) {}

  /**
   * Writes the batch. A data error (SQLSTATE class 22/23) never condemns the batch: the write is
   * redone in one transaction that bisects the rows under savepoints, stores every good row and
   * reports the bad ones as REJECTED with their error — all under the same ledger entry, so the
   * good rows, the ledger row and the rejections commit together or not at all.
   * Anything else (connection lost, lock timeout, …) is thrown for the caller to retry.
   */
  async write(
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
  ): Promise<BatchWriteResult> {
    const dates = records.map((r) => r.occurredAt);
    await this.partitions.ensureFor(schema, dates);
    let result: BatchWriteResult;
    try {
      result = await this.insert(schema, batchId, records, false);
    } catch (err) {
      const kind = classifyWriteError(err);
      if (kind === 'missing-partition') {
        // A partition this process believed in is gone (dropped by retention elsewhere): learn
        // again and retry once; a second failure goes to the caller's retry path.
        this.partitions.forget(schema);
        await this.partitions.ensureFor(schema, dates);
        result = await this.insert(schema, batchId, records, false);
      } else if (kind === 'data') {
        this.log.warn(
          { schema, batchId, error: describeWriteError(err) },
          'batch has rows the database rejects; isolating them',
        );
        result = await this.insert(schema, batchId, records, true);
      } else {
        throw err;
      }
    }
    if (result.statuses.includes('DUPLICATE') && !result.alreadyCommitted) {
      result.conflicts = await this.countConflicts(schema, records, result.statuses);
    }
    return result;
  }

  private insert(
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    isolate: boolean,
  ): Promise<BatchWriteResult> {
    return this.db.transaction(async (tx) => {
      const previous = await this.ledgerLookup(tx, schema, batchId, records.length);
      if (previous) return previous;
      const rejections = new Map<number, RowRejection>();
      const positions = records.map((_, i) => i);
      const rows = isolate
        ? await this.insertIsolating(tx, schema, batchId, records, positions, rejections)
        : await this.insertRows(tx, schema, batchId, records);
      const inserted = new Set(rows.map((r) => eventKey(r.id, new Date(r.occurred_at))));
      const statuses: WriteStatus[] = [];
      const duplicatePositions: number[] = [];
      records.forEach((r, i) => {
        const key = eventKey(r.id, r.occurredAt);
        // The first occurrence of a key inserted claims STORED; any repeat is a duplicate.
        if (rejections.has(i)) statuses.push('REJECTED');
        else if (inserted.delete(key)) statuses.push('STORED');
        else {
          statuses.push('DUPLICATE');
          duplicatePositions.push(i);
        }
      });
      // A batch whose every row was refused committed nothing: leaving it out of the ledger lets
      // a later replay under the same id (after the cause is fixed) be judged afresh.
      if (rejections.size === records.length) {
        return { statuses, rejections, conflicts: 0, alreadyCommitted: false };
      }
      await tx.query(
        `/* ingest.ledger_insert */
         insert into "${schema}".batch_ledger
           (batch_id, event_count, stored_count, duplicate_positions, rejected_positions, instance_id)
         values ($1, $2, $3, $4::int4[], $5::int4[], $6)`,
        [
          batchId,
          records.length,
          rows.length,
          duplicatePositions,
          [...rejections.keys()],
          this.instanceId,
        ],
      );
      return { statuses, rejections, conflicts: 0, alreadyCommitted: false };
    });
  }

  private insertRows(
    tx: Sql,
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
  ): Promise<{ id: string; occurred_at: Date }[]> {
    const names = COLUMNS.map(([name]) => name).join(', ');
    const unnest = COLUMNS.map(([, type], i) => `$${i + 1}::${type}[]`).join(', ');
    const batchParam = COLUMNS.length + 1;
    return tx.query<{ id: string; occurred_at: Date }>(
      `/* ingest.insert_batch */
       insert into "${schema}".audit_events (${names}, batch_id)
       select u.*, $${batchParam}::uuid from unnest(${unnest}) as u
       on conflict do nothing
       returning id, occurred_at`,
      [...columnArrays(records), batchId],
    );
  }

  /** Inserts `positions` under a savepoint; on a data error, splits them until each bad row is alone. */
  private async insertIsolating(
    tx: Sql,
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    positions: number[],
    rejections: Map<number, RowRejection>,
  ): Promise<{ id: string; occurred_at: Date }[]> {
    await tx.query('savepoint isolate');
    try {
      const rows = await this.insertRows(
        tx,
        schema,
        batchId,
        positions.map((p) => records[p]!),
      );
      await tx.query('release savepoint isolate');
      return rows;
    } catch (err) {
      await tx.query('rollback to savepoint isolate');
      await tx.query('release savepoint isolate');
      if (classifyWriteError(err) !== 'data') throw err;
      if (positions.length === 1) {
        rejections.set(positions[0]!, {
          sqlState: sqlState(err) ?? null,
          message: describeWriteError(err),
        });
        return [];
      }
      const mid = positions.length >> 1;
      const left = await this.insertIsolating(
        tx,
        schema,
        batchId,
        records,
        positions.slice(0, mid),
        rejections,
      );
      const right = await this.insertIsolating(
        tx,
        schema,
        batchId,
        records,
        positions.slice(mid),
        rejections,
      );
      return [...left, ...right];
    }
  }

  private async ledgerLookup(
    tx: Sql,
    schema: string,
    batchId: string,
    size: number,
  ): Promise<BatchWriteResult | null> {
    const [row] = await tx.query<{ duplicate_positions: number[]; rejected_positions: number[] }>(
      `/* ingest.ledger_lookup */
       select duplicate_positions, rejected_positions from "${schema}".batch_ledger where batch_id = $1`,
      [batchId],
    );
    if (!row) return null;
    const dup = new Set(row.duplicate_positions);
    const rejections = new Map<number, RowRejection>(
      row.rejected_positions.map((p) => [
        p,
        { sqlState: null, message: 'rejected by the database in an earlier attempt of this batch' },
      ]),
    );
    const statuses = Array.from(
      { length: size },
      (_, i): WriteStatus => (rejections.has(i) ? 'REJECTED' : dup.has(i) ? 'DUPLICATE' : 'STORED'),
    );
    this.log.info(
      { schema, batchId },
      'batch already committed by an earlier attempt; not written again',
    );
    return { statuses, rejections, conflicts: 0, alreadyCommitted: true };
  }

  /** Counts (and logs) duplicates whose content differs from what is stored. Best effort. */
  private async countConflicts(
    schema: string,
    records: readonly AuditEventRecord[],
    statuses: readonly WriteStatus[],
  ): Promise<number> {
    const dups = records.filter((_, i) => statuses[i] === 'DUPLICATE');
    try {
      const stored = await this.db.query<Record<string, unknown>>(
        `/* ingest.duplicate_compare */
         select e.* from "${schema}".audit_events e
         join unnest($1::timestamptz[], $2::uuid[]) as k(occurred_at, id)
           on e.occurred_at = k.occurred_at and e.id = k.id`,
        [dups.map((r) => r.occurredAt.toISOString()), dups.map((r) => r.id)],
      );
      const byKey = new Map(
        stored.map((row) => [eventKey(row.id as string, new Date(row.occurred_at as Date)), row]),
      );
      const conflicting: string[] = [];
      for (const r of dups) {
        const row = byKey.get(eventKey(r.id, r.occurredAt));
        if (row && !sameContent(r, row)) conflicting.push(r.id);
      }
      if (conflicting.length) {
        this.log.warn(
          { schema, ids: conflicting.slice(0, 20), count: conflicting.length },
          'duplicate event ids with different content; the stored events were kept',
        );
      }
      return conflicting.length;
    } catch (err) {
      this.log.warn({ err, schema }, 'could not compare duplicates with stored events');
      return 0;
    }
  }
}

function sameContent(r: AuditEventRecord, row: Record<string, unknown>): boolean {
  const fields: [unknown, unknown][] = [
    [r.eventType, row.event_type],
    [r.category, row.category],
    [r.action, row.action],
    [r.outcome, row.outcome],
    [r.correlationId, row.correlation_id],
    [r.actorType, row.actor_type],
    [r.actorId, row.actor_id],
    [r.actorIp, row.actor_ip],
    [r.resourceType, row.resource_type],
    [r.resourceId, row.resource_id],
    [r.resourceName, row.resource_name],
    [r.parentEventId, row.parent_event_id],
    [r.severity, row.severity],
    [r.durationMs, row.duration_ms],
    [r.errorCode, row.error_code],
    [r.errorMessage, row.error_message],
    [r.namespace, row.namespace],
    [r.clusterId, row.cluster_id],
    [r.traceId, row.trace_id],
    [r.spanId, row.span_id],
  ];
  if (fields.some(([a, b]) => (a ?? null) !== (b ?? null))) return false;
  const data = r.dataJson === null ? null : JSON.parse(r.dataJson);
  return isDeepStrictEqual(data, row.data ?? null);
}
