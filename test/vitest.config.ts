import { createRequire } from 'node:module';
import { defineConfig } from 'vitest/config';

// One graphql module for everyone: without this, src/ would load graphql's ESM build while yoga
// and Pothos load its CommonJS build, and graphql refuses types from "another realm".
const graphqlEntry = createRequire(import.meta.url).resolve('graphql');

/**
 * Files that measure latency under a flood they make themselves: they run after every other
 * file, alone, so the machine's two cores are theirs and what they measure is the service.
 */
const ALONE = ['test/subscription-flood.test.ts'];

export default defineConfig({
  resolve: { alias: { graphql: graphqlEntry } },
  test: {
    root: new URL('..', import.meta.url).pathname,
    globalSetup: ['test/support/global-setup.ts'],
    setupFiles: ['test/support/file-database.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'parallel',
          include: ['test/**/*.test.ts'],
          exclude: ALONE,
          // Files run in parallel (each uses its own tenants); 2 cores here.
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'alone',
          include: ALONE,
          maxWorkers: 1,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
