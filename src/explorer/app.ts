/**
 * The event explorer: a page of the service's own, built only on its public GraphQL API through
 * urql (queries over HTTP, the live tail over graphql-ws), so that it is also the proof that a
 * dashboard works. Plain DOM: the page is a form, a table and a panel, and a framework would be
 * most of the bundle. Bundled by esbuild (`npm run build`) into dist/explorer/.
 */
import { Client, fetchExchange, gql, subscriptionExchange } from '@urql/core';
import { createClient as createWsClient } from 'graphql-ws';

type Json = Record<string, unknown>;

interface Credentials {
  kind: 'bearer' | 'tenant';
  value: string;
}

interface EventNode {
  id: string;
  eventId: string;
  occurredAt: string;
  receivedAt: string;
  eventType: string;
  category: string;
  action: string;
  outcome: string;
  correlationId: string;
  severity: string | null;
  actor: { type: string; actorId: string; ip: string | null };
  resource: { type: string; resourceId: string; name: string | null };
  data: Json | null;
  parentEventId: string | null;
  durationMs: number | null;
  errorCode: string | null;
  errorMessage: string | null;
  namespace: string | null;
  clusterId: string | null;
  traceId: string | null;
  spanId: string | null;
  chainSeq: number | null;
  hash: string | null;
  prevHash: string | null;
  batchId: string;
}

const EVENT_FIELDS = `
  id eventId occurredAt receivedAt eventType category action outcome correlationId severity
  actor { type actorId ip } resource { type resourceId name } data chainSeq hash prevHash batchId
  parentEventId durationMs errorCode errorMessage namespace clusterId traceId spanId`;

const PAGE = gql`
  query ExplorerPage($filter: AuditEventFilter, $first: Int, $after: String, $last: Int, $before: String) {
    auditEvents(filter: $filter, first: $first, after: $after, last: $last, before: $before) {
      edges { cursor node { ${EVENT_FIELDS} } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }`;

const TAIL = gql`
  subscription ExplorerTail($filter: AuditEventFilter, $after: String) {
    auditEventsAdded(filter: $filter, after: $after) {
      __typename
      ... on SubscriptionReady { startCursor }
      ... on AuditEventAdded { cursor node { ${EVENT_FIELDS} } }
      ... on SubscriptionInterruptedError { reason message retryable }
    }
  }`;

const VERIFY = gql`
  subscription ExplorerVerify($from: DateTime!, $to: DateTime!) {
    auditChainVerification(from: $from, to: $to) {
      __typename
      ... on AuditChainVerificationProgress {
        eventsVerified done
        result { ok eventsVerified firstBreak { kind message seq } }
      }
      ... on SubscriptionInterruptedError { reason message }
    }
  }`;

const PAGE_SIZE = 50;
const STORAGE_KEY = 'auditgraph.explorer.credentials';

/** The filter fields of the bar, by the name they have in AuditEventFilter and in the URL. */
const TEXT_FIELDS = ['correlationId', 'actorId', 'resourceId', 'category', 'action'] as const;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

function credentials(): Credentials | null {
  const raw = sessionStorage.getItem(STORAGE_KEY);
  return raw ? (JSON.parse(raw) as Credentials) : null;
}

function headersOf(c: Credentials): Record<string, string> {
  return c.kind === 'bearer' ? { authorization: `Bearer ${c.value}` } : { 'x-tenant-id': c.value };
}

function clientFor(c: Credentials): Client {
  const ws = createWsClient({
    url: `${location.origin.replace(/^http/, 'ws')}/graphql`,
    connectionParams:
      c.kind === 'bearer' ? { authorization: `Bearer ${c.value}` } : { tenantId: c.value },
    lazy: true,
    retryAttempts: 0,
  });
  return new Client({
    url: '/graphql',
    preferGetMethod: false,
    requestPolicy: 'network-only',
    fetchOptions: () => ({ headers: headersOf(c) }),
    exchanges: [
      fetchExchange,
      subscriptionExchange({
        forwardSubscription: (request) => ({
          subscribe: (sink) => ({
            unsubscribe: ws.subscribe({ ...request, query: request.query ?? '' }, sink),
          }),
        }),
      }),
    ],
  });
}

