import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * CORS by allow-list (CORS_ORIGINS) on every route a browser page calls — /graphql, SSE on it,
 * and /export — preflights included; and none at all by default, where yoga alone used to
 * answer any origin, reflected, with `access-control-allow-credentials: true`.
 */

const ALLOWED = 'https://dash.example.com';
const OTHER = 'https://evil.example.net';

let listed: TestApp;
let unlisted: TestApp;
const tenants: string[] = [];
const tenant = () => {
  const id = newTenant('cors');
  tenants.push(id);
  return id;
};

beforeAll(async () => {
  listed = await startApp({ CORS_ORIGINS: `${ALLOWED}, http://localhost:5173` });
  unlisted = await startApp();
});
afterAll(async () => {
  await listed?.stop();
  await unlisted?.stop();
  await dropTenants(...tenants);
});

const base = (app: TestApp) => app.url.replace(/\/graphql$/, '');

/** A browser's preflight for a POST with the headers a dashboard sends. */
const preflight = (app: TestApp, path: string, origin: string) =>
  fetch(`${base(app)}${path}`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': path === '/export' ? 'GET' : 'POST',
      'access-control-request-headers': 'authorization, content-type, x-tenant-id',
    },
  });

const query = (app: TestApp, id: string, origin: string, accept = 'application/json') =>
  fetch(app.url, {
    method: 'POST',
    headers: { origin, 'content-type': 'application/json', 'x-tenant-id': id, accept },
    body: JSON.stringify({
      query:
        accept === 'text/event-stream'
          ? 'subscription { flushCompleted { __typename } }'
          : '{ auditEvents(first: 1) { edges { cursor } } }',
    }),
  });

const exportOf = (app: TestApp, id: string, origin: string) =>
  fetch(`${base(app)}/export`, { headers: { origin, 'x-tenant-id': id } });

describe('CORS_ORIGINS', () => {
  it('answers a listed origin’s preflight on /graphql and /export, without credentials', async () => {
    for (const path of ['/graphql', '/export']) {
      const r = await preflight(listed, path, ALLOWED);
      expect(r.status, path).toBe(204);
      expect(r.headers.get('access-control-allow-origin')).toBe(ALLOWED);
      expect(r.headers.get('access-control-allow-methods')).toContain('POST');
      expect(r.headers.get('access-control-allow-headers')).toContain('authorization');
      expect(r.headers.get('access-control-allow-headers')).toContain('x-tenant-id');
      // No cookies are read, so none are asked for.
      expect(r.headers.get('access-control-allow-credentials')).toBeNull();
      expect(r.headers.get('vary')).toContain('Origin');
    }
  });

  it('refuses any other origin’s preflight and gives it no CORS header', async () => {
    for (const path of ['/graphql', '/export']) {
      const r = await preflight(listed, path, OTHER);
      expect(r.status, path).toBe(403);
      expect(r.headers.get('access-control-allow-origin')).toBeNull();
      expect(await r.json()).toEqual({ error: 'origin not allowed (CORS_ORIGINS)' });
    }
  });

  it('puts the listed origin on queries, SSE and /export answers, and nothing for another', async () => {
    const id = tenant();
    await listed.gql(id, CREATE, { input: { events: [event({ correlationId: 'cors' })] } });
    const sse = await query(listed, id, ALLOWED, 'text/event-stream');
    expect(sse.headers.get('content-type')).toContain('text/event-stream');
    expect(sse.headers.get('access-control-allow-origin')).toBe(ALLOWED);
    await sse.body?.cancel();
    const answers = {
      query: [await query(listed, id, ALLOWED), await query(listed, id, OTHER)],
      export: [await exportOf(listed, id, ALLOWED), await exportOf(listed, id, OTHER)],
    };
    for (const [route, [mine, theirs]] of Object.entries(answers)) {
      expect(mine!.status, route).toBe(200);
      expect(mine!.headers.get('access-control-allow-origin'), route).toBe(ALLOWED);
      expect(mine!.headers.get('access-control-expose-headers'), route).toContain('x-request-id');
      // Answered (CORS is the browser's to enforce), but with nothing a browser would accept.
      expect(theirs!.headers.get('access-control-allow-origin'), route).toBeNull();
      await mine!.body?.cancel();
      await theirs!.body?.cancel();
    }
  });

  it('by default lists nobody: no origin gets a CORS header, a preflight is refused', async () => {
    const id = tenant();
    await unlisted.gql(id, CREATE, { input: { events: [event({ correlationId: 'cors' })] } });
    const r = await query(unlisted, id, OTHER);
    expect(r.status).toBe(200);
    expect(r.headers.get('access-control-allow-origin')).toBeNull();
    expect(r.headers.get('access-control-allow-credentials')).toBeNull();
    expect((await preflight(unlisted, '/graphql', OTHER)).status).toBe(403);
    // Same-origin pages send no preflight and need no header: a request without Origin works.
    const same = await unlisted.gql(id, '{ auditEvents(first: 1) { edges { cursor } } }', {});
    expect(same.auditEvents.edges).toHaveLength(1);
  });

  it('takes exact origins only: a wildcard, a path or a bare host is a configuration error', () => {
    for (const bad of [
      '*',
      'https://dash.example.com/',
      'https://dash.example.com/app',
      'dash.example.com',
    ]) {
      expect(() => loadConfig({ CORS_ORIGINS: bad }), bad).toThrow(/CORS_ORIGINS/);
    }
    expect(loadConfig({ CORS_ORIGINS: `${ALLOWED},http://localhost:5173` }).corsOrigins).toEqual([
      ALLOWED,
      'http://localhost:5173',
    ]);
  });
});
