import { defineConfig } from 'drizzle-kit';

/**
 * Two migration sets: `tenant` (tables in every `t_<tenant>` schema, written unqualified) and
 * `control` (the `auditgraph` schema). `npm run db:generate` generates both.
 * Never run `drizzle-kit push`: it cannot create partitioned tables.
 */
const set = process.env.AUDITGRAPH_MIGRATION_SET === 'control' ? 'control' : 'tenant';

export default defineConfig({
  dialect: 'postgresql',
  schema: set === 'control' ? './src/db/control-tables.ts' : './src/db/tenant-tables.ts',
  out: `./drizzle/${set}`,
  verbose: true,
});