/** The filter the URL holds (so that a view can be shared), as AuditEventFilter. */
function filterFromUrl(): Json {
  const q = new URLSearchParams(location.search);
  const f: Json = {};
  for (const name of TEXT_FIELDS) {
    const v = q.get(name);
    if (v) f[name] = v;
  }
  const types = q.get('eventTypes');
  if (types)
    f.eventTypes = types
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const outcome = q.get('outcome');
  if (outcome) f.outcome = outcome;
  const after = q.get('occurredAfter');
  if (after) f.occurredAfter = after;
  const before = q.get('occurredBefore');
  if (before) f.occurredBefore = before;
  const contains = q.get('dataContains');
  if (contains) f.dataContains = JSON.parse(contains) as Json;
  return f;
}

function formToUrl(): void {
  const q = new URLSearchParams();
  for (const name of [...TEXT_FIELDS, 'eventTypes', 'outcome', 'dataContains'] as const) {
    const v = $<HTMLInputElement>(`f-${name}`).value.trim();
    if (v) q.set(name, v);
  }
  for (const name of ['occurredAfter', 'occurredBefore'] as const) {
    const v = $<HTMLInputElement>(`f-${name}`).value;
    // The field is labelled UTC: its value is read as UTC, whatever the browser's zone.
    if (v) q.set(name, new Date(`${v}:00Z`).toISOString());
  }
  const text = $<HTMLTextAreaElement>('f-dataContains').value.trim();
  if (text) JSON.parse(text); // refused below, with the message, before the URL changes
  history.pushState(null, '', `${location.pathname}?${q.toString()}`);
}

function urlToForm(): void {
  const q = new URLSearchParams(location.search);
  for (const name of [...TEXT_FIELDS, 'eventTypes', 'outcome', 'dataContains'] as const) {
    $<HTMLInputElement>(`f-${name}`).value = q.get(name) ?? '';
  }
  for (const name of ['occurredAfter', 'occurredBefore'] as const) {
    const v = q.get(name);
    $<HTMLInputElement>(`f-${name}`).value = v ? new Date(v).toISOString().slice(0, 16) : '';
  }
}

function text(tag: string, value: string, className?: string): HTMLElement {
  const el = document.createElement(tag);
  el.textContent = value;
  if (className) el.className = className;
  return el;
}

function status(message: string, error = false): void {
  const el = $('status');
  el.textContent = message;
  el.className = error ? 'status error' : 'status';
}

/** Everything the page holds between actions. */
const state = {
  client: null as Client | null,
  page: null as {
    hasNextPage: boolean;
    hasPreviousPage: boolean;
    startCursor: string | null;
    endCursor: string | null;
  } | null,
  rows: [] as EventNode[],
  selected: null as EventNode | null,
  tail: null as { unsubscribe(): void } | null,
  tailCursor: null as string | null,
  seen: new Set<string>(),
};

async function load(direction: 'first' | 'next' | 'previous'): Promise<void> {
  if (!state.client) return;
  let filter: Json;
  try {
    filter = filterFromUrl();
  } catch {
    status('dataContains is not valid JSON', true);
    return;
  }
  const vars: Json = { filter };
  if (direction === 'previous') {
    vars.last = PAGE_SIZE;
    vars.before = state.page?.startCursor;
  } else {
    vars.first = PAGE_SIZE;
    if (direction === 'next') vars.after = state.page?.endCursor;
  }
  status('Loading…');
  const r = await state.client.query(PAGE, vars).toPromise();
  if (r.error) {
    status(r.error.graphQLErrors[0]?.message ?? r.error.message, true);
    return;
  }
  const conn = r.data.auditEvents as {
    edges: { node: EventNode }[];
    pageInfo: NonNullable<typeof state.page>;
  };
  // Relay's pageInfo answers for the direction read; the page came from the other side.
  const info = conn.pageInfo;
  state.page = {
    ...info,
    hasPreviousPage: direction === 'next' || (direction === 'previous' && info.hasPreviousPage),
    hasNextPage: direction === 'previous' || info.hasNextPage,
  };
  state.rows = conn.edges.map((e) => e.node);
  state.seen = new Set(state.rows.map((e) => e.eventId));
  renderRows();
  status(`${state.rows.length} events${conn.pageInfo.hasNextPage ? ', more after' : ''}`);
}

