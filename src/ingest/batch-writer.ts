import { isDeepStrictEqual } from 'node:util';
import { type Database, type Sql, sqlState } from '../db/client.js';
import type { MonthRefusal, PartitionManager } from '../db/partitions.js';
import { auditEventColumnsByField, EVENT_FIELDS, type EventField } from '../db/tenant-tables.js';
import {
  ChainHasher,
  canonicalEvent,
  canonicalEventWithData,
  chainMonth,
  genesisHash,
} from '../domain/chain.js';
import { type AuditEventRecord, eventKey } from '../domain/event.js';
import { tenantOfSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import { classifyWriteError, describeWriteError } from './failure-classifier.js';
import type { JournalRef } from './journal/journal.js';

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
  /**
   * Each STORED record's position in its month's chain (by position in the batch; null for the
   * others). Absent when an earlier attempt committed the batch: the ledger keeps no positions.
   */
  chainSeqs?: (number | null)[];
}

/** One event column as the writer binds it: a parameter array of `type`, one value per row. */
interface BoundColumn {
  field: EventField;
  name: string;
  /** The array's element type: text for varchar, so a value too long is refused, not cut. */
  type: string;
  /** The record's value as bound (timestamps as ISO text, `data` as its JSON text). */
  value: (r: AuditEventRecord) => unknown;
  /** A stored value in the form `value` gives, for comparing a duplicate with what is stored. */
  stored: (v: unknown) => unknown;
}

/** The element type of a parameter array for a column of SQL type `sqlType`. */
function arrayType(sqlType: string): string {
  if (sqlType.startsWith('varchar')) return 'text';
  if (sqlType.startsWith('timestamp') && sqlType.endsWith('with time zone')) return 'timestamptz';
  if (sqlType === 'integer') return 'int4';
  if (sqlType === 'uuid' || sqlType === 'jsonb') return sqlType;
  throw new Error(`the batch writer cannot bind a column of type ${sqlType}`);
}

/** The event's columns, from the table definition, in table order. */
const COLUMNS: readonly BoundColumn[] = EVENT_FIELDS.map((field): BoundColumn => {
  const column = auditEventColumnsByField[field];
  const type = arrayType(column.getSQLType());
  const same = (v: unknown) => v;
  if (field === 'data') {
    return { field, name: column.name, type, value: (r) => r.dataJson, stored: same };
  }
  if (type === 'timestamptz') {
    return {
      field,
      name: column.name,
      type,
      value: (r) => (r[field] as Date).toISOString(),
      stored: (v) => new Date(v as Date | string).toISOString(),
    };
  }
  return { field, name: column.name, type, value: (r) => r[field], stored: same };
});

/** The chain columns of the rows a batch stores: bytea travels as hex text (pg and PGlite alike). */
interface ChainColumns {
  seq: number[];
  prevHash: (string | null)[];
  hash: (string | null)[];
}

/** The hashed fields of a record, as the chain sees them. */
export function chainedFieldsOf(r: AuditEventRecord) {
  return { ...r, data: r.dataJson === null ? null : JSON.parse(r.dataJson) };
}

/** A record's canonical JSON bytes; its `data` text is used as is when already canonical. */
export function canonicalRecord(r: AuditEventRecord): Buffer {
  return r.dataCanonical
    ? canonicalEventWithData(r, r.dataJson)
    : canonicalEvent(chainedFieldsOf(r));
}

function columnArrays(records: readonly AuditEventRecord[]): unknown[][] {
  return COLUMNS.map((c) => records.map(c.value));
}

/** How the writer chains what it stores. */
export interface ChainOptions {
  /** Compute hashes (CHAIN_HASHING). Off: positions are still assigned, hashes left null. */
  hashing: boolean;
  /** Keys the chain with HMAC-SHA-256 (CHAIN_HMAC_SECRET). */
  hmacSecret?: string | undefined;
}

interface Head {
  seq: number;
  /** Hash of the event at `seq`; the genesis hash when the chain is empty. */
  hash: Buffer | null;
}

