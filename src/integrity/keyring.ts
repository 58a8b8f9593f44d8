import { sign } from 'node:crypto';
import { rmSync } from 'node:fs';
import { CheckpointKeyStore } from '../db/checkpoint-key-store.js';
import type { Database } from '../db/client.js';
import {
  keyPeriodStatement,
  retiredByItself,
  retirementStatement,
  type TrustedKey,
  vouchedKeys,
} from '../domain/checkpoint.js';
import { Refusal } from '../refusal.js';
import type { SigningKey } from './signing-key.js';

/** The first key of a deployment vouches for the checkpoints made before keys had periods. */
const SINCE_THE_BEGINNING = new Date(0);

const short = (keyId: string) => `${keyId.slice(0, 16)}…`;

/**
 * The deployment's checkpoint keys and their periods (`auditgraph.checkpoint_keys`): the one
 * current key that every instance must sign with, and the retired ones, whose checkpoints stay
 * verifiable for the period they signed in. An instance adopts its key at start — the first
 * one of a deployment registers it; any other must hold the current one, or it refuses to
 * start — and a rotation (`npm run deployment -- rotate-checkpoint-key`) makes a new key current
 * and retires the old one in one transaction.
 */
export class CheckpointKeyring {
  private readonly store: CheckpointKeyStore;

  constructor(
    private readonly db: Database,
    /** Where the instance's key comes from (CHECKPOINT_KEY_FILE), named in refusals. */
    private readonly keyFile: string,
  ) {
    this.store = new CheckpointKeyStore(db);
  }

  /** Every key in the deployment's list, oldest first, vouched for or not. */
  list(): Promise<TrustedKey[]> {
    return this.store.list();
  }

  /**
   * The keys `anchor` (the caller's own key) vouches for, oldest first: itself and, through
   * the endorsements, every key before it. `broken` says why the walk stopped early, if it did
   * (a row changed or slipped in by someone without the keys).
   */
  async vouchedBy(anchor: string): Promise<{ keys: TrustedKey[]; broken: string | null }> {
    return vouchedKeys(await this.store.list(), anchor);
  }

  /**
   * Start-up: registers `own` when the deployment has no key yet; otherwise it must be the
   * current one. Throws a Refusal that says what to do when it is a retired key or another one.
   */
  async adopt(own: SigningKey): Promise<'registered' | 'current'> {
    return this.db.transaction(async (tx) => {
      await this.store.lock(tx);
      const keys = await this.store.list(tx);
      const current = keys.find((k) => k.retiredAt === null);
      if (!current && keys.length === 0) {
        await this.store.add(tx, own, SINCE_THE_BEGINNING);
        return 'registered';
      }
      if (!current) throw new Refusal('the deployment has checkpoint keys but none is current');
      if (current.keyId === own.keyId) return 'current';
      if (own.createdNow) {
        // A key this start made (there was no file) is not the deployment's: take it back, so
        // that what is left is the one to copy here.
        rmSync(this.keyFile, { force: true });
        throw new Refusal(
          `CHECKPOINT_KEY_FILE (${this.keyFile}) does not exist, and this deployment signs its ` +
            `checkpoints with ${short(current.keyId)} (since ${current.trustedFrom.toISOString()}): ` +
            "copy the deployment's key file there (from another instance, or its backup)",
        );
      }
      const mine = keys.find((k) => k.keyId === own.keyId);
      if (mine && !retiredByItself(mine)) {
        throw new Refusal(
          `CHECKPOINT_KEY_FILE (${this.keyFile}) holds checkpoint key ${short(own.keyId)}, which the ` +
            `key list says was retired at ${mine.retiredAt!.toISOString()} for ${short(current.keyId)}, ` +
            'but the key did not sign that retirement: if it was your rotation (without the key ' +
            'at hand), give this instance the current key file; if not, someone without the keys ' +
            'changed auditgraph.checkpoint_keys',
        );
      }
      if (mine) {
        throw new Refusal(
          `CHECKPOINT_KEY_FILE (${this.keyFile}) holds checkpoint key ${short(own.keyId)}, which ` +
            `this deployment retired at ${mine.retiredAt!.toISOString()}; it signs with ` +
            `${short(current.keyId)} now: give this instance the current key file`,
        );
      }
      throw new Refusal(
        `CHECKPOINT_KEY_FILE (${this.keyFile}) holds checkpoint key ${short(own.keyId)}, but this ` +
          `deployment signs its checkpoints with ${short(current.keyId)} (since ` +
          `${current.trustedFrom.toISOString()}): give every instance the same key file, or make ` +
          `this key the deployment's with: npm run deployment -- rotate-checkpoint-key --key-file ${this.keyFile}`,
      );
    });
  }

