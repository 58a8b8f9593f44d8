import { createHmac, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, exportSPKI, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import {
  CREATE,
  dropTenants,
  event,
  graphqlClient,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { createKey } from './support/keys.js';
import { wsClient, wsSubscribe } from './support/realtime.js';

/**
 * AUTH_MODE=jwt and keys+jwt: people sign in with tokens verified against a JWKS served on
 * loopback (as an OIDC provider serves its jwks_uri). Every way a token can be wrong is
 * UNAUTHENTICATED; the tenant claim is looked up, never trusted; the subject is the actor of the
 * access records; a new signing key is picked up without a restart; a subscription ends when its
 * token expires.
 */

const ISSUER = 'https://login.example.test/';
const AUDIENCE = 'auditgraph';

type Keys = Awaited<ReturnType<typeof generateKeyPair>>;
let rsa: Keys;
let stranger: Keys;
let jwks: JWK[] = [];
let jwksServer: Server;
let jwksUrl: string;
let t: TestApp;
let both: TestApp;
const tenant = newTenant('jwt');
const other = newTenant('jwtother');

async function publicJwk(keys: Keys, kid: string, alg: string): Promise<JWK> {
  return { ...(await exportJWK(keys.publicKey)), kid, alg, use: 'sig' };
}

interface TokenOptions {
  keys?: Keys;
  kid?: string;
  alg?: string;
  iss?: string;
  aud?: string;
  exp?: number;
  sub?: string;
  claims?: Record<string, unknown>;
}

/** A token as the provider would issue it; each option spoils one thing. */
function token(o: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ tenant, scope: 'events:read events:write', ...o.claims })
    .setProtectedHeader({ alg: o.alg ?? 'RS256', kid: o.kid ?? 'k1' })
    .setIssuer(o.iss ?? ISSUER)
    .setAudience(o.aud ?? AUDIENCE)
    .setSubject(o.sub ?? 'alice@example.test')
    .setIssuedAt(now)
    .setExpirationTime(o.exp ?? now + 600)
    .sign((o.keys ?? rsa).privateKey);
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

const READ = '{ auditEvents(first: 5) { edges { node { eventId } } } }';

/** The first error of a read with this bearer value, and the HTTP status it came with. */
async function refusal(app: TestApp, bearerValue: string) {
  const c = graphqlClient(app.url);
  const { status, body } = await c.raw(
    null,
    { query: READ },
    { authorization: `Bearer ${bearerValue}`, accept: 'application/graphql-response+json' },
  );
  return { status, error: body.errors?.[0] as { message: string; extensions: { code: string } } };
}

const as = (app: TestApp, bearerValue: string) => {
  const c = graphqlClient(app.url);
  return async (query: string, variables?: Record<string, unknown>) => {
    const { body } = await c.raw(
      null,
      { query, variables },
      { authorization: `Bearer ${bearerValue}` },
    );
    if (body.errors) throw new Error(JSON.stringify(body.errors));
    return body.data as Record<string, any>;
  };
};

beforeAll(async () => {
  rsa = await generateKeyPair('RS256', { extractable: true });
  stranger = await generateKeyPair('RS256', { extractable: true });
  jwks = [await publicJwk(rsa, 'k1', 'RS256')];
  jwksServer = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: jwks }));
  });
  await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
  jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
  const env = {
    JWT_JWKS_URL: jwksUrl,
    JWT_ISSUER: ISSUER,
    JWT_AUDIENCE: AUDIENCE,
    JWT_CLOCK_TOLERANCE_S: '0',
    JWT_JWKS_COOLDOWN_MS: '0',
    TENANT_AUTO_PROVISION: 'false',
    AUTH_RECHECK_MS: '200',
  };
  t = await startApp({ ...env, AUTH_MODE: 'jwt' });
  both = await startApp({ ...env, AUTH_MODE: 'keys+jwt' });
  await t.app.services.tenants.provision(tenant as TenantId);
  await t.app.services.tenants.provision(other as TenantId);
});
afterAll(async () => {
  await t?.stop();
  await both?.stop();
  jwksServer?.close();
  await dropTenants(tenant, other);
});

