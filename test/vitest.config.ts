import { createRequire } from 'node:module';
import { defineConfig } from 'vitest/config';

// One graphql module for everyone: without this, src/ would load graphql's ESM build while yoga
// and Pothos load its CommonJS build, and graphql refuses types from "another realm".
const graphqlEntry = createRequire(import.meta.url).resolve('graphql');

export default defineConfig({
  resolve: { alias: { graphql: graphqlEntry } },
  test: {
    root: new URL('..', import.meta.url).pathname,
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    setupFiles: ['test/support/file-database.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Files run in parallel (each uses its own tenants); 2 cores here.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