  /**
   * Makes `next` the current key, retiring the current one at the same instant. A key that was
   * ever trusted cannot be made current again (its period would cover the time it was retired,
   * when it might have leaked). `held`: the current key's private half when the rotation has it
   * (the usual case, its file replaced in place): it then signs its own retirement, which makes
   * instances still holding it stop signing. Without it (the key lost) they go on, and what they
   * sign after the retirement shows as BAD_SIGNATURE.
   */
  async rotate(
    next: SigningKey,
    held?: SigningKey,
  ): Promise<{ retired: TrustedKey | null; noticed: boolean }> {
    return this.db.transaction(async (tx) => {
      await this.store.lock(tx);
      // The database's clock, the one every instance meets: not that of the host running this.
      const at = await this.store.now(tx);
      const keys = await this.store.list(tx);
      const known = keys.find((k) => k.keyId === next.keyId);
      if (known) {
        throw new Refusal(
          known.retiredAt === null
            ? `checkpoint key ${short(next.keyId)} is already the current one`
            : `checkpoint key ${short(next.keyId)} was retired at ${known.retiredAt.toISOString()}; ` +
                'a retired key is not trusted again: rotate to a new one',
        );
      }
      const current = keys.find((k) => k.retiredAt === null) ?? null;
      let retired: TrustedKey | null = null;
      if (current) {
        // The new key vouches for the old one's period: nobody without it can add a key that
        // verifications would take as retired.
        const signature = sign(
          null,
          keyPeriodStatement({ ...current, retiredAt: at }, next.keyId),
          next.privateKey,
        );
        const notice =
          held?.keyId === current.keyId
            ? sign(null, retirementStatement(current.keyId, at, next.keyId), held.privateKey)
            : null;
        await this.store.retire(tx, current.keyId, at, { by: next.keyId, signature }, notice);
        retired = {
          ...current,
          retiredAt: at,
          endorsedBy: next.keyId,
          endorsement: signature,
          retirementNotice: notice,
        };
      }
      await this.store.add(tx, next, current ? at : SINCE_THE_BEGINNING);
      return { retired, noticed: retired?.retirementNotice != null };
    });
  }

  /**
   * Whether `own` was rotated away: retired in its row, with the retirement signed by `own`
   * itself (read before each signing round, so an instance whose key was just retired stops
   * at once). A retirement nobody with the keys made — the row changed, the current row
   * replaced, the row gone — does not stop it: it goes on signing, and `tampered` says what is
   * wrong, for the log (its verifications show it too).
   */
  async rotatedAway(own: SigningKey): Promise<{ retired: boolean; tampered: string | null }> {
    const keys = await this.store.list();
    const mine = keys.find((k) => k.keyId === own.keyId);
    if (!mine) return { retired: false, tampered: "this instance's key is not in the list" };
    if (mine.retiredAt === null) {
      const other = keys.find((k) => k.retiredAt === null && k.keyId !== own.keyId);
      return {
        retired: false,
        tampered: other ? `another key is current: ${short(other.keyId)}` : null,
      };
    }
    // Only this key's own signature makes its retirement real: a successor's endorsement could
    // come from whoever made the successor.
    if (retiredByItself(mine)) return { retired: true, tampered: null };
    return {
      retired: false,
      tampered: `its retirement at ${mine.retiredAt.toISOString()} is not signed by this key`,
    };
  }
}
