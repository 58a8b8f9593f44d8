import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';

/** loadConfig's ConfigError, or a failure if it did not throw one. */
function problemsOf(env: Record<string, string | undefined>): string[] {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('loadConfig accepted an invalid environment');
}

const PG = 'postgres://root@127.0.0.1:5432/auditgraph';

describe('loadConfig', () => {
  it('reports every bad variable at once, each by name', () => {
    const problems = problemsOf({
      PORT: 'eighty',
      DATABASE_POOL_SIZE: '0',
      LOG_LEVEL: 'loud',
      CURSOR_SECRET: 'too-short',
      TENANT_AUTO_PROVISION: 'maybe',
      REDIS_URL: 'http://127.0.0.1:6379',
      MAX_EVENTS_PER_CALL: '1.5',
    });
    const named = problems.map((p) => p.split(':')[0]);
    expect(named).toEqual(
      expect.arrayContaining([
        'PORT',
        'DATABASE_POOL_SIZE',
        'LOG_LEVEL',
        'CURSOR_SECRET',
        'TENANT_AUTO_PROVISION',
        'REDIS_URL',
        'MAX_EVENTS_PER_CALL',
      ]),
    );
    expect(problems).toHaveLength(7);
  });

  it('names all bad variables in the error message too', () => {
    try {
      loadConfig({ PORT: '70000', BATCH_SIZE: '-1' });
      expect.unreachable('loadConfig accepted PORT=70000');
    } catch (err) {
      expect((err as Error).message).toMatch(/PORT/);
      expect((err as Error).message).toMatch(/BATCH_SIZE/);
    }
  });

  it('rejects a DATABASE_URL that is not postgres:// or postgresql://', () => {
    expect(problemsOf({ DATABASE_URL: 'mysql://root@127.0.0.1/db', AUTH_MODE: 'dev' })).toEqual([
      expect.stringMatching(/^DATABASE_URL:/),
    ]);
    expect(
      loadConfig({ DATABASE_URL: 'postgresql://root@127.0.0.1/db', AUTH_MODE: 'dev' }).database,
    ).toMatchObject({ kind: 'pg', url: 'postgresql://root@127.0.0.1/db' });
  });

  it('rejects an AUTH_MODE it does not implement', () => {
    expect(problemsOf({ AUTH_MODE: 'none' })).toEqual([expect.stringMatching(/^AUTH_MODE:/)]);
  });

  // With servers the default is key authentication; dev mode (the tenant
  // from a header, nothing authenticated) only when asked for by name.
  it('defaults to AUTH_MODE=keys when DATABASE_URL is set', () => {
    expect(loadConfig({ DATABASE_URL: PG }).authMode).toBe('keys');
    expect(loadConfig({ DATABASE_URL: PG, AUTH_MODE: 'dev' }).authMode).toBe('dev');
    expect(loadConfig({ AUTH_MODE: 'keys' }).authMode).toBe('keys');
  });

  it('refuses a write rate limit that no call of MAX_EVENTS_PER_CALL events could pass', () => {
    const problems = problemsOf({
      RATE_LIMIT_EVENTS_PER_SECOND: '100',
      RATE_LIMIT_BURST_EVENTS: '100',
      MAX_EVENTS_PER_CALL: '1000',
    });
    expect(problems).toEqual([expect.stringMatching(/^RATE_LIMIT_EVENTS_PER_SECOND:/)]);
    expect(
      loadConfig({ RATE_LIMIT_EVENTS_PER_SECOND: '0', MAX_EVENTS_PER_CALL: '100000' })
        .rateLimitEventsPerSecond,
    ).toBe(0);
  });

  it('reports a check across variables beside every bad variable, at once', () => {
    const problems = problemsOf({
      RATE_LIMIT_EVENTS_PER_SECOND: '100',
      RATE_LIMIT_BURST_EVENTS: '100',
      MAX_EVENTS_PER_CALL: '1000',
      HTTP_HEADERS_TIMEOUT_MS: '90000',
      HTTP_REQUEST_TIMEOUT_MS: '30000',
      PORT: 'eighty',
      LOG_LEVEL: 'loud',
    });
    expect(problems.map((p) => p.split(':')[0]).sort()).toEqual([
      'HTTP_HEADERS_TIMEOUT_MS',
      'LOG_LEVEL',
      'PORT',
      'RATE_LIMIT_EVENTS_PER_SECOND',
    ]);
    // A check whose own variable is bad is not made: that variable is reported already.
    expect(
      problemsOf({ RATE_LIMIT_EVENTS_PER_SECOND: 'lots', MAX_EVENTS_PER_CALL: '1000' }),
    ).toEqual([expect.stringMatching(/^RATE_LIMIT_EVENTS_PER_SECOND: /)]);
  });

  it('caps retention and partitions by default, and checks them against each other', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      maxRetentionDays: 3660,
      maxPartitionsPerTenant: 160,
      maxNewPartitionsPerCall: 24,
      readWindowPartitions: 6,
    });
    // RETENTION_DAYS above the ceiling, a ceiling of partitions too low for the retention
    // ceiling, and an unrelated bad variable: all three at once.
    const problems = problemsOf({
      RETENTION_DAYS: '36500',
      MAX_PARTITIONS_PER_TENANT: '100',
      PORT: 'eighty',
    });
    expect(problems.map((p) => p.split(':')[0]).sort()).toEqual([
      'MAX_PARTITIONS_PER_TENANT',
      'PORT',
      'RETENTION_DAYS',
    ]);
    expect(problems.find((p) => p.startsWith('RETENTION_DAYS'))).toContain('MAX_RETENTION_DAYS');
    // Raising one ceiling asks for the other to follow.
    expect(problemsOf({ MAX_RETENTION_DAYS: '36500', RETENTION_DAYS: '36500' })).toEqual([
      expect.stringMatching(/^MAX_PARTITIONS_PER_TENANT: 160 cannot hold the 1305 months/),
    ]);
    expect(
      loadConfig({
        MAX_RETENTION_DAYS: '36500',
        RETENTION_DAYS: '36500',
        MAX_PARTITIONS_PER_TENANT: '0',
      }).maxPartitionsPerTenant,
    ).toBe(0);
  });

  it('defaults to the embedded database, dev auth and auto-provisioning with no DATABASE_URL', () => {
    const c = loadConfig({});
    expect(c.database).toEqual({ kind: 'pglite', dataDir: './.data/pglite' });
    expect(c.authMode).toBe('dev');
    expect(c.tenantAutoProvision).toBe(true);
  });

  it('uses the defaults the README documents', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      port: 4000,
      batchSize: 500,
      flushIntervalMs: 1000,
      commitLingerMs: 2,
      commitTimeoutMs: 10_000,
      bufferCapacity: 10_000,
      bufferMaxBytes: 64 * 1024 * 1024,
      maxEventsPerCall: 1000,
      maxFutureSkewMs: 5 * 60_000,
      partitionsAhead: 3,
      cursorSecret: undefined,
      graphiql: true,
    });
  });

  it('turns auto-provisioning off by default with DATABASE_URL, and uses the pool settings', () => {
    const c = loadConfig({ DATABASE_URL: PG, AUTH_MODE: 'dev' });
    expect(c.tenantAutoProvision).toBe(false);
    expect(c.database).toEqual({
      kind: 'pg',
      url: PG,
      poolSize: 10,
      applicationName: 'auditgraph',
    });
    const sized = loadConfig({
      DATABASE_URL: PG,
      AUTH_MODE: 'dev',
      DATABASE_POOL_SIZE: '2',
      DATABASE_APPLICATION_NAME: 'ag-x',
      TENANT_AUTO_PROVISION: 'on',
    });
    expect(sized.database).toMatchObject({ poolSize: 2, applicationName: 'ag-x' });
    expect(sized.tenantAutoProvision).toBe(true);
  });

  it('treats an empty variable as unset', () => {
    const c = loadConfig({ PORT: '', DATABASE_URL: '', AUTH_MODE: '' });
    expect(c.port).toBe(4000);
    expect(c.database.kind).toBe('pglite');
  });

  it('parses numbers and booleans from strings', () => {
    const c = loadConfig({ PORT: '0', BATCH_SIZE: '7', GRAPHIQL: 'false', RETENTION_DAYS: '30' });
    expect(c).toMatchObject({ port: 0, batchSize: 7, graphiql: false, retentionDays: 30 });
  });
});