/**
 * Writes one batch of one tenant in one transaction: the heads of the batch's month chains are
 * locked once (in month order, so two writers cannot deadlock), the rows already stored are
 * found under that lock, each new row gets its chain position and hash, and a single
 * `INSERT … SELECT FROM unnest(…)` stores them (a fixed number of bind parameters whatever the
 * batch size), with the batch id into the ledger in the same transaction. Partitions are ensured
 * beforehand, outside the transaction, and canonical JSON is computed before the lock is taken,
 * so the lock is held only for the hashing itself (two SHA-256 blocks per event) and the insert.
 */
export class BatchWriter {
  private readonly hasher: ChainHasher;
  private readonly hashing: boolean;

  constructor(
    private readonly db: Database,
    private readonly partitions: PartitionManager,
    private readonly log: Logger,
    private readonly instanceId: string,
    chain: ChainOptions = { hashing: true },
  ) {
    this.hasher = new ChainHasher(chain.hmacSecret);
    this.hashing = chain.hashing;
  }

  /**
   * Writes the batch. A data error (SQLSTATE class 22/23) never condemns the batch: the write is
   * redone in one transaction that first finds the bad rows by bisecting under savepoints (each
   * probe rolled back), then chains and stores every good row and reports the bad ones as
   * REJECTED with their error — all under the same ledger entry, so the good rows, the ledger
   * row and the rejections commit together or not at all, and no rejected row holds a place in
   * the chain. Anything else (connection lost, lock timeout, …) is thrown for the caller to retry.
   */
  async write(
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    /** Each record's place in the journal (null: not journaled), recorded with the commit. */
    journal?: readonly (JournalRef | null)[],
  ): Promise<BatchWriteResult> {
    const dates = records.map((r) => r.occurredAt);
    let dropped = this.refuseDropped(records, await this.partitions.ensureFor(schema, dates));
    const canonical = this.hashing ? records.map(canonicalRecord) : undefined;
    let result: BatchWriteResult;
    try {
      result = await this.insert(schema, batchId, records, canonical, false, dropped, journal);
    } catch (err) {
      const kind = classifyWriteError(err);
      if (kind === 'missing-partition') {
        // A partition this process believed in is gone (dropped by retention elsewhere): learn
        // again and retry once; a second failure goes to the caller's retry path.
        this.partitions.forget(schema);
        dropped = this.refuseDropped(records, await this.partitions.ensureFor(schema, dates));
        result = await this.insert(schema, batchId, records, canonical, false, dropped, journal);
      } else if (kind === 'data') {
        this.log.warn(
          { schema, batchId, error: describeWriteError(err) },
          'batch has rows the database rejects; isolating them',
        );
        result = await this.insert(schema, batchId, records, canonical, true, dropped, journal);
      } else {
        throw err;
      }
    }
    if (dropped.size > 0) {
      this.log.warn(
        { schema, batchId, events: dropped.size },
        'events of months without a partition (dropped by retention, or past the ceiling) refused; they go to the dead-letter queue',
      );
    }
    if (result.statuses.includes('DUPLICATE') && !result.alreadyCommitted) {
      result.conflicts = await this.countConflicts(schema, records, result.statuses);
    }
    return result;
  }

  /**
   * Rejections (by position) of the records whose month gets no partition: dropped by
   * retention, or past the tenant's partition ceiling (a write admitted on another instance at
   * the same moment, or a dead letter replayed later).
   */
  private refuseDropped(
    records: readonly AuditEventRecord[],
    refusedMonths: Map<number, MonthRefusal>,
  ): Map<number, RowRejection> {
    const refused = new Map<number, RowRejection>();
    if (refusedMonths.size === 0) return refused;
    records.forEach((r, i) => {
      const month = chainMonth(r.occurredAt);
      const why = refusedMonths.get(month.getTime());
      if (why) {
        const name = month.toISOString().slice(0, 7);
        refused.set(i, {
          sqlState: null,
          message:
            why === 'dropped'
              ? `month ${name} was dropped by retention; its events can no longer be stored`
              : `month ${name} has no partition and the tenant is at MAX_PARTITIONS_PER_TENANT`,
        });
      }
    });
    return refused;
  }

