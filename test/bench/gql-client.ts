import { Client, Pool } from 'undici';

/** A GraphQL response as the benchmark reads it. */
export interface GqlResponse {
  status: number;
  data?: Record<string, any>;
  errors?: unknown[];
  /** Set when the body was not JSON (or the request failed below HTTP). */
  failure?: string;
}

/**
 * One keep-alive connection (undici `Client`, no pipelining) to a GraphQL endpoint: what each
 * benchmark client uses, so N clients are N sockets.
 */
export class GqlConnection {
  private readonly client: Client | Pool;
  private readonly path: string;

  /** The caller's header besides the body: an API key, or the tenant header (AUTH_MODE=dev). */
  private readonly auth: (tenant: string) => Record<string, string>;

  constructor(url: string, opts: { connections?: number; apiKey?: string } = {}) {
    const u = new URL(url);
    this.path = u.pathname;
    const { apiKey } = opts;
    this.auth = apiKey
      ? () => ({ authorization: `Bearer ${apiKey}` })
      : (tenant) => ({ 'x-tenant-id': tenant });
    const common = {
      keepAliveTimeout: 60_000,
      keepAliveMaxTimeout: 600_000,
      headersTimeout: 300_000,
      bodyTimeout: 300_000,
    };
    this.client =
      opts.connections && opts.connections > 1
        ? new Pool(u.origin, { ...common, connections: opts.connections })
        : new Client(u.origin, common);
  }

  /** Posts a ready-made JSON body as `tenant`. Never throws: failures come back in `failure`. */
  async post(tenant: string, body: string): Promise<GqlResponse> {
    try {
      const res = await this.client.request({
        path: this.path,
        method: 'POST',
        headers: { 'content-type': 'application/json', ...this.auth(tenant) },
        body,
      });
      const text = await res.body.text();
      try {
        const parsed = JSON.parse(text) as { data?: Record<string, any>; errors?: unknown[] };
        return { status: res.statusCode, data: parsed.data, errors: parsed.errors };
      } catch {
        return { status: res.statusCode, failure: `not JSON: ${text.slice(0, 200)}` };
      }
    } catch (err) {
      return { status: 0, failure: (err as Error).message };
    }
  }

  /** Sends one operation; throws on transport or GraphQL errors (for set-up and checks). */
  async request<T = Record<string, any>>(
    tenant: string,
    query: string,
    variables: Record<string, unknown> = {},
  ): Promise<T> {
    const r = await this.post(tenant, JSON.stringify({ query, variables }));
    if (r.failure || r.errors || !r.data) {
      throw new Error(
        `GraphQL request failed (${r.status}): ${r.failure ?? JSON.stringify(r.errors)}`,
      );
    }
    return r.data as T;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
