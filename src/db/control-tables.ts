import { sql } from 'drizzle-orm';
import {
  bigint,
  bytea,
  index,
  integer,
  jsonb,
  pgSchema,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
  varchar,
} from 'drizzle-orm/pg-core';

/** The control schema: which tenants exist, which migration each is at, and the API keys. */
export const control = pgSchema('auditgraph');

const ts = (name: string) => timestamp(name, { precision: 3, withTimezone: true, mode: 'date' });

export const tenants = control.table('tenants', {
  tenantId: varchar('tenant_id', { length: 40 }).primaryKey(),
  schemaName: varchar('schema_name', { length: 63 }).notNull().unique(),
  createdAt: ts('created_at').notNull().defaultNow(),
  /** Name of the last tenant migration applied to the schema. */
  migration: text('migration'),
  migratedAt: ts('migrated_at'),
  retentionDays: integer('retention_days'),
});

/** Every tenant migration applied, by tenant. */
export const tenantMigrations = control.table(
  'tenant_migrations',
  {
    tenantId: varchar('tenant_id', { length: 40 }).notNull(),
    name: text('name').notNull(),
    hash: text('hash').notNull(),
    appliedAt: ts('applied_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.name] })],
);

/** Control-schema migrations applied to this database. */
export const controlMigrations = control.table('control_migrations', {
  name: text('name').primaryKey(),
  hash: text('hash').notNull(),
  appliedAt: ts('applied_at').notNull().defaultNow(),
});

/**
 * API keys (AUTH_MODE=keys). Only a SHA-256 of each key is stored; the key itself is shown once,
 * when it is created. `tenant_id` null is a platform key (tenant administration only). No
 * foreign key to `tenants`: a key row outlives nothing it could block, and keys are checked
 * against the tenant when they are created.
 */
export const apiKeys = control.table(
  'api_keys',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    keyHash: varchar('key_hash', { length: 64 }).notNull().unique(),
    prefix: varchar('prefix', { length: 16 }).notNull(),
    tenantId: varchar('tenant_id', { length: 40 }),
    scopes: text('scopes').array().notNull(),
    label: varchar('label', { length: 100 }).notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
    lastUsedAt: ts('last_used_at'),
    expiresAt: ts('expires_at'),
    revokedAt: ts('revoked_at'),
  },
  (t) => [index('api_keys_tenant_idx').on(t.tenantId, t.createdAt)],
);

/**
 * Months removed by retention, one row per dropped partition, with the chain's head at the cut
 * (the signed checkpoint of the month's final state), so a later verification knows the month
 * was dropped on purpose and what it held.
 */
export const retentionDrops = control.table(
  'retention_drops',
  {
    id: uuid('id').primaryKey().defaultRandom(),
    tenantId: varchar('tenant_id', { length: 40 }).notNull(),
    month: ts('month').notNull(),
    partitionName: varchar('partition_name', { length: 63 }).notNull(),
    rowCount: bigint('row_count', { mode: 'number' }).notNull(),
    chainSeq: bigint('chain_seq', { mode: 'number' }).notNull(),
    /** Hex SHA-256 of the month's last event (null for an empty month). */
    chainHash: varchar('chain_hash', { length: 64 }),
    /** The signed checkpoint at the cut, as stored in the tenant's chain_checkpoints. */
    checkpoint: jsonb('checkpoint'),
    retentionDays: integer('retention_days').notNull(),
    droppedAt: ts('dropped_at').notNull().defaultNow(),
    instanceId: varchar('instance_id', { length: 100 }).notNull(),
  },
  (t) => [index('retention_drops_tenant_idx').on(t.tenantId, t.month)],
);

/**
 * Secrets every instance of a deployment must share, created once by whichever instance starts
 * first (e.g. `cursor`: the key that signs page cursors, so a cursor from one instance works on
 * every other one and after restarts without any configuration).
 */
export const serviceSecrets = control.table('service_secrets', {
  name: varchar('name', { length: 40 }).primaryKey(),
  secret: text('secret').notNull(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

/**
 * The public keys that sign (and signed) the deployment's checkpoints, each with the period it
 * was trusted in: a checkpoint is accepted when its key was trusted at its `signedAt`. Rows are
 * added by the first start and by a rotation, which retires the current key in the same
 * transaction, its period endorsed (signed) by the new key; at most one key is current. Private
 * keys never come here, and a row added by whoever can only write the database is endorsed by
 * no key: it vouches for nothing.
 */
export const checkpointKeys = control.table(
  'checkpoint_keys',
  {
    keyId: varchar('key_id', { length: 64 }).primaryKey(),
    /** SPKI PEM. */
    publicKey: text('public_key').notNull(),
    trustedFrom: ts('trusted_from').notNull(),
    retiredAt: ts('retired_at'),
    /** Set with retired_at: the successor's id and its Ed25519 signature over this key's period. */
    endorsedBy: varchar('endorsed_by', { length: 64 }),
    endorsement: bytea('endorsement'),
    /**
     * Set with retired_at when the rotation held the retired key: its own signature over its
     * retirement, which is what makes an instance still holding it stop signing (nobody without
     * that key can make one, so nobody can stop the deployment's signing through the table).
     */
    retirementNotice: bytea('retirement_notice'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('checkpoint_keys_one_current').on(sql`(true)`).where(sql`${t.retiredAt} is null`),
  ],
);

/**
 * Fingerprints of settings every instance must hold alike (the chain's HMAC secret, the cursor
 * key): recorded by the first instance, checked by each one at start. A fingerprint is an HMAC
 * under the setting itself, so it tells whether two values are the same and nothing else.
 */
export const sharedSettings = control.table('shared_settings', {
  name: varchar('name', { length: 40 }).primaryKey(),
  fingerprint: text('fingerprint').notNull(),
  setAt: ts('set_at').notNull().defaultNow(),
});
