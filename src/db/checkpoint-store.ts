import type { Checkpoint } from '../domain/checkpoint.js';
import { type TenantId, tenantSchema } from '../domain/tenant.js';
import type { Sql } from './client.js';
import { chainCheckpoints, columnList } from './tenant-tables.js';

/** A chain head that moved past its month's newest checkpoint (or has none yet). */
export interface MovedHead {
  month: Date;
  seq: number;
  hash: Buffer;
  /** Position of the month's newest checkpoint; null when the month has none. */
  signedSeq: number | null;
}

/** A month's chain at one moment: its head and its newest signed checkpoint. */
export interface ChainMonthSnapshot {
  month: Date;
  headSeq: number;
  /** The newest signed checkpoint of the month, if any. */
  checkpoint: Checkpoint | null;
}

/** Every column of `chain_checkpoints`: each is a part of the checkpoint the decoder makes. */
const COLUMNS = columnList(chainCheckpoints);

/**
 * A `chain_checkpoints` row as the drivers return it: `pg` gives bigint as text, PGlite gives
 * bytea as Uint8Array; either may give timestamps as Date or text.
 */
interface CheckpointRow {
  month: Date | string;
  seq: string | number;
  hash: Uint8Array;
  signed_at: Date | string;
  key_id: string;
  signature: Uint8Array;
}

/** The one decoder of a `chain_checkpoints` row. */
function checkpointOf(tenant: TenantId, r: CheckpointRow): Checkpoint {
  return {
    tenant,
    month: new Date(r.month),
    seq: Number(r.seq),
    hash: Buffer.from(r.hash),
    signedAt: new Date(r.signed_at),
    keyId: r.key_id,
    signature: Buffer.from(r.signature),
  };
}

/**
 * Every statement on a tenant's `chain_checkpoints` (append-only: rows are inserted, never
 * changed). Statements that must run inside a caller's transaction take its `Sql`.
 */
export class CheckpointStore {
  constructor(private readonly db: Sql) {}

  /** Stored checkpoints of a tenant, oldest month and position first; optionally one month. */
  async list(tenant: TenantId, month?: Date): Promise<Checkpoint[]> {
    const schema = tenantSchema(tenant);
    const rows = month
      ? await this.db.query<CheckpointRow>(
          `/* checkpoints.list_month */
           select ${COLUMNS} from "${schema}".chain_checkpoints
            where month = $1 order by month, seq`,
          [month.toISOString()],
        )
      : await this.db.query<CheckpointRow>(
          `/* checkpoints.list */
           select ${COLUMNS} from "${schema}".chain_checkpoints order by month, seq`,
        );
    return rows.map((r) => checkpointOf(tenant, r));
  }

  /** The month's checkpoint at its highest position, or null; `sql` may be a transaction. */
  async newest(tenant: TenantId, month: Date, sql: Sql = this.db): Promise<Checkpoint | null> {
    const [row] = await sql.query<CheckpointRow>(
      `/* checkpoints.newest */
       select ${COLUMNS} from "${tenantSchema(tenant)}".chain_checkpoints
        where month = $1 order by seq desc limit 1`,
      [month.toISOString()],
    );
    return row ? checkpointOf(tenant, row) : null;
  }

  /**
   * Stores the tenant's `c` unless its month and position have one; true when stored. The
   * columns are named beside their values, so a column added later (with its default) leaves
   * this statement as it is.
   */
  async insert(tenant: TenantId, c: Checkpoint): Promise<boolean> {
    const inserted = await this.db.query(
      `/* checkpoints.insert */
       insert into "${tenantSchema(tenant)}".chain_checkpoints
         (month, seq, hash, signed_at, key_id, signature)
       values ($1, $2, decode($3, 'hex'), $4, $5, decode($6, 'hex'))
       on conflict do nothing returning seq`,
      [
        c.month.toISOString(),
        c.seq,
        c.hash.toString('hex'),
        c.signedAt.toISOString(),
        c.keyId,
        c.signature.toString('hex'),
      ],
    );
    return inserted.length > 0;
  }

  /** Chain heads with events that no checkpoint covers yet, oldest month first. */
  async movedHeads(tenant: TenantId): Promise<MovedHead[]> {
    const schema = tenantSchema(tenant);
    const rows = await this.db.query<{
      month: Date | string;
      seq: string | number;
      hash: Uint8Array;
      signed_seq: string | number | null;
    }>(
      `/* checkpoints.moved_heads */
       select h.month, h.seq, h.hash,
              (select max(c.seq) from "${schema}".chain_checkpoints c where c.month = h.month)
                as signed_seq
         from "${schema}".chain_heads h
        where h.seq > 0 and h.hash is not null
          and not exists (select 1 from "${schema}".chain_checkpoints c
                           where c.month = h.month and c.seq >= h.seq)
        order by h.month`,
    );
    return rows.map((r) => ({
      month: new Date(r.month),
      seq: Number(r.seq),
      hash: Buffer.from(r.hash),
      signedSeq: r.signed_seq === null ? null : Number(r.signed_seq),
    }));
  }

  /** Months in [from, to) that have a chain head or a checkpoint (unordered). */
  async chainMonths(tenant: TenantId, from: Date, to: Date): Promise<Date[]> {
    const schema = tenantSchema(tenant);
    const rows = await this.db.query<{ month: Date | string }>(
      `/* verify.months */
       select month from "${schema}".chain_heads where month >= $1 and month < $2
       union select month from "${schema}".chain_checkpoints where month >= $1 and month < $2`,
      [from.toISOString(), to.toISOString()],
    );
    return rows.map((r) => new Date(r.month));
  }

  /**
   * Each month's chain as it stands: its head (last position written) and its newest signed
   * checkpoint, oldest month first. Only months with a head: retention deletes a dropped month's
   * head (its checkpoints stay, append-only, and must not make an export expect its events).
   * The newest checkpoint is found through the (month, seq) key per month, not by reading them all.
   */
  async chainSnapshot(tenant: TenantId): Promise<ChainMonthSnapshot[]> {
    const schema = tenantSchema(tenant);
    const rows = await this.db.query<
      { head_month: Date | string; head_seq: string | number } & (
        | CheckpointRow
        | { [K in keyof CheckpointRow]: null }
      )
    >(
      `/* export.chain_snapshot */
       select h.month as head_month, h.seq as head_seq, c.*
         from "${schema}".chain_heads h
         left join lateral (
           select ${COLUMNS} from "${schema}".chain_checkpoints c
            where c.month = h.month order by c.seq desc limit 1) c on true
        where h.seq > 0
        order by h.month`,
    );
    return rows.map((r) => ({
      month: new Date(r.head_month),
      headSeq: Number(r.head_seq),
      checkpoint: r.seq === null ? null : checkpointOf(tenant, r),
    }));
  }
}
