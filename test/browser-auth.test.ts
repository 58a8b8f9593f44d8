import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantId } from '../src/domain/tenant.js';
import { writeEvents } from './support/clients.js';
import { dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * A person in a real browser (headless Chromium): signing in to the explorer with a token from
 * an identity provider (its JWKS on loopback), the tail ending when the token does; and a
 * dashboard on another origin calling /graphql, SSE and /export, allowed only from the origins
 * CORS_ORIGINS lists.
 */

const CHROMIUM = '/usr/bin/chromium';
const ISSUER = 'https://login.example.test/';

let browser: Browser;
let jwtApp: TestApp;
let corsApp: TestApp;
let idp: Server;
const dashboards: Server[] = [];
let keys: Awaited<ReturnType<typeof generateKeyPair>>;
const tenant = newTenant('brauth');
let written: string[] = [];

/** A server for one origin, serving an empty page (the dashboard's code is run in it). */
async function origin(): Promise<string> {
  const s = createServer((_req, res) =>
    res
      .writeHead(200, { 'content-type': 'text/html' })
      .end('<!doctype html><title>dashboard</title>'),
  );
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  dashboards.push(s);
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

let jwks: object[] = [];

function token(
  exp: number,
  o: { iss?: string; aud?: string; kid?: string; signer?: typeof keys } = {},
): Promise<string> {
  return new SignJWT({ tenant, scope: 'events:read' })
    .setProtectedHeader({ alg: 'ES256', kid: o.kid ?? 'b1' })
    .setIssuer(o.iss ?? ISSUER)
    .setAudience(o.aud ?? 'auditgraph')
    .setSubject('carol@example.test')
    .setExpirationTime(exp)
    .sign((o.signer ?? keys).privateKey);
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const inTenMinutes = () => Math.floor(Date.now() / 1000) + 600;

/** Signs in to the explorer with `credential`; answers the table's ids, or the error shown. */
async function signIn(page: Page, credential: string): Promise<string[] | string> {
  await page.goto(`${jwtApp.url.replace(/\/graphql$/, '')}/explorer`);
  await page.evaluate(() => sessionStorage.clear());
  await page.goto(`${jwtApp.url.replace(/\/graphql$/, '')}/explorer`);
  await page.fill('#credential', credential);
  await page.keyboard.press('Enter');
  await page.waitForFunction(
    () =>
      document.getElementById('status')?.className.includes('error') ||
      document.querySelectorAll('#rows tr').length > 0,
  );
  const status = await page.$eval('#status', (e) => ({
    error: e.className.includes('error'),
    text: e.textContent ?? '',
  }));
  return status.error ? status.text : rows(page);
}

let allowed: string;
let other: string;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing (bash .ci/run installs it)`);
  keys = await generateKeyPair('ES256', { extractable: true });
  jwks = [{ ...(await exportJWK(keys.publicKey)), kid: 'b1', alg: 'ES256' }];
  idp = createServer((_req, res) =>
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: jwks })),
  );
  await new Promise<void>((r) => idp.listen(0, '127.0.0.1', r));
  allowed = await origin();
  other = await origin();
  jwtApp = await startApp({
    AUTH_MODE: 'jwt',
    JWT_JWKS_URL: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks`,
    JWT_ISSUER: ISSUER,
    JWT_AUDIENCE: 'auditgraph',
    JWT_CLOCK_TOLERANCE_S: '0',
    JWT_JWKS_COOLDOWN_MS: '0',
    TENANT_AUTO_PROVISION: 'false',
  });
  corsApp = await startApp({ CORS_ORIGINS: allowed });
  await jwtApp.app.services.tenants.provision(tenant as TenantId);
  written = (await writeEvents(corsApp, tenant, 12, 'browser-auth')).map((w) => w.eventId);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox'],
  });
});
afterAll(async () => {
  await browser?.close();
  await jwtApp?.stop();
  await corsApp?.stop();
  idp?.close();
  for (const s of dashboards) s.close();
  await dropTenants(tenant);
});

async function rows(page: Page): Promise<string[]> {
  return page.$$eval('#rows tr', (trs) => trs.map((tr) => (tr as HTMLElement).dataset.eventId!));
}

