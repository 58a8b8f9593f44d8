import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { dropTenants, newTenant, type TestApp } from './support/harness.js';
import { bearer, createKey, keyClient, startKeysApp, type TestKey } from './support/keys.js';

/**
 * What a client without a key, or a slow one, can cost the service before anything is decided
 * (AUTH_MODE=keys): the caller is known from the headers before the body is read, WebSocket
 * messages are bounded (and much smaller ones before the connection is acknowledged), slow
 * senders are cut after HTTP_HEADERS_TIMEOUT_MS / HTTP_REQUEST_TIMEOUT_MS, idle keep-alive
 * connections after HTTP_KEEP_ALIVE_TIMEOUT_MS, and MAX_HTTP_CONNECTIONS bounds what is open.
 */

const apps: TestApp[] = [];
const tenants: string[] = [];

afterAll(async () => {
  await Promise.all(apps.map((a) => a.stop()));
  await dropTenants(...tenants);
});

async function app(env: Record<string, string> = {}): Promise<TestApp> {
  const a = await startKeysApp(env);
  apps.push(a);
  return a;
}

async function key(a: TestApp): Promise<TestKey> {
  const tenant = newTenant('door');
  tenants.push(tenant);
  return createKey(a, tenant, ['events:write', 'events:read']);
}

const port = (a: TestApp) => Number(new URL(a.url).port);

/**
 * Starts a POST /graphql that announces `total` bytes, sends `first` of them and then nothing;
 * resolves with the answer if the server gives one before the body is complete.
 */
function partialPost(
  a: TestApp,
  total: number,
  first: number,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: port(a),
        path: '/graphql',
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'application/graphql-response+json',
          'content-length': total,
          ...headers,
        },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => {
          req.destroy();
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body,
            ms: performance.now() - started,
          });
        });
      },
    );
    req.on('error', reject);
    setTimeout(() => {
      req.destroy();
      reject(new Error('no answer before the body was complete'));
    }, 5_000).unref();
    // A body of ~1.6M short variable strings, as an attacker would send: costly to parse.
    const chunk = Buffer.from(
      `{"query":"{__typename}","variables":{"v":[${'"x",'.repeat(first / 4)}`,
    );
    req.write(chunk.subarray(0, first));
  });
}

describe('a POST /graphql without a valid key', () => {
  let a: TestApp;
  beforeAll(async () => {
    a = await app();
  });

  it('is answered 401 before its body is read, eight at once', async () => {
    const BIG = 15_700_000;
    const answers = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        partialPost(a, BIG, 64 * 1024, i % 2 ? { authorization: 'Bearer agk_unknown' } : {}),
      ),
    );
    for (const r of answers) {
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Bearer');
      expect(r.headers.connection).toBe('close');
      expect(r.headers['content-type']).toMatch(/^application\/graphql-response\+json/);
      const body = JSON.parse(r.body);
      expect(body.data).toBeUndefined();
      expect(body.errors[0].extensions).toMatchObject({
        code: 'UNAUTHENTICATED',
        type: 'UnauthenticatedError',
        retryable: false,
      });
      // Answered while 99.6 % of the announced body was never sent.
      expect(r.ms).toBeLessThan(2_000);
    }
    console.info(
      `unauthenticated 15.7 MB POST ×8: answered after ${Math.max(...answers.map((r) => r.ms)).toFixed(0)} ms, 64 KiB of each sent`,
    );
  });

  it('naming a tenant beside a valid key is 403 before the body, too', async () => {
    const k = await key(a);
    const r = await partialPost(a, 1_000_000, 1024, {
      ...bearer(k.secret),
      'x-tenant-id': k.tenant!,
    });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body).errors[0].extensions.code).toBe('FORBIDDEN');
  });

  it('while a caller with a key is served as before, and GraphiQL still loads', async () => {
    const k = await key(a);
    const ok = await keyClient(a, k.secret).gql('{ auditStats { __typename } }');
    expect(ok.auditStats.__typename).toBe('AuditStats');
    const page = await fetch(a.url, { headers: { accept: 'text/html' } });
    expect(page.status).toBe(200);
    expect(await page.text()).toMatch(/graphiql/i);
    // A body over MAX_REQUEST_BYTES from a caller with a key is still 413, unread.
    const big = await partialPost(a, 17 * 1024 * 1024, 1024, bearer(k.secret));
    expect(big.status).toBe(413);
  });
});

/** A raw graphql-transport-ws socket; resolves its close code (and whether it was acknowledged). */
function rawWs(
  a: TestApp,
  messages: (ws: WebSocket) => void,
): Promise<{ code: number; reason: string; acked: boolean; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(a.url.replace(/^http/, 'ws'), 'graphql-transport-ws');
    let acked = false;
    ws.on('open', () => messages(ws));
    ws.on('message', (m) => {
      if (JSON.parse(String(m)).type === 'connection_ack') acked = true;
    });
    ws.on('error', () => {}); // the close event says how it ended
    ws.on('close', (code, reason) =>
      resolve({ code, reason: String(reason), acked, ms: performance.now() - started }),
    );
    setTimeout(() => reject(new Error('the server kept the socket open')), 10_000).unref();
  });
}

