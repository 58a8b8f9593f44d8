import {
  type ApiKeyRecord,
  generateApiKey,
  hashApiKey,
  isScope,
  looksLikeApiKey,
  type NewApiKey,
} from '../domain/api-key.js';
import { CONTROL_SCHEMA, type TenantId } from '../domain/tenant.js';
import { isLowerUuid } from '../domain/uuid.js';
import { asError, type Logger } from '../logger.js';
import type { Database } from './client.js';

interface ApiKeyRow {
  id: string;
  tenant_id: string | null;
  scopes: string[];
  label: string;
  prefix: string;
  created_at: Date;
  last_used_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
}

const COLUMNS =
  'id, tenant_id, scopes, label, prefix, created_at, last_used_at, expires_at, revoked_at';

function toRecord(r: ApiKeyRow): ApiKeyRecord {
  return {
    id: r.id,
    tenantId: r.tenant_id as TenantId | null,
    scopes: r.scopes.filter(isScope),
    label: r.label,
    prefix: r.prefix,
    createdAt: new Date(r.created_at),
    lastUsedAt: r.last_used_at && new Date(r.last_used_at),
    expiresAt: r.expires_at && new Date(r.expires_at),
    revokedAt: r.revoked_at && new Date(r.revoked_at),
  };
}

export interface ApiKeyStoreOptions {
  /** How long a look-up (found or not) is reused by this process. 0: never cached. */
  cacheMs: number;
  /** `last_used_at` is written at most this often per key. */
  touchIntervalMs: number;
  /** Tells the other instances of a revocation; resolves once they all dropped the key. */
  announceRevocation?: (keyId: string) => Promise<void>;
  /** Whether a cached look-up may be used (false while revocations elsewhere could be missed). */
  trustCache?: () => boolean;
}

const CACHE_MAX = 10_000;

/**
 * API keys in the control schema. Look-ups are cached for `cacheMs` so a busy client costs no
 * query per request. A revocation drops the key from the cache at once, and `announceRevocation`
 * (set by the app) has every other instance drop it before `revoke` returns; while this process
 * could not hear such an announcement (`trustCache` false) every look-up reads the database.
 */
export class ApiKeyStore {
  /** key hash → the key (or null: unknown) and when it was read. */
  private readonly cache = new Map<string, { key: ApiKeyRecord | null; at: number }>();
  /** key id → when this process last wrote its last_used_at. */
  private readonly touched = new Map<string, number>();
  /**
   * Moves on every invalidation: a look-up that was reading the database meanwhile may hold the
   * state from before the revocation, and is then not cached.
   */
  private generation = 0;

  constructor(
    private readonly db: Database,
    private readonly log: Logger,
    private readonly opts: ApiKeyStoreOptions,
  ) {}

  /** Stores a new key; the secret is returned here and nowhere else, ever. */
  async create(input: NewApiKey): Promise<{ key: ApiKeyRecord; secret: string }> {
    const { secret, hash, prefix } = generateApiKey();
    const [row] = await this.db.query<ApiKeyRow>(
      `/* apiKeys.insert */ insert into ${CONTROL_SCHEMA}.api_keys
         (key_hash, prefix, tenant_id, scopes, label, expires_at)
       values ($1, $2, $3, $4, $5, $6) returning ${COLUMNS}`,
      [hash, prefix, input.tenantId, input.scopes, input.label, input.expiresAt],
    );
    const key = toRecord(row!);
    this.log.info(
      { keyId: key.id, tenant: key.tenantId, scopes: key.scopes, label: key.label },
      'api key created',
    );
    return { key, secret };
  }

  /**
   * Revokes a key (idempotent: revoking twice keeps the first time, and announces it again).
   * Null when no such key. When it returns, the key is refused by this process and by every
   * instance that confirmed the announcement; it throws when that could not be confirmed (the
   * key stays revoked: calling again is safe).
   */
  async revoke(id: string): Promise<ApiKeyRecord | null> {
    if (!isLowerUuid(id)) return null;
    const [row] = await this.db.query<ApiKeyRow>(
      `/* apiKeys.revoke */ update ${CONTROL_SCHEMA}.api_keys
         set revoked_at = coalesce(revoked_at, now()) where id = $1 returning ${COLUMNS}`,
      [id],
    );
    this.invalidate(id);
    if (!row) return null;
    const key = toRecord(row);
    this.log.info({ keyId: key.id, tenant: key.tenantId, label: key.label }, 'api key revoked');
    try {
      await this.opts.announceRevocation?.(key.id);
    } catch (err) {
      this.log.error(
        { err: asError(err), keyId: key.id },
        'api key revoked in the database, but not every instance confirmed it; revoke it again',
      );
      throw err;
    }
    return key;
  }