  private insert(
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    canonical: readonly Buffer[] | undefined,
    isolate: boolean,
    refused: ReadonlyMap<number, RowRejection>,
    journal: readonly (JournalRef | null)[] | undefined,
  ): Promise<BatchWriteResult> {
    return this.db.transaction(async (tx) => {
      const rejections = new Map<number, RowRejection>(refused);
      const all = records.map((_, i) => i).filter((i) => !refused.has(i));
      if (isolate) await this.findRejections(tx, schema, batchId, records, all, rejections);
      const candidates = all.filter((i) => !rejections.has(i));
      // The chain lock comes first: a retry of a batch whose COMMIT outcome was unknown waits
      // here for that earlier attempt, then finds it in the ledger.
      const heads = await this.lockHeads(
        tx,
        schema,
        candidates.map((i) => records[i]!.occurredAt),
      );
      const previous = await this.ledgerLookup(tx, schema, batchId, records.length);
      if (previous) return previous;
      // An id is one event per tenant: only the first occurrence of an id in the batch may
      // claim it, and only if no stored event holds it, whatever that event's occurredAt.
      const firstOf = new Map<string, number>();
      for (const i of candidates) {
        if (!firstOf.has(records[i]!.id)) firstOf.set(records[i]!.id, i);
      }
      const claimed = await this.claimIds(
        tx,
        schema,
        [...firstOf.values()].map((i) => records[i]!),
      );
      const stored = await this.findStored(
        tx,
        schema,
        candidates.map((i) => records[i]!),
      );
      const { statuses, duplicatePositions, fresh } = classifyRows(
        records,
        rejections,
        firstOf,
        claimed,
        stored,
      );
      // A batch whose every row was refused committed nothing: leaving it out of the ledger lets
      // a later replay under the same id (after the cause is fixed) be judged afresh.
      if (rejections.size === records.length) {
        return { statuses, rejections, conflicts: 0, alreadyCommitted: false };
      }
      const chainSeqs: (number | null)[] = records.map(() => null);
      if (fresh.length > 0) {
        const chain = this.chain(schema, records, fresh, heads, canonical);
        fresh.forEach((i, k) => {
          chainSeqs[i] = chain.seq[k]!;
        });
        const rows = await this.insertRows(
          tx,
          schema,
          batchId,
          fresh.map((i) => records[i]!),
          chain,
        );
        if (rows.length !== fresh.length) {
          // Cannot happen while every writer takes the chain lock; if it does, write nothing.
          throw new Error(
            `chain invariant: ${fresh.length} rows chained but ${rows.length} inserted in ${schema}`,
          );
        }
        await this.moveHeads(tx, schema, heads);
      }
      await this.recordInLedger(
        tx,
        schema,
        batchId,
        records.length,
        fresh.length,
        duplicatePositions,
        [...rejections.keys()],
      );
      if (journal) await this.recordSettlements(tx, schema, batchId, journal, statuses);
      return { statuses, rejections, conflicts: 0, alreadyCommitted: false, chainSeqs };
    });
  }

  /**
   * Links the fresh rows into their months' chains, in batch order, moving each month's head
   * (in memory; moveHeads writes them back): the seq, prev_hash and hash column of each row.
   */
  private chain(
    schema: string,
    records: readonly AuditEventRecord[],
    fresh: readonly number[],
    heads: Map<number, Head>,
    canonical: readonly Buffer[] | undefined,
  ): ChainColumns {
    const tenant = tenantOfSchema(schema);
    const chain: ChainColumns = { seq: [], prevHash: [], hash: [] };
    for (const i of fresh) {
      const month = chainMonth(records[i]!.occurredAt);
      const head = heads.get(month.getTime())!;
      head.seq += 1;
      chain.seq.push(head.seq);
      if (canonical) {
        const prev = head.hash ?? genesisHash(tenant, month);
        head.hash = this.hasher.link(prev, canonical[i]!);
        chain.prevHash.push(prev.toString('hex'));
        chain.hash.push(head.hash.toString('hex'));
      } else {
        chain.prevHash.push(null);
        chain.hash.push(null);
      }
    }
    return chain;
  }

