import { createHmac } from 'node:crypto';
import type { Sql } from '../db/client.js';
import { CONTROL_SCHEMA } from '../domain/tenant.js';
import { Refusal } from '../refusal.js';

/** Settings every instance of a deployment must hold alike. */
export type SharedSettingName = 'chain-hmac' | 'cursor';

/** An HMAC under the value itself: equal for equal values, and telling nothing else of them. */
export function fingerprintOf(name: SharedSettingName, value: string): string {
  return createHmac('sha256', value).update(`auditgraph shared setting ${name}`).digest('hex');
}

/**
 * Checks at start that this instance holds what the deployment's other instances hold: the
 * first instance records each setting's fingerprint (`auditgraph.shared_settings`), every later
 * one compares with it and refuses to start on a difference, saying which setting and what to do.
 */
export class SharedSettings {
  constructor(private readonly db: Sql) {}

  /** The recorded fingerprint of `name`, recording `value`'s when there is none yet. */
  private async recorded(name: SharedSettingName, value: string): Promise<string> {
    await this.db.query(
      `/* sharedSettings.record */ insert into ${CONTROL_SCHEMA}.shared_settings (name, fingerprint)
       values ($1, $2) on conflict (name) do nothing`,
      [name, fingerprintOf(name, value)],
    );
    const [row] = await this.db.query<{ fingerprint: string }>(
      `/* sharedSettings.read */ select fingerprint from ${CONTROL_SCHEMA}.shared_settings where name = $1`,
      [name],
    );
    if (!row) throw new Error(`shared setting ${name} missing right after it was recorded`);
    return row.fingerprint;
  }

  /**
   * Throws a Refusal when this instance's chain HMAC secret or cursor key is not the one the
   * deployment recorded. `cursorKey` is the key in use: CURSOR_SECRET, or the deployment's own.
   */
  async check(chainHmacSecret: string | undefined, cursorKey: string, cursorConfigured: boolean) {
    if (
      (await this.recorded('chain-hmac', chainHmacSecret ?? '')) !==
      fingerprintOf('chain-hmac', chainHmacSecret ?? '')
    ) {
      throw new Refusal(
        `CHAIN_HMAC_SECRET (${chainHmacSecret === undefined ? 'unset' : 'set'} here) is not the ` +
          "one this deployment's chains are hashed with: every instance needs the same one, since " +
          'events hashed with another would not verify; it cannot change once events are stored',
      );
    }
    if ((await this.recorded('cursor', cursorKey)) !== fingerprintOf('cursor', cursorKey)) {
      throw new Refusal(
        `the page-cursor key (CURSOR_SECRET, ${cursorConfigured ? 'set' : 'unset'} here) is not the ` +
          "one this deployment's other instances use, whose cursors this one would refuse: give " +
          "every instance the same CURSOR_SECRET, or none (the deployment's own key is then shared " +
          'through the database); to change it on purpose, run npm run deployment -- ' +
          'adopt-cursor-key with the new CURSOR_SECRET set, then restart every instance',
      );
    }
  }

  /** Every recorded fingerprint, by name. */
  async recordedFingerprints(): Promise<Map<string, string>> {
    const rows = await this.db.query<{ name: string; fingerprint: string }>(
      `/* sharedSettings.list */ select name, fingerprint from ${CONTROL_SCHEMA}.shared_settings`,
    );
    return new Map(rows.map((r) => [r.name, r.fingerprint]));
  }

  /** Records `value` as the deployment's `name` from now on (a deliberate change). */
  async adopt(name: SharedSettingName, value: string): Promise<void> {
    await this.db.query(
      `/* sharedSettings.adopt */ insert into ${CONTROL_SCHEMA}.shared_settings (name, fingerprint)
       values ($1, $2) on conflict (name) do update set fingerprint = excluded.fingerprint, set_at = now()`,
      [name, fingerprintOf(name, value)],
    );
  }
}
