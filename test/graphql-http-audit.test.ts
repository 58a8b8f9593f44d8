import { serverAudits } from 'graphql-http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropTenants, startApp, type TestApp } from './support/harness.js';
import { bearer, createKey, startKeysApp } from './support/keys.js';

/**
 * The GraphQL-over-HTTP spec's server audit (graphql-http's own list): every MUST passes, in both
 * auth modes. In AUTH_MODE=keys the audit's requests carry a valid key, as a real client's do.
 */

let dev: TestApp;
let keys: TestApp;
let secret: string;
const tenant = `audit_${Date.now().toString(36)}`;

beforeAll(async () => {
  [dev, keys] = await Promise.all([startApp(), startKeysApp()]);
  secret = (await createKey(keys, tenant, ['events:read'])).secret;
});

afterAll(async () => {
  await Promise.all([dev?.stop(), keys?.stop()]);
  await dropTenants(tenant);
});

/** Runs every audit against `url`; answers the MUST ones that did not pass, with why. */
async function failedMusts(url: string, headers: Record<string, string> = {}) {
  const fetchFn = (input: RequestInfo | URL, init: RequestInit = {}) => {
    const merged = new Headers(init.headers);
    for (const [k, v] of Object.entries(headers)) merged.set(k, v);
    return fetch(input, { ...init, headers: merged });
  };
  const audits = serverAudits({ url, fetchFn });
  const musts = audits.filter((a) => a.name.startsWith('MUST'));
  expect(musts.length).toBeGreaterThan(10);
  const failed: string[] = [];
  for (const audit of musts) {
    const result = await audit.fn();
    if (result.status !== 'ok') failed.push(`${audit.name}: ${result.reason}`);
  }
  return failed;
}

describe('graphql-http server audit', () => {
  it('passes every MUST in AUTH_MODE=dev', async () => {
    expect(await failedMusts(dev.url)).toEqual([]);
  });

  it('passes every MUST in AUTH_MODE=keys, with a valid key', async () => {
    expect(await failedMusts(keys.url, bearer(secret))).toEqual([]);
  });

  it('can fail: without a key every request is refused from its headers', async () => {
    // Negative control: the audit notices when the server does not answer GraphQL.
    expect((await failedMusts(keys.url)).length).toBeGreaterThan(0);
  });
});
