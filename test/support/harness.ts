import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { inject } from 'vitest';
import { type App, buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';

/** A fresh tenant id for one test: tests never share tenants, so files can run in parallel. */
export function newTenant(prefix = 't'): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

/** This test file's own database (see file-database.ts). */
export function databaseUrl(): string {
  return (
    (globalThis as { __auditgraphDatabaseUrl?: string }).__auditgraphDatabaseUrl ??
    inject('databaseUrl')
  );
}

export interface TestApp {
  app: App;
  url: string;
  /** Sends one GraphQL operation over HTTP as `tenant` (x-tenant-id); returns `data` or throws on errors. */
  gql<T = Record<string, any>>(
    tenant: string | null,
    query: string,
    variables?: Record<string, unknown>,
  ): Promise<T>;
  /** The raw HTTP response body of a GraphQL call (for tests about errors). */
  raw(
    tenant: string | null,
    body: unknown,
    headers?: Record<string, string>,
  ): Promise<{ status: number; body: any }>;
  /**
   * Sends one operation that must be refused: returns the first GraphQL error (its message and
   * extensions: code, retryable, …); throws when the operation was answered with data instead.
   */
  refused(
    tenant: string | null,
    query: string,
    variables?: Record<string, unknown>,
    headers?: Record<string, string>,
  ): Promise<GraphQLErrorBody>;
  stop(): Promise<void>;
}

/** One entry of a response's `errors`. */
export interface GraphQLErrorBody {
  message: string;
  path?: (string | number)[];
  extensions: { code: string; retryable?: boolean; [key: string]: unknown };
}

/** Starts the real service (HTTP on an ephemeral port) against the run's test database. */
export async function startApp(env: Record<string, string> = {}): Promise<TestApp> {
  const config = loadConfig({
    DATABASE_URL: databaseUrl(),
    AUTH_MODE: 'dev',
    TENANT_AUTO_PROVISION: 'true',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
    DATABASE_APPLICATION_NAME: `auditgraph-test-${process.pid}`,
    // Each app its own dead-letter directory, so no app replays another's files.
    DLQ_DIR: mkdtempSync(join(tmpdir(), 'auditgraph-dlq-')),
    CHECKPOINT_KEY_FILE: inject('checkpointKeyFile'),
    ...env,
  });
  const app = buildApp(config);
  let port: number;
  try {
    ({ port } = await app.start());
  } catch (err) {
    // A start refused half-way (a Refusal) leaves what it opened to the caller to close.
    await app.stop();
    throw err;
  }
  const url = `http://127.0.0.1:${port}/graphql`;
  return { app, url, ...graphqlClient(url), stop: () => app.stop() };
}

/** `gql` and `raw` for a GraphQL endpoint at `url` (any running auditgraph, e.g. an embedded one). */
export function graphqlClient(url: string): Pick<TestApp, 'gql' | 'raw' | 'refused'> {
  const raw = async (
    tenant: string | null,
    body: unknown,
    headers: Record<string, string> = {},
  ) => {
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(tenant ? { 'x-tenant-id': tenant } : {}),
        ...headers,
      },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: any = text;
    try {
      parsed = JSON.parse(text);
    } catch {}
    return { status: res.status, body: parsed };
  };
  return {
    raw,
    async gql<T = Record<string, any>>(
      tenant: string | null,
      query: string,
      variables?: Record<string, unknown>,
    ): Promise<T> {
      const { body } = await raw(tenant, { query, variables });
      if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
      return body.data;
    },
    async refused(tenant, query, variables, headers) {
      const { body } = await raw(tenant, { query, variables }, headers);
      const first = body?.errors?.[0];
      if (!first) throw new Error(`expected a refusal, got ${JSON.stringify(body)}`);
      return first as GraphQLErrorBody;
    },
  };
}

/** A direct connection for assertions on real rows (never through the service). */
export async function sqlClient(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: databaseUrl() });
  await c.connect();
  return c;
}

/** Removes what a test created: the tenants' schemas and control rows. */
export async function dropTenants(...tenants: string[]): Promise<void> {
  const c = await sqlClient();
  try {
    for (const t of tenants) {
      await c.query(`drop schema if exists "t_${t}" cascade`);
      await c.query('delete from auditgraph.tenant_migrations where tenant_id = $1', [t]);
      await c.query('delete from auditgraph.tenants where tenant_id = $1', [t]);
    }
  } finally {
    await c.end();
  }
}

/** How many times each of `ids` is stored in the tenant's table (ids stored not at all are absent). */
export async function storedCounts(
  admin: pg.Client,
  tenant: string,
  ids: readonly string[],
): Promise<Map<string, number>> {
  const { rows } = await admin.query<{ id: string; n: number }>(
    `select id::text, count(*)::int as n from "t_${tenant}".audit_events
      where id = any($1::uuid[]) group by id`,
    [ids],
  );
  return new Map(rows.map((r) => [r.id, r.n]));
}

/**
 * Records every statement this process's `pg` driver sends that names `schema` (the app under
 * test in this process included), with its parameters, until `stop` puts the driver back.
 */
export function captureStatements(schema: string) {
  const sent: { text: string; values: unknown[] }[] = [];
  const original = pg.Client.prototype.query;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const first = args[0] as string | { text?: string; values?: unknown[] } | undefined;
    const text = typeof first === 'string' ? first : (first?.text ?? '');
    const values = (typeof first === 'string' ? undefined : first?.values) ?? args[1];
    if (text.includes(`"${schema}"`)) sent.push({ text, values: (values as unknown[]) ?? [] });
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof original;
  return {
    sent,
    stop: () => {
      pg.Client.prototype.query = original;
    },
  };
}

let seq = 0;
/** A valid event input; `overrides` replace fields. */
export function event(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  seq++;
  return {
    occurredAt: new Date().toISOString(),
    eventType: 'workflow.execution.started',
    category: 'workflow',
    action: 'start',
    outcome: 'SUCCESS',
    correlationId: 'corr',
    actor: { type: 'user', id: `user-${seq % 7}`, ip: '10.1.2.3' },
    resource: { type: 'workflow', id: `wf-${seq % 11}`, name: 'nightly' },
    data: { seq, note: 'x' },
    ...overrides,
  };
}

export const CREATE = `mutation Create($input: CreateAuditEventsInput!) {
  createAuditEvents(input: $input) {
    __typename
    ... on CreateAuditEventsPayload { accepted stored duplicates buffered events { id: eventId occurredAt status } }
    ... on AuditError { message retryable }
    ... on ValidationError { issues { index field message } }
    ... on BackpressureError { retryAfterMs limit }
    ... on CommitTimeoutError { pending events { id: eventId status } }
  }
}`;

export const FLUSH = `mutation Flush($timeoutMs: Int) {
  flushAudit(input: { timeoutMs: $timeoutMs }) {
    __typename
    ... on FlushAuditPayload { stored duplicates deadLettered waitedFor instances }
    ... on FlushTimeoutError { pending lastError }
    ... on AuditError { message retryable }
  }
}`;

export const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded conflicts identityHolds failedWrites lastError
}  } }`;

export const PAGE = `query Page($first: Int, $after: String, $last: Int, $before: String, $filter: AuditEventFilter, $order: AuditEventOrder) {
  auditEvents(first: $first, after: $after, last: $last, before: $before, filter: $filter, order: $order) {
    __typename
    ... on AuditEventConnection {
      edges { cursor node { id: eventId occurredAt correlationId eventType } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
    
  }
}`;