  /** The batch's outcome, kept so that a retry under the same id is answered from it. */
  private async recordInLedger(
    tx: Sql,
    schema: string,
    batchId: string,
    events: number,
    stored: number,
    duplicatePositions: readonly number[],
    rejectedPositions: readonly number[],
  ): Promise<void> {
    await tx.query(
      `/* ingest.ledger_insert */
       insert into "${schema}".batch_ledger
         (batch_id, event_count, stored_count, duplicate_positions, rejected_positions, instance_id)
       values ($1, $2, $3, $4::int4[], $5::int4[], $6)`,
      [batchId, events, stored, duplicatePositions, rejectedPositions, this.instanceId],
    );
  }

  /**
   * For every journal entry the batch holds events of, the places of those it stored or found
   * duplicate (one statement), so that recovery after a kill replays only the rest.
   */
  private async recordSettlements(
    tx: Sql,
    schema: string,
    batchId: string,
    journal: readonly (JournalRef | null)[],
    statuses: readonly WriteStatus[],
  ): Promise<void> {
    const byEntry = new Map<string, number[]>();
    journal.forEach((ref, i) => {
      if (!ref || statuses[i] === 'REJECTED') return;
      const places = byEntry.get(ref.entry);
      if (places) places.push(ref.position);
      else byEntry.set(ref.entry, [ref.position]);
    });
    if (byEntry.size === 0) return;
    await tx.query(
      `/* ingest.journal_settlements_insert */
       insert into "${schema}".journal_settlements (entry_id, batch_id, positions)
       select e, $2, p::int4[] from unnest($1::uuid[], $3::text[]) as u(e, p)`,
      [[...byEntry.keys()], batchId, [...byEntry.values()].map((p) => `{${p.join(',')}}`)],
    );
  }

  /**
   * What committed batches settled of these journal entries: for each entry, the places of its
   * call that are stored (or were found duplicates).
   */
  async settledPositions(
    schema: string,
    entries: readonly string[],
  ): Promise<Map<string, Set<number>>> {
    const settled = new Map<string, Set<number>>();
    if (entries.length === 0) return settled;
    const rows = await this.db.query<{ entry_id: string; positions: number[] }>(
      `/* ingest.journal_settlements_lookup */
       select entry_id, positions from "${schema}".journal_settlements
       where entry_id = any($1::uuid[])`,
      [entries],
    );
    for (const row of rows) {
      const places = settled.get(row.entry_id) ?? new Set<number>();
      for (const p of row.positions) places.add(p);
      settled.set(row.entry_id, places);
    }
    return settled;
  }

  /**
   * Locks the chain heads of the months of `dates` (creating missing ones) in month order, in one
   * statement; returns them by month (epoch ms).
   */
  private async lockHeads(tx: Sql, schema: string, dates: readonly Date[]) {
    const months = [...new Set(dates.map((d) => chainMonth(d).getTime()))].sort((a, b) => a - b);
    const heads = new Map<number, Head>();
    if (months.length === 0) return heads;
    const rows = await tx.query<{ month: Date; seq: string | number; hash: Uint8Array | null }>(
      `/* ingest.chain_lock */
       insert into "${schema}".chain_heads as h (month, seq)
       select m, 0 from unnest($1::timestamptz[]) with ordinality as u(m, n) order by n
       on conflict (month) do update set updated_at = h.updated_at
       returning month, seq, hash`,
      [months.map((m) => new Date(m).toISOString())],
    );
    for (const r of rows) {
      heads.set(new Date(r.month).getTime(), {
        seq: Number(r.seq),
        hash: r.hash ? Buffer.from(r.hash) : null,
      });
    }
    return heads;
  }

  private async moveHeads(tx: Sql, schema: string, heads: Map<number, Head>): Promise<void> {
    const entries = [...heads.entries()];
    await tx.query(
      `/* ingest.chain_move */
       update "${schema}".chain_heads h
          set seq = v.seq, hash = decode(v.hash, 'hex'), updated_at = now()
         from unnest($1::timestamptz[], $2::int8[], $3::text[]) as v(month, seq, hash)
        where h.month = v.month`,
      [
        entries.map(([m]) => new Date(m).toISOString()),
        entries.map(([, h]) => h.seq),
        entries.map(([, h]) => h.hash?.toString('hex') ?? null),
      ],
    );
  }

