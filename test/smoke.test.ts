import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  PAGE,
  STATS,
  startApp,
  type TestApp,
} from './support/harness.js';

describe('smoke', () => {
  let t: TestApp;
  const tenant = newTenant('smoke');
  beforeAll(async () => {
    t = await startApp();
  });
  afterAll(async () => {
    await t.stop();
    await dropTenants(tenant);
  });

  it('stores a committed event and pages it back', async () => {
    const r = await t.gql(tenant, CREATE, { input: { events: [event({ correlationId: 'c1' })] } });
    expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    expect(r.createAuditEvents.stored).toBe(1);
    const f = await t.gql(tenant, FLUSH, {});
    expect(f.flushAudit.__typename).toBe('FlushAuditPayload');
    const p = await t.gql(tenant, PAGE, { filter: { correlationId: 'c1' } });
    expect(p.auditEvents.edges).toHaveLength(1);
    const s = await t.gql(tenant, STATS);
    expect(s.auditStats).toMatchObject({ accepted: 1, stored: 1, identityHolds: true });
  });
});
