import { randomBytes } from 'node:crypto';
import { CONTROL_SCHEMA } from '../domain/tenant.js';
import type { Sql } from './client.js';

/** Names of the deployment-wide secrets kept in the control schema. */
export type ServiceSecretName = 'cursor';

/**
 * Deployment-wide secrets in the control schema. The first instance to ask creates one (32
 * random bytes, hex); every later call, on any instance, reads the same value. The insert and the
 * read are one statement pair that cannot race: `on conflict do nothing` leaves the first
 * writer's secret in place.
 */
export class ServiceSecretStore {
  constructor(private readonly db: Sql) {}

  async getOrCreate(name: ServiceSecretName): Promise<string> {
    await this.db.query(
      `/* serviceSecrets.create */ insert into ${CONTROL_SCHEMA}.service_secrets (name, secret)
       values ($1, $2) on conflict (name) do nothing`,
      [name, randomBytes(32).toString('hex')],
    );
    const [row] = await this.db.query<{ secret: string }>(
      `/* serviceSecrets.read */ select secret from ${CONTROL_SCHEMA}.service_secrets where name = $1`,
      [name],
    );
    if (!row) throw new Error(`service secret ${name} missing right after it was created`);
    return row.secret;
  }
}