  /**
   * Claims the ids of `records` (distinct ids) in the tenant's id table; returns the ids claimed
   * now. An id already there belongs to a stored event. The claim is the uniqueness: a second
   * transaction claiming the same id waits on the first one's row and, once that commits, finds
   * it taken — so two batches of different months (which share no chain lock), on any instance,
   * cannot both store an id. Claims are made in id order, so two batches waiting on each other's
   * ids cannot deadlock; they commit or roll back with the batch.
   */
  private async claimIds(
    tx: Sql,
    schema: string,
    records: readonly AuditEventRecord[],
  ): Promise<Set<string>> {
    if (records.length === 0) return new Set();
    const rows = await tx.query<{ id: string }>(
      `/* ingest.claim_ids */
       insert into "${schema}".event_ids (id, occurred_at)
       select u.id, u.occurred_at from unnest($1::uuid[], $2::timestamptz[]) as u(id, occurred_at)
       order by u.id
       on conflict (id) do nothing
       returning id`,
      [records.map((r) => r.id), records.map((r) => r.occurredAt.toISOString())],
    );
    return new Set(rows.map((r) => r.id));
  }

  /**
   * Keys of the given records that are already stored (read under the chain lock). The id table
   * answers for every event the writer stores; this exact look-up (pruned to the batch's months)
   * also covers rows written without it, e.g. by an older version during a rolling upgrade, so
   * an exact re-send of one is still a duplicate.
   */
  private async findStored(
    tx: Sql,
    schema: string,
    records: readonly AuditEventRecord[],
  ): Promise<Set<string>> {
    if (records.length === 0) return new Set();
    const times = records.map((r) => r.occurredAt.getTime());
    // The plain bounds let PostgreSQL prune to the batch's months at plan time; the join alone
    // would probe every partition's key index for every row.
    const rows = await tx.query<{ id: string; occurred_at: Date }>(
      `/* ingest.find_stored */
       select e.id, e.occurred_at from "${schema}".audit_events e
       join unnest($1::timestamptz[], $2::uuid[]) as k(occurred_at, id)
         on e.occurred_at = k.occurred_at and e.id = k.id
       where e.occurred_at >= $3::timestamptz and e.occurred_at <= $4::timestamptz`,
      [
        records.map((r) => r.occurredAt.toISOString()),
        records.map((r) => r.id),
        new Date(Math.min(...times)).toISOString(),
        new Date(Math.max(...times)).toISOString(),
      ],
    );
    return new Set(rows.map((r) => eventKey(r.id, new Date(r.occurred_at))));
  }

  private insertRows(
    tx: Sql,
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    chain: ChainColumns | null,
  ): Promise<{ id: string; occurred_at: Date }[]> {
    const names = COLUMNS.map((c) => c.name).join(', ');
    const unnest = COLUMNS.map((c, i) => `$${i + 1}::${c.type}[]`).join(', ');
    const n = COLUMNS.length;
    const chainParams = chain
      ? [chain.seq, chain.prevHash, chain.hash]
      : [records.map(() => null), records.map(() => null), records.map(() => null)];
    return tx.query<{ id: string; occurred_at: Date }>(
      `/* ingest.insert_batch */
       insert into "${schema}".audit_events (${names}, batch_id, chain_seq, prev_hash, hash)
       select ${COLUMNS.map((c) => `u.${c.name}`).join(', ')}, $${n + 1}::uuid,
              u.chain_seq, decode(u.prev_hash, 'hex'), decode(u.hash, 'hex')
       from unnest(${unnest}, $${n + 2}::int8[], $${n + 3}::text[], $${n + 4}::text[])
         as u(${names}, chain_seq, prev_hash, hash)
       on conflict do nothing
       returning id, occurred_at`,
      [...columnArrays(records), batchId, ...chainParams],
    );
  }