describe('AUTH_MODE=jwt', () => {
  it('a valid token reads and writes its tenant, and its subject is the actor of the access record', async () => {
    const gql = as(t, await token({ sub: 'alice@example.test' }));
    const e = event({ id: randomUUID(), correlationId: 'jwt' });
    const w = await gql(CREATE, { input: { events: [e] } });
    expect(w.createAuditEvents.events[0].status).toBe('STORED');
    const r = await gql(READ);
    expect(r.auditEvents.edges.map((x: any) => x.node.eventId)).toContain(e.id);
    // /export takes the same token.
    const exp = await fetch(t.url.replace(/\/graphql$/, '/export'), {
      headers: { authorization: `Bearer ${await token()}` },
    });
    expect(exp.status).toBe(200);
    expect(await exp.text()).toContain(e.id);
    const sql = await sqlClient();
    try {
      const deadline = Date.now() + 5_000;
      let actors: string[] = [];
      while (Date.now() < deadline) {
        const rows = await sql.query(
          `select actor_type, actor_id from "t_${tenant}".audit_events where event_type = 'auditgraph.access.read'`,
        );
        actors = rows.rows.map((x) => `${x.actor_type}:${x.actor_id}`);
        if (actors.length > 0) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      expect(actors).toContain('user:alice@example.test');
    } finally {
      await sql.end();
    }
  });

  it('refuses every spoiled token with UNAUTHENTICATED (401), saying why where it can', async () => {
    const now = Math.floor(Date.now() / 1000);
    const [h, p] = (await token()).split('.');
    const good = await token();
    const tampered = `${h}.${b64({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), tenant: other })}.${good.split('.')[2]}`;
    // HS256 "signed" with the public key's PEM as the secret: the classic algorithm confusion.
    const pem = await exportSPKI(rsa.publicKey);
    const hsInput = `${b64({ alg: 'HS256', kid: 'k1', typ: 'JWT' })}.${b64({ tenant, iss: ISSUER, aud: AUDIENCE, sub: 'x', exp: now + 600 })}`;
    const hs256 = `${hsInput}.${createHmac('sha256', pem).update(hsInput).digest('base64url')}`;
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ tenant, iss: ISSUER, aud: AUDIENCE, sub: 'x', exp: now + 600 })}.`;
    const cases: [string, string, RegExp][] = [
      ['expired', await token({ exp: now - 5 }), /expired/],
      ['wrong issuer', await token({ iss: 'https://evil.test/' }), /iss/],
      ['wrong audience', await token({ aud: 'someone-else' }), /aud/],
      ['HS256 with the public key', hs256, /not valid/],
      ['alg none', none, /not valid/],
      ['tampered payload', tampered, /not valid/],
      ['unknown kid', await token({ keys: stranger, kid: 'k9' }), /no key/],
      ['known kid, another key', await token({ keys: stranger }), /not valid/],
      [
        'no exp',
        await new SignJWT({ tenant })
          .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .setSubject('x')
          .sign(rsa.privateKey),
        /exp/,
      ],
      ['not a token', 'agk_notakey', /not valid/],
    ];
    for (const [what, bearerValue, why] of cases) {
      const r = await refusal(t, bearerValue);
      expect(r.error?.extensions.code, what).toBe('UNAUTHENTICATED');
      expect(r.error.message, what).toMatch(why);
      expect(r.status, what).toBe(401);
    }
    // Negative control: the same request with a good token is served.
    expect((await refusal(t, good)).error).toBeUndefined();
  });

  it('looks the tenant claim up: unknown is UNKNOWN_TENANT, a malformed one is refused', async () => {
    const unknown = await refusal(t, await token({ claims: { tenant: 'no_such_tenant_x' } }));
    expect(unknown.error.extensions.code).toBe('UNKNOWN_TENANT');
    const bad = await refusal(t, await token({ claims: { tenant: 'public"; drop schema x; --' } }));
    expect(bad.error.extensions.code).toBe('UNAUTHENTICATED');
    const missing = await refusal(t, await token({ claims: { tenant: undefined } }));
    expect(missing.error.extensions.code).toBe('UNAUTHENTICATED');
  });

  it('grants the scopes of `scope` or `scp` only', async () => {
    const readOnly = as(t, await token({ claims: { scope: 'events:read' } }));
    await expect(readOnly(CREATE, { input: { events: [event({})] } })).rejects.toThrow(/FORBIDDEN/);
    const scp = as(t, await token({ claims: { scope: undefined, scp: ['events:read'] } }));
    expect((await scp(READ)).auditEvents).toBeDefined();
  });

  it('picks up a new signing key from the JWKS without a restart', async () => {
    const ec = await generateKeyPair('ES256', { extractable: true });
    const before = await refusal(t, await token({ keys: ec, kid: 'k2', alg: 'ES256' }));
    expect(before.error.extensions.code).toBe('UNAUTHENTICATED');
    jwks = [...jwks, await publicJwk(ec, 'k2', 'ES256')];
    const after = await refusal(t, await token({ keys: ec, kid: 'k2', alg: 'ES256' }));
    expect(after.error).toBeUndefined();
  });

  it('ends a subscription when its token expires, over graphql-ws', async () => {
    const exp = Math.floor(Date.now() / 1000) + 2;
    const c = wsClient(t.url, { authorization: `Bearer ${await token({ exp })}` });
    try {
      const sub = wsSubscribe(
        c,
        'flushCompleted',
        'subscription { flushCompleted(filter: { correlationId: "nobody-writes-this" }) { __typename ... on SubscriptionInterruptedError { reason message } } }',
      );
      expect((await sub.next()).__typename).toBe('SubscriptionReady');
      const last = await sub.next();
      expect(last).toMatchObject({
        __typename: 'SubscriptionInterruptedError',
        reason: 'UNAUTHENTICATED',
      });
      expect(last.message).toContain('token has expired');
      expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000);
    } finally {
      await c.dispose();
    }
  });
});

describe('AUTH_MODE=keys+jwt', () => {
  it('takes API keys for services and tokens for people side by side', async () => {
    const key = await createKey(both, tenant, ['events:read']);
    expect((await as(both, key.secret)(READ)).auditEvents).toBeDefined();
    expect((await as(both, await token())(READ)).auditEvents).toBeDefined();
    expect((await refusal(both, 'agk_notakey')).error.extensions.code).toBe('UNAUTHENTICATED');
    expect((await refusal(both, await token({ aud: 'x' }))).error.extensions.code).toBe(
      'UNAUTHENTICATED',
    );
  });
});
