import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeEvents } from './support/clients.js';
import {
  CREATE,
  dropTenants,
  event,
  newTenant,
  startApp,
  type TestApp,
} from './support/harness.js';
import { createKey, startKeysApp } from './support/keys.js';
import { cuttableProxy } from './support/proxy.js';

/**
 * The event explorer at /explorer, used in headless Chromium as a person would: sign in (a
 * tenant id, AUTH_MODE=dev), filter by a correlation id, page forward and back, open an event,
 * verify its month, and watch the live tail. Screenshots at desktop and phone sizes are written
 * to .artifacts/ for a person to look at.
 */

const CHROMIUM = '/usr/bin/chromium';
const SHOTS = '.artifacts';

let t: TestApp;
let keysApp: TestApp;
let browser: Browser;
const tenant = newTenant('explorer');
const other = newTenant('explorerb');
const CORR = `explore-${randomUUID()}`;
let written: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (bash .ci/run does it)`);
  }
  t = await startApp();
  written = (await writeEvents(t, tenant, 150, CORR)).map((w) => w.eventId);
  await writeEvents(t, tenant, 30, `noise-${CORR}`);
  await writeEvents(t, other, 20, CORR);
  keysApp = await startKeysApp();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox'],
  });
  mkdirSync(SHOTS, { recursive: true });
});
afterAll(async () => {
  await browser?.close();
  await t?.stop();
  await keysApp?.stop();
  await dropTenants(tenant, other);
});

const base = (app: TestApp = t) => app.url.replace(/\/graphql$/, '');

/** The event ids in the table, top to bottom, once the status line settles. */
async function rowIds(page: Page): Promise<string[]> {
  await page.waitForFunction(
    () => !document.getElementById('status')?.textContent?.startsWith('Loading'),
  );
  return page.$$eval('#rows tr', (trs) => trs.map((tr) => (tr as HTMLElement).dataset.eventId!));
}

async function signedIn(page: Page, id: string, app: TestApp = t): Promise<void> {
  await page.goto(`${base(app)}/explorer`);
  await page.fill('#credential', id);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#main:not([hidden])');
}

/** Signed in as the tenant, its first page of CORR's events on screen. */
async function showCorrelation(page: Page): Promise<void> {
  await signedIn(page, tenant);
  await page.fill('#f-correlationId', CORR);
  await page.keyboard.press('Enter');
  // The unfiltered page shown at sign-in has 50 rows too: wait for the filtered one, every row
  // of the correlation id (its last cell).
  await page.waitForFunction((corr) => {
    const rows = [...document.querySelectorAll('#rows tr')];
    return rows.length === 50 && rows.every((r) => r.lastElementChild?.textContent === corr);
  }, CORR);
}

describe('the explorer', () => {
  it('is one page with its own bundled script and a strict content security policy', async () => {
    const r = await fetch(`${base()}/explorer`);
    expect(r.status).toBe(200);
    const html = await r.text();
    expect(r.headers.get('content-security-policy')).toContain("script-src 'self'");
    // Nothing from another origin.
    expect(html).not.toMatch(/(src|href)="https?:/);
    const js = await fetch(`${base()}/explorer/app.js`);
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toContain('javascript');
    expect((await js.text()).length).toBeGreaterThan(10_000);
  });

  it('filters by a correlation id: exactly its 150 events, over pages forward and back', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    const external: string[] = [];
    page.on('request', (req) => {
      if (!req.url().startsWith(base()) && !req.url().startsWith(base().replace('http', 'ws'))) {
        external.push(req.url());
      }
    });
    try {
      await showCorrelation(page);
      expect(new URL(page.url()).searchParams.get('correlationId')).toBe(CORR);
      const pages: string[][] = [await rowIds(page)];
      for (let i = 0; i < 2; i++) {
        const last = pages.at(-1)!.at(-1)!;
        await page.click('#next');
        await page.waitForFunction(
          (id) => document.querySelector('#rows tr')?.getAttribute('data-event-id') !== id,
          pages.at(-1)![0],
        );
        pages.push(await rowIds(page));
        expect(pages.at(-1)).not.toContain(last);
      }
      expect(await page.isDisabled('#next')).toBe(true);
      const seen = pages.flat();
      expect(seen).toHaveLength(150);
      expect(new Set(seen)).toEqual(new Set(written));
      // Newest first: the reverse of the order they were written in.
      expect(seen).toEqual([...written].reverse());
      // Back again, to the same pages.
      await page.click('#previous');
      await page.waitForFunction(
        (id) => document.querySelector('#rows tr')?.getAttribute('data-event-id') === id,
        pages[1]![0],
      );
      expect(await rowIds(page)).toEqual(pages[1]);
      await page.click('#previous');
      await page.waitForFunction(
        (id) => document.querySelector('#rows tr')?.getAttribute('data-event-id') === id,
        pages[0]![0],
      );
      expect(await rowIds(page)).toEqual(pages[0]);
      expect(await page.isDisabled('#previous')).toBe(true);
      // The URL is the view: opened again, it shows the same first page.
      await page.goto(page.url());
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length === 50);
      expect(await rowIds(page)).toEqual(pages[0]);
      await page.screenshot({ path: `${SHOTS}/explorer-1280x800.png` });
      expect(external).toEqual([]);
    } finally {
      await ctx.close();
    }
  });

  it('opens an event by keyboard with every field, its data as JSON and its chain position, and verifies its month', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    try {
      await showCorrelation(page);
      await page.focus('#rows tr');
      await page.keyboard.press('ArrowDown');
      await page.keyboard.press('Enter');
      await page.waitForSelector('#detail:not([hidden])');
      const fields = await page.textContent('#detail-fields');
      expect(fields).toContain(written.at(-2)!);
      expect(fields).toContain('chain position');
      expect(fields).toMatch(/hash[0-9a-f]{64}/);
      expect(JSON.parse((await page.textContent('#detail-data'))!)).toEqual(expect.any(Object));
      await page.click('#verify');
      await page.waitForFunction(() =>
        document.getElementById('verify-result')?.textContent?.startsWith('✓'),
      );
      expect(await page.textContent('#verify-result')).toContain('verifies');
      await page.screenshot({ path: `${SHOTS}/explorer-detail-1280x800.png` });
      // Escape closes it, and the row it came from has the focus again.
      await page.keyboard.press('Escape');
      expect(await page.isHidden('#detail')).toBe(true);
      expect(
        await page.evaluate(() => (document.activeElement as HTMLElement).dataset.eventId),
      ).toBe(written.at(-2));
    } finally {
      await ctx.close();
    }
  });

  it('shows an event written while the live tail is on at the top within 1 s, once', async () => {
    const ctx = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const page = await ctx.newPage();
    try {
      await signedIn(page, tenant);
      await page.fill('#f-correlationId', CORR);
      await page.click('#filter-form button[type=submit]');
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length === 50);
      await page.check('#tail');
      await page.waitForFunction(
        () => document.getElementById('tail-state')?.textContent === 'live',
      );
      const id = randomUUID();
      const sent = Date.now();
      await t.gql(tenant, CREATE, { input: { events: [event({ id, correlationId: CORR })] } });
      await page.waitForFunction(
        (x) => document.querySelector('#rows tr')?.getAttribute('data-event-id') === x,
        id,
        { timeout: 1_000 },
      );
      expect(Date.now() - sent).toBeLessThan(1_000);
      // Another tenant's event and another correlation id never show.
      await t.gql(other, CREATE, { input: { events: [event({ correlationId: CORR })] } });
      await t.gql(tenant, CREATE, {
        input: { events: [event({ correlationId: `noise-${CORR}` })] },
      });
      const sentinel = randomUUID();
      await t.gql(tenant, CREATE, {
        input: { events: [event({ id: sentinel, correlationId: CORR })] },
      });
      await page.waitForFunction(
        (x) => document.querySelector('#rows tr')?.getAttribute('data-event-id') === x,
        sentinel,
      );
      const ids = await rowIds(page);
      expect(ids.slice(0, 2)).toEqual([sentinel, id]);
      expect(ids.filter((x) => x === id)).toHaveLength(1);
      expect(ids).toHaveLength(52);
      await page.screenshot({ path: `${SHOTS}/explorer-390x844.png`, fullPage: false });
    } finally {
      await ctx.close();
    }
  });

  it('downloads the /export of the filter with the page’s credentials', async () => {
    const ctx = await browser.newContext({ acceptDownloads: true });
    const page = await ctx.newPage();
    try {
      await showCorrelation(page);
      const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
      const file = await download.path();
      const lines = readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      const ids = lines.filter((l) => l.eventType).map((l) => l.id as string);
      // Every event of the filter (and those the live-tail test added), none of another filter.
      expect(ids.length).toBeGreaterThanOrEqual(150);
      expect(new Set(ids).size).toBe(ids.length);
      for (const id of written) expect(ids).toContain(id);
      expect(lines.filter((l) => l.eventType && l.correlationId !== CORR)).toEqual([]);
    } finally {
      await ctx.close();
    }
  });

  it('with an API key, shows its own tenant only', async () => {
    const key = await createKey(keysApp, other, ['events:read']);
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    try {
      await signedIn(page, key.secret, keysApp);
      await page.fill('#f-correlationId', CORR);
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length >= 20);
      const ids = await rowIds(page);
      expect(ids.length).toBeGreaterThanOrEqual(20);
      expect(ids.filter((id) => written.includes(id))).toEqual([]);
      // The page offers nothing that writes: it reads, tails, verifies and exports.
      const buttons = await page.$$eval('button', (bs) => bs.map((b) => b.textContent?.trim()));
      expect(buttons.filter((b) => /create|write|delete|replay|discard/i.test(b ?? ''))).toEqual(
        [],
      );
      // A wrong key is told so, on the page.
      await page.click('#signout');
      await signedIn(page, 'agk_not-a-key', keysApp);
      await page.waitForFunction(() =>
        document.getElementById('status')?.className.includes('error'),
      );
      expect(await page.textContent('#status')).toContain('not valid');
    } finally {
      await ctx.close();
    }
  });

  it('resumes the live tail from its last cursor after the connection drops: events of the gap come once', async () => {
    const proxy = await cuttableProxy(Number(new URL(t.url).port));
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    try {
      const via = { url: `http://127.0.0.1:${proxy.port}/graphql` } as TestApp;
      await signedIn(page, tenant, via);
      await page.fill('#f-correlationId', CORR);
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelectorAll('#rows tr').length === 50);
      await page.check('#tail');
      await page.waitForFunction(
        () => document.getElementById('tail-state')?.textContent === 'live',
      );
      const before = randomUUID();
      await t.gql(tenant, CREATE, {
        input: { events: [event({ id: before, correlationId: CORR })] },
      });
      await page.waitForFunction(
        (x) => document.querySelector('#rows tr')?.getAttribute('data-event-id') === x,
        before,
      );
      expect(proxy.cut()).toBeGreaterThan(0);
      // Written while the page has no connection: the tail's replay brings them.
      const gap = [randomUUID(), randomUUID()];
      await t.gql(tenant, CREATE, {
        input: { events: gap.map((id) => event({ id, correlationId: CORR })) },
      });
      await page.waitForFunction(
        (ids) => ids.every((x) => document.querySelector(`#rows tr[data-event-id="${x}"]`)),
        gap,
        { timeout: 10_000 },
      );
      const ids = await rowIds(page);
      for (const id of [before, ...gap])
        expect(
          ids.filter((x) => x === id),
          id,
        ).toHaveLength(1);
      expect(proxy.accepted).toBeGreaterThan(1);
    } finally {
      await ctx.close();
      await proxy.close();
    }
  });
});