function renderRows(): void {
  const body = $('rows');
  body.replaceChildren();
  state.rows.forEach((e, i) => {
    const tr = document.createElement('tr');
    tr.tabIndex = 0;
    tr.dataset.eventId = e.eventId;
    tr.append(
      text('td', e.occurredAt.replace('T', ' ').replace('Z', '')),
      text('td', e.eventType),
      text('td', e.outcome, `outcome ${e.outcome.toLowerCase()}`),
      text('td', `${e.actor.type}:${e.actor.actorId}`),
      text('td', `${e.resource.type}:${e.resource.resourceId}`),
      text('td', e.correlationId),
    );
    tr.addEventListener('click', () => select(e));
    tr.addEventListener('keydown', (k) => {
      if (k.key === 'Enter') {
        // Else the same key press would go on to the detail's first button, and close it.
        k.preventDefault();
        select(e);
      }
      const to = k.key === 'ArrowDown' ? i + 1 : k.key === 'ArrowUp' ? i - 1 : -1;
      if (to >= 0 && body.children[to]) {
        k.preventDefault();
        (body.children[to] as HTMLElement).focus();
      }
    });
    body.append(tr);
  });
  $<HTMLButtonElement>('next').disabled = !state.page?.hasNextPage;
  $<HTMLButtonElement>('previous').disabled = !state.page?.hasPreviousPage;
}

function select(e: EventNode): void {
  state.selected = e;
  const dl = $('detail-fields');
  dl.replaceChildren();
  const fields: [string, string | null][] = [
    ['eventId', e.eventId],
    ['occurredAt', e.occurredAt],
    ['receivedAt', e.receivedAt],
    ['eventType', e.eventType],
    ['category / action', `${e.category} / ${e.action}`],
    ['outcome', e.outcome],
    ['severity', e.severity],
    ['correlationId', e.correlationId],
    ['actor', `${e.actor.type}:${e.actor.actorId}${e.actor.ip ? ` (${e.actor.ip})` : ''}`],
    [
      'resource',
      `${e.resource.type}:${e.resource.resourceId}${e.resource.name ? ` (${e.resource.name})` : ''}`,
    ],
    ['parentEventId', e.parentEventId],
    ['durationMs', e.durationMs === null ? null : String(e.durationMs)],
    ['errorCode', e.errorCode],
    ['errorMessage', e.errorMessage],
    ['namespace', e.namespace],
    ['clusterId', e.clusterId],
    ['traceId / spanId', e.traceId || e.spanId ? `${e.traceId ?? '—'} / ${e.spanId ?? '—'}` : null],
    ['batchId', e.batchId],
    ['chain position', e.chainSeq === null ? '—' : String(e.chainSeq)],
    ['hash', e.hash],
    ['prevHash', e.prevHash],
  ];
  for (const [k, v] of fields) dl.append(text('dt', k), text('dd', v ?? '—'));
  $('detail-data').textContent = e.data === null ? 'null' : JSON.stringify(e.data, null, 2);
  $('detail').hidden = false;
  $('verify-result').textContent = '';
  $<HTMLButtonElement>('close-detail').focus();
}

/** The live tail: new events on top, resumed from its last cursor after a disconnect. */
function setTail(on: boolean): void {
  state.tail?.unsubscribe();
  state.tail = null;
  if (!on || !state.client) {
    $('tail-state').textContent = '';
    return;
  }
  const filter = filterFromUrl();
  const open = () => {
    state.tail = state
      .client!.subscription(TAIL, { filter, after: state.tailCursor })
      .subscribe((r) => {
        if (r.error) {
          $('tail-state').textContent = 'live tail lost; resuming…';
          setTimeout(() => $<HTMLInputElement>('tail').checked && open(), 1_000);
          return;
        }
        const m = r.data?.auditEventsAdded as Json | undefined;
        if (!m) return;
        if (m.__typename === 'SubscriptionReady') {
          state.tailCursor = (m.startCursor as string | null) ?? state.tailCursor;
          $('tail-state').textContent = 'live';
        } else if (m.__typename === 'AuditEventAdded') {
          state.tailCursor = m.cursor as string;
          const node = m.node as EventNode;
          if (state.seen.has(node.eventId)) return;
          state.seen.add(node.eventId);
          state.rows.unshift(node);
          renderRows();
        } else {
          if (m.retryable) {
            $('tail-state').textContent = `interrupted (${m.reason as string}); resuming…`;
            setTimeout(() => $<HTMLInputElement>('tail').checked && open(), 1_000);
          } else {
            $('tail-state').textContent = `ended (${m.reason as string}): ${m.message as string}`;
          }
        }
      });
  };
  open();
}