describe('WebSocket message limits', () => {
  let a: TestApp;
  let k: TestKey;
  beforeAll(async () => {
    a = await app({ MAX_REQUEST_BYTES: String(1024 * 1024), WS_MAX_INIT_BYTES: '65536' });
    k = await key(a);
  });

  it('closes with 1009 a connection_init over WS_MAX_INIT_BYTES, even with a valid key', async () => {
    // Under MAX_REQUEST_BYTES (1 MiB here): only the limit before the ack stops it.
    const junk = 'x'.repeat(512 * 1024);
    const r = await rawWs(a, (ws) =>
      ws.send(
        JSON.stringify({
          type: 'connection_init',
          payload: { authorization: `Bearer ${k.secret}`, junk },
        }),
      ),
    );
    expect(r).toMatchObject({ code: 1009, acked: false });
    expect(r.reason).toMatch(/WS_MAX_INIT_BYTES/);
    expect(r.ms).toBeLessThan(3_000);
  });

  it('closes with 1009 a message over MAX_REQUEST_BYTES after the ack', async () => {
    const r = await rawWs(a, (ws) => {
      ws.send(
        JSON.stringify({
          type: 'connection_init',
          payload: { authorization: `Bearer ${k.secret}` },
        }),
      );
      ws.once('message', () =>
        ws.send(
          JSON.stringify({
            type: 'subscribe',
            id: '1',
            payload: { query: `{ __typename } # ${'x'.repeat(2 * 1024 * 1024)}` },
          }),
        ),
      );
    });
    expect(r).toMatchObject({ code: 1009, acked: true });
  });

  it('accepts a small connection_init', async () => {
    const r = await rawWs(a, (ws) => {
      ws.send(
        JSON.stringify({
          type: 'connection_init',
          payload: { authorization: `Bearer ${k.secret}` },
        }),
      );
      ws.once('message', () => ws.close(1000));
    });
    expect(r).toMatchObject({ code: 1000, acked: true });
  });
});

/** Resolves when the server closes the socket, with how long that took and what it sent. */
function closedBy(socket: Socket): Promise<{ ms: number; data: string }> {
  const started = performance.now();
  let data = '';
  socket.on('data', (c) => (data += String(c)));
  socket.on('error', () => {});
  return new Promise((resolve, reject) => {
    socket.once('close', () => resolve({ ms: performance.now() - started, data }));
    setTimeout(() => reject(new Error('the server kept the socket open')), 5_000).unref();
  });
}

function open(a: TestApp): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port(a), '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

describe('slow and idle connections', () => {
  let a: TestApp;
  let k: TestKey;
  beforeAll(async () => {
    a = await app({
      HTTP_HEADERS_TIMEOUT_MS: '300',
      HTTP_REQUEST_TIMEOUT_MS: '600',
      HTTP_KEEP_ALIVE_TIMEOUT_MS: '300',
    });
    k = await key(a);
  });

  it('cuts a request whose body trickles in after HTTP_REQUEST_TIMEOUT_MS', async () => {
    const s = await open(a);
    const closed = closedBy(s);
    s.write(
      'POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        `Authorization: Bearer ${k.secret}\r\nContent-Length: 1000\r\n\r\n{"query":`,
    );
    const drip = setInterval(() => s.writable && s.write(' '), 100);
    const r = await closed.finally(() => clearInterval(drip));
    expect(r.ms).toBeLessThan(2_500);
    expect(r.data).toMatch(/^HTTP\/1\.1 408/);
  });

  it('cuts a request whose headers trickle in after HTTP_HEADERS_TIMEOUT_MS', async () => {
    const s = await open(a);
    const closed = closedBy(s);
    s.write('POST /graphql HTTP/1.1\r\nHost: x\r\n');
    const drip = setInterval(() => s.writable && s.write('X-A: b\r\n'), 50);
    const r = await closed.finally(() => clearInterval(drip));
    expect(r.ms).toBeLessThan(2_000);
  });

  it('closes an idle keep-alive connection after HTTP_KEEP_ALIVE_TIMEOUT_MS', async () => {
    const s = await open(a);
    const closed = closedBy(s);
    s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const r = await closed;
    expect(r.data).toMatch(/^HTTP\/1\.1 200/);
    expect(r.ms).toBeLessThan(2_000);
  });
});

describe('MAX_HTTP_CONNECTIONS', () => {
  it('drops connections past the cap at once and serves again once one closes', async () => {
    const a = await app({ MAX_HTTP_CONNECTIONS: '5' });
    const held = await Promise.all(Array.from({ length: 5 }, () => open(a)));
    await new Promise((r) => setTimeout(r, 100)); // the server has accepted all five
    const extra = await open(a);
    const r = await closedBy(extra);
    expect(r.ms).toBeLessThan(1_000);
    expect(r.data).toBe('');
    held[0]!.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const res = await fetch(a.url.replace('/graphql', '/healthz'));
    expect(res.status).toBe(200);
    for (const s of held) s.destroy();
  });
});
