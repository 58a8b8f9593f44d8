import { integer, pgSchema, primaryKey, text, timestamp, varchar } from 'drizzle-orm/pg-core';

/** The control schema: which tenants exist and which migration each tenant schema is at. */
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