describe('signing in with a token, in the browser', () => {
  it('a valid token shows its tenant; an expired one is told so', async () => {
    const page = await browser.newPage();
    try {
      await page.goto(`${jwtApp.url.replace(/\/graphql$/, '')}/explorer`);
      expect(await page.textContent('#signin label')).toContain('Token');
      await page.fill('#credential', await token(Math.floor(Date.now() / 1000) + 600));
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 12);
      expect(await rows(page)).toEqual(expect.arrayContaining(written));
      await page.click('#signout');
      await page.fill('#credential', await token(Math.floor(Date.now() / 1000) - 60));
      await page.keyboard.press('Enter');
      await page.waitForFunction(() =>
        document.getElementById('status')?.className.includes('error'),
      );
      expect(await page.textContent('#status')).toContain('expired');
    } finally {
      await page.close();
    }
  });

  it('refuses every spoiled token on the page, and takes a key the provider rotated in', async () => {
    const page = await browser.newPage();
    try {
      const good = await token(inTenMinutes());
      const [h, p, sig] = good.split('.');
      const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
      const stranger = await generateKeyPair('ES256', { extractable: true });
      const spoiled: [string, string][] = [
        ['wrong issuer', await token(inTenMinutes(), { iss: 'https://evil.test/' })],
        ['wrong audience', await token(inTenMinutes(), { aud: 'other' })],
        ['wrong algorithm (none)', `${b64({ alg: 'none' })}.${p}.`],
        ['tampered', `${h}.${b64({ ...claims, scope: 'events:read audit:admin' })}.${sig}`],
        ['unknown kid', await token(inTenMinutes(), { kid: 'zz', signer: stranger })],
      ];
      for (const [what, bad] of spoiled) {
        const shown = await signIn(page, bad);
        expect(typeof shown, what).toBe('string');
        expect(shown, what).toMatch(/token/);
      }
      // Negative control, then a rotation: a token of a new key works once the JWKS has it.
      expect(await signIn(page, good)).toEqual(expect.arrayContaining(written));
      const next = await generateKeyPair('ES256', { extractable: true });
      const rotated = await token(inTenMinutes(), { kid: 'b2', signer: next });
      expect(typeof (await signIn(page, rotated))).toBe('string');
      jwks = [...jwks, { ...(await exportJWK(next.publicKey)), kid: 'b2', alg: 'ES256' }];
      expect(await signIn(page, rotated)).toEqual(expect.arrayContaining(written));
    } finally {
      await page.close();
    }
  });

  it('ends the live tail when the token expires, saying why', async () => {
    const page = await browser.newPage();
    try {
      await page.goto(`${jwtApp.url.replace(/\/graphql$/, '')}/explorer`);
      await page.fill('#credential', await token(Math.floor(Date.now() / 1000) + 3));
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 12);
      await page.check('#tail');
      await page.waitForFunction(
        () => document.getElementById('tail-state')?.textContent === 'live',
      );
      await page.waitForFunction(
        () =>
          document.getElementById('tail-state')?.textContent?.startsWith('ended (UNAUTHENTICATED)'),
        undefined,
        { timeout: 8_000 },
      );
      expect(await page.textContent('#tail-state')).toContain('token has expired');
    } finally {
      await page.close();
    }
  });
});

/** What a page on `from` gets when it calls the service: the data, or the browser's refusal. */
async function crossOrigin(from: string, app: TestApp) {
  const page = await browser.newPage();
  try {
    await page.goto(from);
    return await page.evaluate(
      async ({ url, tenant }) => {
        const call = async (path: string, init: RequestInit) => {
          try {
            const r = await fetch(url.replace(/\/graphql$/, path), init);
            return { ok: true, status: r.status, text: (await r.text()).slice(0, 200) };
          } catch (err) {
            return { ok: false, status: 0, text: String(err) };
          }
        };
        const headers = { 'content-type': 'application/json', 'x-tenant-id': tenant };
        const query = JSON.stringify({ query: '{ auditEvents(first: 1) { edges { cursor } } }' });
        return {
          graphql: await call('/graphql', { method: 'POST', headers, body: query }),
          sse: await call('/graphql', {
            method: 'POST',
            headers: { ...headers, accept: 'text/event-stream' },
            body: JSON.stringify({ query: 'query { auditStats { stored } }' }),
          }),
          export: await call('/export', { headers: { 'x-tenant-id': tenant } }),
        };
      },
      { url: app.url, tenant },
    );
  } finally {
    await page.close();
  }
}

describe('CORS in the browser', () => {
  it('lets a listed origin call /graphql, SSE and /export, and no other', async () => {
    const ok = await crossOrigin(allowed, corsApp);
    expect(ok.graphql).toMatchObject({ ok: true, status: 200 });
    expect(ok.graphql.text).toContain('auditEvents');
    expect(ok.sse).toMatchObject({ ok: true, status: 200 });
    expect(ok.export).toMatchObject({ ok: true, status: 200 });
    const refused = await crossOrigin(other, corsApp);
    for (const route of ['graphql', 'sse', 'export'] as const) {
      expect(refused[route].ok, route).toBe(false);
      expect(refused[route].text, route).toContain('Failed to fetch');
    }
  });
});
