import { existsSync } from 'node:fs';
import {
  buildASTSchema,
  buildClientSchema,
  type DocumentNode,
  Kind,
  parse,
  type StringValueNode,
  validate,
  visit,
} from 'graphql';
import {
  type Browser,
  type BrowserContext,
  chromium,
  type Page,
  type Request,
} from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exampleOperations } from '../src/graphql/yoga.js';
import { introspect, schemaFileText, writeEvents } from './support/clients.js';
import { dropTenants, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * GraphiQL as a person uses it, in headless Chromium: the page the service serves at /graphql
 * (bundled: nothing is loaded from another origin), its headers set to a fresh tenant in the
 * headers editor, a query typed into the query editor and run with Ctrl-Enter, the answer read
 * off the result pane. The examples the page opens with validate against the service's schema
 * and run from the page ("Create", then "Flush"), and their dates follow the clock. The
 * subscription example "Settled", run as its comment says in a second window of the same
 * profile, shows the FlushCompleted of a "Create" and "Flush" run in the first, and switching
 * that window's tab ends it.
 */

const CHROMIUM = '/usr/bin/chromium';
const TYPED_QUERY = '{ auditEvents(first: 5) { edges { node { id eventType } } } }';

/** The page's editors and tab, as GraphiQL keeps them in localStorage. */
interface TabState {
  tabs: { query: string | null; headers: string | null }[];
  activeTabIndex: number;
}

async function tabState(page: Page): Promise<TabState | null> {
  const raw = await page.evaluate(() => localStorage.getItem('graphiql:tabState'));
  return raw ? (JSON.parse(raw) as TabState) : null;
}

/** The active tab once GraphiQL has stored `check`'s condition (it stores with a short delay). */
async function storedTab(page: Page, check: (tab: TabState['tabs'][number]) => boolean) {
  let last: TabState['tabs'][number] | undefined;
  await expect
    .poll(
      async () => {
        const s = await tabState(page);
        last = s?.tabs[s.activeTabIndex];
        return last ? check(last) : false;
      },
      { timeout: 10_000 },
    )
    .toBe(true);
  return last!;
}

/**
 * Replaces an editor's text with `text`, entered as typed input. Monaco closes brackets and
 * quotes as they come in, after the caret; those closers are then deleted.
 */
async function typeInto(page: Page, editor: string, text: string): Promise<void> {
  await page.locator(editor).filter({ visible: true }).first().click();
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(text);
  await page.keyboard.press('Shift+Control+End');
  await page.keyboard.press('Delete');
}

const QUERY_EDITOR = '.graphiql-query-editor .monaco-editor';
const HEADERS_EDITOR = '.graphiql-editor-tool .monaco-editor';

async function setTenant(page: Page, tenant: string): Promise<void> {
  await page.getByRole('button', { name: 'Headers' }).click();
  const headers = JSON.stringify({ 'x-tenant-id': tenant });
  await typeInto(page, HEADERS_EDITOR, headers);
  const tab = await storedTab(page, (t) => t.headers === headers);
  expect(JSON.parse(tab.headers!)).toEqual({ 'x-tenant-id': tenant });
}

/**
 * Presses Ctrl-Enter in the query editor (with the caret where it is) and returns the result
 * pane's text once the answer to `operationName` (null: an anonymous operation) is shown.
 */
async function runAndRead(page: Page, operationName: string | null, shows: string) {
  const answered = page.waitForResponse((r) => {
    if (r.request().method() !== 'POST') return false;
    const body = r.request().postDataJSON() as { operationName?: string | null } | null;
    return (body?.operationName ?? null) === operationName;
  });
  await page.keyboard.press('Control+Enter');
  const response = await answered;
  expect(response.status()).toBe(200);
  await expect.poll(() => paneText(page), { timeout: 10_000 }).toContain(shows);
  return paneText(page);
}

/** The result pane's rendered lines, run together; Monaco renders spaces as no-break spaces. */
async function paneText(page: Page): Promise<string> {
  const text = await page.locator('.graphiql-response .view-lines').textContent();
  return (text ?? '').replace(/\u00a0/g, ' ');
}

/** The text of the visible `editor` (one of the editors above). */
async function editorText(page: Page, editor: string): Promise<string> {
  const lines = page.locator(`${editor} .view-lines`).filter({ visible: true }).first();
  return ((await lines.textContent()) ?? '').replace(/\u00a0/g, ' ');
}

async function tabTitles(page: Page): Promise<string[]> {
  return page.locator('.graphiql-tab-button').allTextContents();
}

async function activeTab(page: Page): Promise<number> {
  const selected = await page
    .locator('.graphiql-tab')
    .evaluateAll((tabs) => tabs.map((tab) => tab.getAttribute('aria-selected')));
  return selected.indexOf('true');
}

/**
 * Switches to tab `index` as a keyboard user does (Tab to it, Enter). A tab can be dragged to
 * reorder it, and in headless Chromium the first mouse press on a freshly rendered tab ends its
 * reorder animation without switching to it.
 */
async function openTab(page: Page, index: number): Promise<void> {
  await page.locator('.graphiql-tab-button').nth(index).focus();
  await page.keyboard.press('Enter');
  await expect.poll(() => activeTab(page)).toBe(index);
}

/** Puts the caret on the first line of the query editor that contains `text`. */
async function caretOn(page: Page, text: string): Promise<void> {
  await page.locator(`${QUERY_EDITOR} .view-line`, { hasText: text }).first().click();
}

describe('GraphiQL in headless Chromium', () => {
  let t: TestApp;
  let browser: Browser;
  const tenants: string[] = [];
  const foreign: string[] = [];

  /** The page, opened once in a fresh browser profile; the tests take turns on it. */
  let page: Page;
  let context: BrowserContext;
  /** A second window of the same profile, where "Settled" runs, and that subscription's request. */
  let second: Page;
  let subscription: Request | undefined;
  /** What the query editor held when the page opened. */
  let examples = '';
  let flushPane = '';
  /** Records the requests `p` makes to anywhere but the service. */
  const watchForeign = (p: Page) => {
    const origin = new URL(t.url).origin;
    p.on('request', (r) => {
      const url = r.url();
      if (!url.startsWith(`${origin}/`) && !url.startsWith(`blob:${origin}/`)) foreign.push(url);
    });
  };

  beforeAll(async () => {
    // Buffered events wait a minute for their batch, so a Flush finds them still pending.
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; ` +
          'bash .ci/run does it when it is missing)',
      );
    }
    t = await startApp({ GRAPHIQL: 'true', FLUSH_INTERVAL_MS: '60000' });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox'],
    });
    context = await browser.newContext({ viewport: { width: 1800, height: 1600 } });
    page = await context.newPage();
    watchForeign(page);
  });
  afterAll(async () => {
    await browser?.close();
    await t?.stop();
    await dropTenants(...tenants);
  });

  it('serves the page bundled, opening with examples that validate against the schema', async () => {
    const tenant = newTenant('giqlx');
    tenants.push(tenant);
    const response = await page.goto(t.url); // a browser's GET, accepting text/html
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-type']).toContain('text/html');
    await page.locator(QUERY_EDITOR).first().waitFor({ timeout: 20_000 });
    const opened = await storedTab(page, (tab) => (tab.query ?? '').includes('mutation Create'));
    examples = opened.query!;

    const doc = parse(examples);
    const names = (d: DocumentNode) =>
      d.definitions.flatMap((x) => (x.kind === Kind.OPERATION_DEFINITION ? [x.name?.value] : []));
    expect(names(doc)).toEqual(names(parse(exampleOperations())));
    expect(names(doc)).toEqual(expect.arrayContaining(['Create', 'Flush']));
    const schema = buildClientSchema(await introspect(t, tenant));
    expect(validate(schema, doc).map((e) => e.message)).toEqual([]);
    // Control: the check reads the examples' selections; without Query.auditEvents they fail.
    const withoutAuditEvents = visit(parse(schemaFileText()), {
      ObjectTypeDefinition: (n) =>
        n.name.value === 'Query'
          ? { ...n, fields: n.fields?.filter((f) => f.name.value !== 'auditEvents') }
          : undefined,
    });
    expect(validate(buildASTSchema(withoutAuditEvents), doc).map((e) => e.message)).toContainEqual(
      expect.stringContaining('Cannot query field "auditEvents" on type "Query"'),
    );
    expect(foreign).toEqual([]);
  });

  it('runs "Create" then "Flush" from the examples, as the tenant in the headers', async () => {
    expect(examples, 'the page opened').toContain('mutation Create');
    const tenant = newTenant('giqlc');
    tenants.push(tenant);
    await setTenant(page, tenant);
    await caretOn(page, 'mutation Create');
    const created = await runAndRead(page, 'Create', '"createAuditEvents"');
    expect(created).toContain('"__typename": "CreateAuditEventsPayload"');
    expect(created).toContain('"accepted": 1');
    await caretOn(page, 'mutation Flush');
    flushPane = await runAndRead(page, 'Flush', '"flushAudit"');
    expect(flushPane).toContain('"__typename": "FlushAuditPayload"');
    // The event is the page's tenant's, and stored.
    const stats = await t.gql(tenant, '{ auditStats { ... on AuditStats { accepted stored } } }');
    expect(stats.auditStats).toEqual({ accepted: 1, stored: 1 });
    expect(foreign).toEqual([]);
  });

  it('the "Flush" after "Create" waits for the event "Create" left buffered', () => {
    expect(flushPane, 'Create then Flush ran').toContain('FlushAuditPayload');
    const waitedFor = Number(flushPane.match(/"waitedFor": (\d+)/)?.[1]);
    expect(waitedFor).toBeGreaterThan(0);
  });

  it('runs "Settled" in a second window, which shows the FlushCompleted of "Create" then "Flush" here', async () => {
    expect(examples, 'the page opened').toContain('subscription Settled');
    const tenant = newTenant('giqls');
    tenants.push(tenant);
    await setTenant(page, tenant);

    second = await context.newPage();
    watchForeign(second);
    await second.goto(t.url);
    await second.locator(QUERY_EDITOR).first().waitFor({ timeout: 20_000 });
    // The second window restores the first one's tab (the examples, with the tenant) and opens
    // a new, empty tab of its own with the persisted headers: the examples are a tab away.
    await expect.poll(() => tabTitles(second)).toEqual([expect.any(String), '<untitled>']);
    expect(await activeTab(second)).toBe(1);
    await second.getByRole('button', { name: 'Headers' }).click();
    await expect.poll(() => editorText(second, HEADERS_EDITOR)).toContain(tenant);
    expect(JSON.parse(await editorText(second, HEADERS_EDITOR))).toEqual({ 'x-tenant-id': tenant });
    await openTab(second, 0);
    await second.locator(QUERY_EDITOR).first().click();
    await second.keyboard.press('Control+End'); // "Settled" is last, below the editor's fold
    await caretOn(second, 'subscription Settled');

    const subscribed = second.waitForRequest((r) => r.url().includes('operationName=Settled'));
    await second.keyboard.press('Control+Enter');
    const request = await subscribed;
    // GraphiQL's subscription transport: a GET with the operation in the query string, asking
    // for an event stream, with the headers editor's headers.
    expect(request.method()).toBe('GET');
    expect(request.headers().accept).toBe('text/event-stream');
    expect(request.headers()['x-tenant-id']).toBe(tenant);
    const response = await request.response();
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-type']).toContain('text/event-stream');
    await expect
      .poll(() => paneText(second), { timeout: 10_000 })
      .toContain('"__typename": "SubscriptionReady"');
    expect(t.app.services.connections.count(tenant)).toBe(1);
    subscription = request;

    await caretOn(page, 'mutation Create');
    const created = await runAndRead(page, 'Create', '"createAuditEvents"');
    expect(created).toContain('"buffered": 1');
    // Control: the event is buffered, not stored, so nothing has settled yet.
    const beforeFlush = await paneText(second);
    expect(beforeFlush).toContain('SubscriptionReady');
    expect(beforeFlush).not.toContain('FlushCompleted');

    await caretOn(page, 'mutation Flush');
    await runAndRead(page, 'Flush', '"flushAudit"');
    await expect
      .poll(() => paneText(second), { timeout: 10_000 })
      .toContain('"__typename": "FlushCompleted"');
    const settled = JSON.parse(await paneText(second)) as {
      data: { flushCompleted: { correlations: unknown[] } };
    };
    expect(settled.data.flushCompleted.correlations).toEqual([
      { correlationId: 'run-42', stored: 1, duplicates: 0, deadLettered: 0 },
    ]);
    expect(foreign).toEqual([]);
  });

  it('switching the tab in the second window ends its subscription', async () => {
    expect(subscription, '"Settled" ran in the second window').toBeDefined();
    const tenant = subscription!.headers()['x-tenant-id']!;
    expect(t.app.services.connections.count(tenant)).toBe(1);
    const ended = second.waitForEvent('requestfailed', {
      predicate: (r) => r === subscription,
      timeout: 10_000,
    });
    await openTab(second, 1);
    expect((await ended).failure()?.errorText).toBe('net::ERR_ABORTED');
    await expect.poll(() => t.app.services.connections.count(tenant), { timeout: 10_000 }).toBe(0);
    await second.close();
  });

  it('runs a query typed into the editor and shows its 5 events in the result pane', async () => {
    expect(examples, 'the page opened').toContain('mutation Create');
    const tenant = newTenant('giql');
    tenants.push(tenant);
    const written = await writeEvents(t, tenant, 7, 'graphiql');
    await setTenant(page, tenant);
    await typeInto(page, QUERY_EDITOR, TYPED_QUERY);
    await storedTab(page, (tab) => tab.query === TYPED_QUERY);
    const text = await runAndRead(page, null, '"edges"');
    expect(text).not.toContain('"errors"');
    // Newest first: the last five of the seven written.
    const shown = [...text.matchAll(/"eventType": "([^"]+)"/g)].map((m) => m[1]);
    expect(shown).toEqual(
      written
        .map((_, i) => `dashboard.event.${i}`)
        .reverse()
        .slice(0, 5),
    );
    expect(text.match(/"node":/g)).toHaveLength(5);
    expect(foreign).toEqual([]);
  });

  it("the examples' dates follow the clock, and stay valid as time passes", async () => {
    expect(examples, 'the page was read').toContain('mutation Create');
    const { retentionDays, maxFutureSkewMs } = t.app.services.config;
    const dates = (source: string) => {
      const found: { name: string; value: string }[] = [];
      let name = '';
      visit(parse(source), {
        Argument(n) {
          name = n.name.value;
        },
        ObjectField(n) {
          name = n.name.value;
        },
        StringValue: (n: StringValueNode) => {
          if (/^\d{4}-\d\d-\d\dT/.test(n.value)) found.push({ name, value: n.value });
        },
      });
      return found;
    };
    const now = dates(examples);
    expect(now.map((d) => d.name)).toContain('occurredAt');

    // The same examples as the service builds them for a page loaded three years from now.
    const later = new Date(Date.now() + 3 * 365 * 86_400_000);
    const future = dates(exampleOperations(later));
    expect(future.map((d) => d.name)).toEqual(now.map((d) => d.name));
    const fixed = now.filter((d, i) => d.value === future[i]!.value);
    expect(fixed, 'dates that do not follow the clock').toEqual([]);
    for (const d of future) {
      const at = Date.parse(d.value);
      if (d.name === 'occurredAt') {
        expect(at, d.value).toBeGreaterThan(later.getTime() - retentionDays * 86_400_000);
        expect(at, d.value).toBeLessThanOrEqual(later.getTime() + maxFutureSkewMs);
      }
      if (d.name === 'from') expect(at, d.value).toBeLessThanOrEqual(later.getTime());
      if (d.name === 'to') expect(at, d.value).toBeGreaterThan(later.getTime());
    }
  });
});