  /** Drops a key (by id) from the cache: its next look-up reads the database. */
  invalidate(id: string): void {
    this.generation++;
    for (const [hash, entry] of this.cache) if (entry.key?.id === id) this.cache.delete(hash);
  }

  /**
   * Every cached look-up becomes stale (read again on next use; still the fallback while the
   * database is unreachable): revocations may have been missed.
   */
  invalidateAll(): void {
    this.generation++;
    for (const entry of this.cache.values()) entry.at = Number.NEGATIVE_INFINITY;
  }

  async get(id: string): Promise<ApiKeyRecord | null> {
    if (!isLowerUuid(id)) return null;
    const [row] = await this.db.query<ApiKeyRow>(
      `/* apiKeys.get */ select ${COLUMNS} from ${CONTROL_SCHEMA}.api_keys where id = $1`,
      [id],
    );
    return row ? toRecord(row) : null;
  }

  /** The keys of a tenant (or, with null, the platform keys), newest first. */
  async list(tenantId: TenantId | null): Promise<ApiKeyRecord[]> {
    const rows = await this.db.query<ApiKeyRow>(
      `/* apiKeys.list */ select ${COLUMNS} from ${CONTROL_SCHEMA}.api_keys
       where tenant_id is not distinct from $1 order by created_at desc, id`,
      [tenantId],
    );
    return rows.map(toRecord);
  }

  /** Every key, newest first (the CLI's listing). */
  async listAll(): Promise<ApiKeyRecord[]> {
    const rows = await this.db.query<ApiKeyRow>(
      `/* apiKeys.listAll */ select ${COLUMNS} from ${CONTROL_SCHEMA}.api_keys
       order by tenant_id nulls first, created_at desc, id`,
    );
    return rows.map(toRecord);
  }

  /**
   * The key a client presented, or null when there is no such key. Revocation and expiry are
   * the caller's to check (`apiKeyProblem`), so that it can say which.
   */
  async lookup(secret: string): Promise<ApiKeyRecord | null> {
    if (!looksLikeApiKey(secret)) return null;
    return this.byHash(hashApiKey(secret));
  }

  /** The current state of a key known by its hash (a connection re-checking its key). */
  async byHash(hash: string): Promise<ApiKeyRecord | null> {
    const now = Date.now();
    const hit = this.cache.get(hash);
    if (hit && now - hit.at < this.opts.cacheMs && (this.opts.trustCache?.() ?? true))
      return hit.key;
    const generation = this.generation;
    let row: ApiKeyRow | undefined;
    try {
      [row] = await this.db.query<ApiKeyRow>(
        `/* apiKeys.byHash */ select ${COLUMNS} from ${CONTROL_SCHEMA}.api_keys where key_hash = $1`,
        [hash],
      );
    } catch (err) {
      // The database is unreachable: a key this process knew stays usable (writes are buffered
      // through an outage; nobody can revoke a key meanwhile either — that needs the database).
      if (hit?.key) {
        this.log.warn({ err: asError(err), keyId: hit.key.id }, 'api key check from cache');
        return hit.key;
      }
      throw err;
    }
    const key = row ? toRecord(row) : null;
    if (this.opts.cacheMs > 0 && generation === this.generation) {
      this.cache.delete(hash);
      this.cache.set(hash, { key, at: now });
      if (this.cache.size > CACHE_MAX) {
        // Oldest first (insertion order): drop a tenth rather than one per insert.
        let n = Math.ceil(CACHE_MAX / 10);
        for (const h of this.cache.keys()) {
          this.cache.delete(h);
          if (--n === 0) break;
        }
      }
    }
    return key;
  }

  /** Records a use of the key, writing `last_used_at` at most every `touchIntervalMs`. */
  touch(key: ApiKeyRecord): void {
    const now = Date.now();
    const last = this.touched.get(key.id) ?? key.lastUsedAt?.getTime() ?? 0;
    if (now - last < this.opts.touchIntervalMs) return;
    this.touched.set(key.id, now);
    if (this.touched.size > CACHE_MAX) this.touched.clear();
    this.db
      .query(
        `/* apiKeys.touch */ update ${CONTROL_SCHEMA}.api_keys set last_used_at = now() where id = $1`,
        [key.id],
      )
      .catch((err: unknown) =>
        this.log.warn({ err: asError(err), keyId: key.id }, 'last_used_at not written'),
      );
  }
}