/** verifyAuditChain for the selected event's month, as a stream with progress. */
function verifyMonth(): void {
  const e = state.selected;
  if (!e || !state.client) return;
  const at = new Date(e.occurredAt);
  const from = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1));
  const to = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1));
  const out = $('verify-result');
  out.textContent = 'Verifying…';
  const sub = state.client
    .subscription(VERIFY, { from: from.toISOString(), to: to.toISOString() })
    .subscribe((r) => {
      if (r.error) {
        out.textContent = r.error.graphQLErrors[0]?.message ?? r.error.message;
        return;
      }
      const m = r.data?.auditChainVerification as Json | undefined;
      if (!m || m.__typename === 'SubscriptionReady') return;
      if (m.__typename === 'AuditChainVerificationProgress') {
        const result = m.result as {
          ok: boolean;
          eventsVerified: number;
          firstBreak: { kind: string; message: string; seq: number } | null;
        } | null;
        out.textContent = !result
          ? `${m.eventsVerified as number} events verified…`
          : result.ok
            ? `✓ the month's chain verifies: ${result.eventsVerified} events`
            : `✗ ${result.firstBreak?.kind} at position ${result.firstBreak?.seq}: ${result.firstBreak?.message}`;
        if (m.done) sub.unsubscribe();
      } else {
        out.textContent = String(m.message);
      }
    });
}

/** The /export of the current filter, downloaded with the page's credentials. */
async function exportFilter(): Promise<void> {
  const c = credentials();
  if (!c) return;
  const params = new URLSearchParams({ filter: JSON.stringify(filterFromUrl()) });
  status('Exporting…');
  const r = await fetch(`/export?${params.toString()}`, { headers: headersOf(c) });
  if (!r.ok) {
    status(`export refused: ${r.status} ${await r.text()}`, true);
    return;
  }
  const blob = await r.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'audit-export.ndjson';
  a.click();
  URL.revokeObjectURL(a.href);
  status('Export downloaded');
}

function signIn(c: Credentials): void {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(c));
  state.client = clientFor(c);
  $('signin').hidden = true;
  $('main').hidden = false;
  $('who').textContent = c.kind === 'tenant' ? `tenant ${c.value}` : 'signed in';
  urlToForm();
  void load('first');
}

function signOut(): void {
  setTail(false);
  sessionStorage.removeItem(STORAGE_KEY);
  state.client = null;
  $('main').hidden = true;
  $('signin').hidden = false;
}

function start(): void {
  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $<HTMLInputElement>('credential').value.trim();
    if (!value) return;
    const kind = $<HTMLSelectElement>('credential-kind').value === 'tenant' ? 'tenant' : 'bearer';
    signIn({ kind, value });
  });
  $('filter-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    try {
      formToUrl();
    } catch {
      status('dataContains is not valid JSON', true);
      return;
    }
    state.tailCursor = null;
    void load('first');
    if ($<HTMLInputElement>('tail').checked) setTail(true);
  });
  $('next').addEventListener('click', () => void load('next'));
  $('previous').addEventListener('click', () => void load('previous'));
  $('tail').addEventListener('change', (ev) => setTail((ev.target as HTMLInputElement).checked));
  const closeDetail = () => {
    $('detail').hidden = true;
    // Back to the row it was opened from.
    const row =
      state.selected &&
      document.querySelector(`#rows tr[data-event-id="${state.selected.eventId}"]`);
    (row as HTMLElement | null)?.focus();
  };
  $('close-detail').addEventListener('click', closeDetail);
  document.addEventListener('keydown', (k) => {
    if (k.key === 'Escape' && !$('detail').hidden) closeDetail();
  });
  $('verify').addEventListener('click', verifyMonth);
  $('export').addEventListener('click', () => void exportFilter());
  $('signout').addEventListener('click', signOut);
  window.addEventListener('popstate', () => {
    urlToForm();
    void load('first');
  });
  const c = credentials();
  if (c) signIn(c);
}

start();
