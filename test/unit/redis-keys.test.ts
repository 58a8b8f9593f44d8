import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { TenantId } from '../../src/domain/tenant.js';
import { TOPICS } from '../../src/realtime/topics.js';
import { RedisKeys } from '../../src/redis/client.js';

const keys = new RedisKeys('ag:');
const tenantId = fc.stringMatching(/^[a-z][a-z0-9_]{0,39}$/).map((t) => t as TenantId);

/** Every name the service derives from a tenant id, by what it is. */
function tenantNames(t: TenantId): [string, string][] {
  return [
    ['stream', keys.tenant(t, 'dlq')],
    ['parked', keys.tenant(t, 'dlq', 'parked')],
    ['index', keys.tenant(t, 'dlq', 'index')],
    ['rate', `${keys.rateLimit('rate')}:${t}`],
    ['burst', `${keys.rateLimit('burst')}:${t}`],
    ...TOPICS.map((topic): [string, string] => [topic, keys.realtimeChannel(t, topic)]),
  ];
}

const SERVICE_NAMES = [
  keys.service('deadletters', 'tenants'),
  keys.service('deadletters', 'depth'),
  keys.service('cluster', 'instances'),
  keys.service('apikeys', 'revoked'),
];

describe('Redis names', () => {
  it('no two (tenant, name) pairs share a name, and no tenant name is a name of the service', () => {
    fc.assert(
      fc.property(tenantId, tenantId, (a, b) => {
        for (const [kindA, nameA] of tenantNames(a)) {
          expect(SERVICE_NAMES).not.toContain(nameA);
          for (const [kindB, nameB] of tenantNames(b)) {
            if (nameA === nameB) expect([a, kindA]).toEqual([b, kindB]);
          }
        }
      }),
      { numRuns: 2_000 },
    );
    // The words the service itself uses, as tenants, the case that once collided.
    for (const t of ['tenants', 'depth', 'index', 'parked', 'dlq', 't', 'cluster', 'inbox']) {
      for (const [, name] of tenantNames(t as TenantId)) expect(SERVICE_NAMES).not.toContain(name);
    }
  });

  it('refuses to build a name from a string that is not a tenant id', () => {
    for (const bad of ['', 'a:b', 'Tenants', '1a', 'a*', `a${'b'.repeat(40)}`]) {
      expect(() => keys.tenant(bad as TenantId, 'dlq')).toThrow(/not a tenant id/);
      expect(() => keys.realtimeChannel(bad as TenantId, 'flushCompleted')).toThrow();
    }
    expect(() => keys.service('t' as never, 'x')).toThrow(/not a service area/);
  });
});
