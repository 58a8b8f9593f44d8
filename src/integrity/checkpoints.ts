import { CheckpointStore } from '../db/checkpoint-store.js';
import type { Database } from '../db/client.js';
import { addMonths } from '../db/partitions.js';
import {
  type Checkpoint,
  checkpointToJson,
  signCheckpoint,
  type TrustedKey,
} from '../domain/checkpoint.js';
import { CheckpointKeyRetiredError } from '../domain/errors.js';
import { CONTROL_SCHEMA, type TenantId, tenantIdProblem, tenantSchema } from '../domain/tenant.js';
import type { Logger } from '../logger.js';
import type { CheckpointKeyring } from './keyring.js';
import type { SigningKey } from './signing-key.js';

/**
 * Publishes each tenant's chain heads as signed checkpoints: stored (append-only) in the tenant's
 * `chain_checkpoints`, and logged, so a copy lives outside the database too. Any instance may
 * sign (they share the key); two signing the same head store it once. An instance signs only
 * while its key is the deployment's current one (see CheckpointKeyring): after a rotation, one
 * still holding the retired key stops signing until it is restarted with the new one.
 */
export class CheckpointService {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  /** Where checkpoints are stored; the chain auditor, export and retention read them there. */
  readonly store: CheckpointStore;
  private retiredLoggedAt = 0;
  constructor(
    private readonly db: Database,
    readonly key: SigningKey,
    readonly keyring: CheckpointKeyring,
    private readonly log: Logger,
    private readonly intervalMs: number,
    /** Told of every checkpoint this instance stores (metrics). */
    private readonly onSigned?: (tenant: TenantId, count: number) => void,
  ) {
    this.store = new CheckpointStore(db);
  }

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      this.running ??= this.checkpointAll()
        .catch((err: unknown) => this.log.warn({ err }, 'periodic checkpoint failed; will retry'))
        .finally(() => {
          this.running = undefined;
        });
    }, this.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** Signs the heads of every tenant that moved since their last checkpoint. */
  async checkpointAll(now = new Date()): Promise<number> {
    if (await this.retired()) {
      // Every round until the restart would say the same: once a minute is enough.
      if (Date.now() - this.retiredLoggedAt > 60_000) {
        this.retiredLoggedAt = Date.now();
        this.log.error(
          { keyId: this.key.keyId },
          'this instance holds a retired checkpoint key and signs nothing: restart it with the current key file',
        );
      }
      return 0;
    }
    const tenants = await this.db.query<{ tenant_id: string }>(
      `/* checkpoints.tenants */ select tenant_id from ${CONTROL_SCHEMA}.tenants order by tenant_id`,
    );
    let signed = 0;
    for (const { tenant_id } of tenants) {
      if (tenantIdProblem(tenant_id)) continue;
      signed += (await this.checkpointTenant(tenant_id as TenantId, now)).length;
    }
    return signed;
  }

  /**
   * Signs every chain head of the tenant that has moved since its last checkpoint (a month
   * whose head is already checkpointed gets nothing new). Returns the checkpoints made.
   *
   * `unlessOnly`: event types that alone do not call for a new checkpoint of a month that has
   * one — the export passes the service's read records, since each export records one: without
   * it every export would sign (and store) a checkpoint over the previous export's read, a row
   * per export for nothing. Such a month keeps its checkpoint; the periodic checkpoint
   * (CHECKPOINT_INTERVAL_MS) and signAuditCheckpoints still sign every moved head.
   */
  async checkpointTenant(
    tenant: TenantId,
    now = new Date(),
    opts: { unlessOnly?: readonly string[] } = {},
  ): Promise<Checkpoint[]> {
    const schema = tenantSchema(tenant);
    const made: Checkpoint[] = [];
    const moved = await this.store.movedHeads(tenant);
    if (moved.length > 0 && (await this.retired())) {
      throw new CheckpointKeyRetiredError(this.key.keyId);
    }
    for (const h of moved) {
      const ignored = opts.unlessOnly ?? [];
      if (ignored.length > 0 && h.signedSeq !== null) {
        const moved = await this.db.query(
          `/* checkpoints.moved_by */
           select 1 from "${schema}".audit_events
            where occurred_at >= $1 and occurred_at < $2
              and chain_seq > $3 and chain_seq <= $4 and event_type <> all($5::text[])
            limit 1`,
          [h.month.toISOString(), addMonths(h.month, 1).toISOString(), h.signedSeq, h.seq, ignored],
        );
        if (moved.length === 0) continue;
      }
      const checkpoint = signCheckpoint(
        { tenant, month: h.month, seq: h.seq, hash: h.hash, signedAt: now },
        this.key.privateKey,
      );
      if (!(await this.store.insert(tenant, checkpoint))) continue;
      made.push(checkpoint);
      this.onSigned?.(tenant, 1);
      // The log line is the copy outside the database: keep logs where the database's writers
      // cannot reach them, and a rewrite of history cannot be re-signed behind your back.
      this.log.info({ checkpoint: checkpointToJson(checkpoint) }, 'chain checkpoint signed');
    }
    return made;
  }

  /** Stored checkpoints of a tenant, oldest month and position first; optionally one month. */
  list(tenant: TenantId, month?: Date): Promise<Checkpoint[]> {
    return this.store.list(tenant, month);
  }

  /** True when a rotation retired this instance's key; a retirement nobody endorsed is logged. */
  private async retired(): Promise<boolean> {
    const { retired, tampered } = await this.keyring.rotatedAway(this.key);
    if (tampered) {
      this.log.error(
        { keyId: this.key.keyId, tampered },
        'the checkpoint key list was changed without a rotation; signing goes on with this key',
      );
    }
    return retired;
  }

  /**
   * The deployment's keys this instance's own key vouches for (itself and, through their
   * endorsements, the keys it replaced), for a verification: `untrustedBecause(keys, c)` then
   * tells whether `c` was signed by one of them while it was trusted. Read once per month
   * verified, not per checkpoint.
   */
  async trustedKeys(): Promise<TrustedKey[]> {
    const { keys, broken } = await this.keyring.vouchedBy(this.key.keyId);
    // Someone without the keys changed the list (or slipped a key into it): what the keys past
    // the break signed is reported as not vouched for; this line says why.
    if (broken)
      this.log.error({ keyId: this.key.keyId, broken }, 'the checkpoint key list does not hold');
    return keys;
  }
}
