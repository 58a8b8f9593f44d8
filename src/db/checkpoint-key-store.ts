import { createPublicKey } from 'node:crypto';
import type { TrustedKey } from '../domain/checkpoint.js';
import { CONTROL_SCHEMA } from '../domain/tenant.js';
import type { Sql } from './client.js';

interface KeyRow {
  key_id: string;
  public_key: string;
  trusted_from: Date | string;
  retired_at: Date | string | null;
  endorsed_by: string | null;
  endorsement: Uint8Array | null;
  retirement_notice: Uint8Array | null;
}

function keyOf(r: KeyRow): TrustedKey {
  return {
    keyId: r.key_id,
    publicKey: createPublicKey(r.public_key),
    publicKeyPem: r.public_key,
    trustedFrom: new Date(r.trusted_from),
    retiredAt: r.retired_at === null ? null : new Date(r.retired_at),
    endorsedBy: r.endorsed_by,
    endorsement: r.endorsement === null ? null : Buffer.from(r.endorsement),
    retirementNotice: r.retirement_notice === null ? null : Buffer.from(r.retirement_notice),
  };
}

/** Every statement on `auditgraph.checkpoint_keys`; those that must share a transaction take its `Sql`. */
export class CheckpointKeyStore {
  constructor(private readonly db: Sql) {}

  /** Every key the deployment has trusted, oldest first. */
  async list(sql: Sql = this.db): Promise<TrustedKey[]> {
    const rows = await sql.query<KeyRow>(
      `/* checkpointKeys.list */
       select key_id, public_key, trusted_from, retired_at, endorsed_by, endorsement,
              retirement_notice
         from ${CONTROL_SCHEMA}.checkpoint_keys order by trusted_from, key_id`,
    );
    return rows.map(keyOf);
  }

  /** The database's clock, to the millisecond the table keeps. */
  async now(tx: Sql): Promise<Date> {
    const [row] = await tx.query<{ now: Date | string }>(
      `/* checkpointKeys.now */ select date_trunc('milliseconds', clock_timestamp()) as now`,
    );
    return new Date(row!.now);
  }

  /**
   * Holds the table against other rotations and first registrations until `tx` ends (readers
   * are not blocked): a decision taken on what `list(tx)` read stays true until it commits.
   */
  async lock(tx: Sql): Promise<void> {
    await tx.query(
      `/* checkpointKeys.lock */ lock table ${CONTROL_SCHEMA}.checkpoint_keys in share row exclusive mode`,
    );
  }

  /** Retires the current key at `at`, with its successor's endorsement of its period. */
  async retire(
    tx: Sql,
    keyId: string,
    at: Date,
    endorsement: { by: string; signature: Buffer },
    notice: Buffer | null,
  ): Promise<void> {
    await tx.query(
      `/* checkpointKeys.retire */
       update ${CONTROL_SCHEMA}.checkpoint_keys
          set retired_at = $2, endorsed_by = $3, endorsement = decode($4, 'hex'),
              retirement_notice = decode($5, 'hex')
        where key_id = $1 and retired_at is null`,
      [
        keyId,
        at.toISOString(),
        endorsement.by,
        endorsement.signature.toString('hex'),
        notice?.toString('hex') ?? null,
      ],
    );
  }

  /** Adds `key` as the current one, trusted from `trustedFrom` (retire the current one first). */
  async add(
    tx: Sql,
    key: { keyId: string; publicKeyPem: string },
    trustedFrom: Date,
  ): Promise<void> {
    await tx.query(
      `/* checkpointKeys.insert */
       insert into ${CONTROL_SCHEMA}.checkpoint_keys (key_id, public_key, trusted_from)
       values ($1, $2, $3)`,
      [key.keyId, key.publicKeyPem, trustedFrom.toISOString()],
    );
  }
}
