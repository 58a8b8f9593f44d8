import type { ApiKeyStore } from '../db/api-key-store.js';
import type { TenantDirectory } from '../db/tenant-directory.js';
import { type ApiKeyRecord, validateNewApiKey } from '../domain/api-key.js';
import { UnknownTenantError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { Actor } from './actor.js';

/** What a caller asks for: validated here, whichever door it came through. */
export type NewApiKeyRequest = Parameters<typeof validateNewApiKey>[0];

/** A created key, and the key itself: shown once, in this answer, and never stored. */
export interface CreatedApiKey {
  key: ApiKeyRecord;
  secret: string;
}

/**
 * Creating, revoking and listing API keys, for `createApiKey` / `revokeApiKey` / `apiKeys` and
 * `npm run keys` alike. A tenant key's creation and revocation are recorded in that tenant's log;
 * a platform key belongs to no tenant, so there is no log to record it in.
 */
export class KeyAdministration {
  constructor(
    private readonly apiKeys: ApiKeyStore,
    private readonly directory: TenantDirectory,
  ) {}

  /**
   * Creates a key (shown once, in the answer). Throws ValidationError when the input breaks a
   * rule, UnknownTenantError when its tenant is not provisioned.
   */
  async create(actor: Actor, input: NewApiKeyRequest): Promise<CreatedApiKey> {
    const spec = validateNewApiKey(input);
    if (spec.tenantId !== null && !(await this.directory.exists(spec.tenantId))) {
      throw new UnknownTenantError(spec.tenantId);
    }
    const created = await this.apiKeys.create(spec);
    const { key } = created;
    if (key.tenantId !== null) {
      await actor.recordAccess({
        tenant: key.tenantId,
        eventType: 'auditgraph.apikey.created',
        action: 'create',
        resource: { type: 'api_key', id: key.id, name: key.label },
        data: { scopes: key.scopes, prefix: key.prefix, expiresAt: key.expiresAt },
      });
    }
    return created;
  }

  /** Revokes a key (idempotent); null when no key has this id. */
  async revoke(actor: Actor, id: string): Promise<ApiKeyRecord | null> {
    const key = await this.apiKeys.revoke(id);
    if (key?.tenantId != null) {
      await actor.recordAccess({
        tenant: key.tenantId,
        eventType: 'auditgraph.apikey.revoked',
        action: 'revoke',
        resource: { type: 'api_key', id: key.id, name: key.label },
        data: { prefix: key.prefix },
      });
    }
    return key;
  }

  /** The keys of a tenant, or (null) the platform keys, newest first. */
  list(tenant: TenantId | null): Promise<ApiKeyRecord[]> {
    return this.apiKeys.list(tenant);
  }

  /** Every key of every tenant and the platform keys. */
  listAll(): Promise<ApiKeyRecord[]> {
    return this.apiKeys.listAll();
  }
}
