import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import { dropTenants, newTenant, sqlClient, startApp, type TestApp } from './support/harness.js';

/**
 * Several instances provisioning one tenant at the same moment (its first writes arriving
 * everywhere at once) all succeed, and the tenant exists once.
 */
describe('provisioning one tenant from several instances at once', () => {
  let apps: TestApp[] = [];
  // Each tenant is provisioned by three instances at the same moment: sixty concurrent races.
  // Many more would only queue for pool connections (connect timeouts on a loaded machine,
  // which is not what this test is about).
  const tenants = Array.from({ length: 20 }, () => newTenant('race'));

  beforeAll(async () => {
    apps = await Promise.all([startApp(), startApp(), startApp()]);
  });

  afterAll(async () => {
    await Promise.all(apps.map((a) => a.stop()));
    await dropTenants(...tenants);
  });

  it('succeeds on every instance, and leaves one row per tenant', async () => {
    const results = await Promise.allSettled(
      tenants.flatMap((t) => apps.map((a) => a.app.services.tenants.provision(t as TenantId))),
    );
    const failures = results.filter((r) => r.status === 'rejected');
    expect(failures.map((f) => String((f as PromiseRejectedResult).reason))).toEqual([]);
    const c = await sqlClient();
    try {
      const { rows } = await c.query(
        'select tenant_id, count(*)::int as n from auditgraph.tenants where tenant_id = any($1) group by tenant_id',
        [tenants],
      );
      expect(rows).toHaveLength(tenants.length);
      expect(rows.every((r) => r.n === 1)).toBe(true);
    } finally {
      await c.end();
    }
  });
});