  /**
   * Finds the rows of `positions` the database refuses: inserts them under a savepoint and
   * always rolls back (a probe); on a data error, splits them until each bad row is alone.
   */
  private async findRejections(
    tx: Sql,
    schema: string,
    batchId: string,
    records: readonly AuditEventRecord[],
    positions: number[],
    rejections: Map<number, RowRejection>,
  ): Promise<void> {
    await tx.query('savepoint probe');
    let failure: unknown;
    try {
      await this.insertRows(
        tx,
        schema,
        batchId,
        positions.map((p) => records[p]!),
        null,
      );
    } catch (err) {
      failure = err;
    }
    await tx.query('rollback to savepoint probe');
    await tx.query('release savepoint probe');
    if (failure === undefined) return;
    if (classifyWriteError(failure) !== 'data') throw failure;
    if (positions.length === 1) {
      rejections.set(positions[0]!, {
        sqlState: sqlState(failure) ?? null,
        message: describeWriteError(failure),
      });
      return;
    }
    const mid = positions.length >> 1;
    await this.findRejections(tx, schema, batchId, records, positions.slice(0, mid), rejections);
    await this.findRejections(tx, schema, batchId, records, positions.slice(mid), rejections);
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
      // Where each id is stored (the id table), then those rows by their exact key: two look-ups
      // that each touch one index, where a join would plan over every month's partition.
      const places = await this.db.query<{ id: string; occurred_at: Date }>(
        `/* ingest.duplicate_places */
         select id, occurred_at from "${schema}".event_ids where id = any($1::uuid[])`,
        [[...new Set(dups.map((r) => r.id))]],
      );
      const times = places.map((p) => new Date(p.occurred_at).getTime());
      const stored =
        places.length === 0
          ? []
          : await this.db.query<Record<string, unknown>>(
              `/* ingest.duplicate_compare */
               select e.* from "${schema}".audit_events e
               join unnest($1::timestamptz[], $2::uuid[]) as k(occurred_at, id)
                 on e.occurred_at = k.occurred_at and e.id = k.id
               where e.occurred_at >= $3::timestamptz and e.occurred_at <= $4::timestamptz`,
              [
                places.map((p) => new Date(p.occurred_at).toISOString()),
                places.map((p) => p.id),
                new Date(Math.min(...times)).toISOString(),
                new Date(Math.max(...times)).toISOString(),
              ],
            );
      const byId = new Map(stored.map((row) => [row.id as string, row]));
      const conflicting: string[] = [];
      for (const r of dups) {
        // The same id under another occurredAt is another event: a conflict like any other change.
        const row = byId.get(r.id);
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

/**
 * Columns a duplicate is compared on: all but its id (the same by construction), when the
 * service received it (a re-send arrives later) and `data` (compared as parsed JSON).
 */
const COMPARED = COLUMNS.filter((c) => !['id', 'receivedAt', 'data'].includes(c.field));

function sameContent(r: AuditEventRecord, row: Record<string, unknown>): boolean {
  if (COMPARED.some((c) => (c.value(r) ?? null) !== (c.stored(row[c.name]) ?? null))) return false;
  const data = r.dataJson === null ? null : JSON.parse(r.dataJson);
  return isDeepStrictEqual(data, row.data ?? null);
}

/**
 * Each record's status: refused rows are REJECTED; a row is STORED when it is the first of its
 * id in the batch, claimed the id and no stored event has its (id, occurredAt); the rest are
 * DUPLICATE. Also the positions of the duplicates and of the fresh rows, in batch order.
 */
function classifyRows(
  records: readonly AuditEventRecord[],
  rejections: ReadonlyMap<number, RowRejection>,
  firstOf: ReadonlyMap<string, number>,
  claimed: ReadonlySet<string>,
  stored: ReadonlySet<string>,
): { statuses: WriteStatus[]; duplicatePositions: number[]; fresh: number[] } {
  const statuses: WriteStatus[] = [];
  const duplicatePositions: number[] = [];
  const fresh: number[] = [];
  records.forEach((r, i) => {
    if (rejections.has(i)) statuses.push('REJECTED');
    else if (
      firstOf.get(r.id) === i &&
      claimed.has(r.id) &&
      !stored.has(eventKey(r.id, r.occurredAt))
    ) {
      statuses.push('STORED');
      fresh.push(i);
    } else {
      statuses.push('DUPLICATE');
      duplicatePositions.push(i);
    }
  });
  return { statuses, duplicatePositions, fresh };
}