describe('token settings (AUTH_MODE jwt, keys+jwt)', () => {
  const good = {
    AUTH_MODE: 'jwt',
    JWT_JWKS_URL: 'https://sso.example.com/certs',
    JWT_ISSUER: 'https://sso.example.com',
    JWT_AUDIENCE: 'auditgraph',
  };
  it('asks for the issuer, the audience and one source of keys, all at once', () => {
    let message = '';
    try {
      loadConfig({ AUTH_MODE: 'jwt' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain('JWT_JWKS_URL');
    expect(message).toContain('JWT_ISSUER');
    expect(message).toContain('JWT_AUDIENCE');
    expect(() => loadConfig({ ...good, JWT_PUBLIC_KEY_FILE: '/k.pem' })).toThrow(/JWT_JWKS_URL/);
    expect(loadConfig(good).jwt).toMatchObject({ issuer: good.JWT_ISSUER, tenantClaim: 'tenant' });
    expect(loadConfig({ ...good, AUTH_MODE: 'keys' }).jwt).toBeNull();
  });
  it('accepts asymmetric algorithms only', () => {
    for (const alg of ['HS256', 'none', 'RS256,HS512']) {
      expect(() => loadConfig({ ...good, JWT_ALGORITHMS: alg }), alg).toThrow(/JWT_ALGORITHMS/);
    }
    expect(loadConfig({ ...good, JWT_ALGORITHMS: 'ES256, EdDSA' }).jwt?.algorithms).toEqual([
      'ES256',
      'EdDSA',
    ]);
  });
});
