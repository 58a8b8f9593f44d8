/**
 * auditgraph/client — a typed client for Node ≥ 20 and browsers: write events with retries that
 * cannot duplicate them, flush, read every matching event, wait until a correlation id's events
 * are stored, and tail them live. Its only dependency is graphql-ws (for the tail); requests go
 * through `fetch`, and the operations' types are generated from the service's schema
 * (generated.ts).
 *
 *   const client = new AuditClient({ url: 'http://localhost:4000/graphql', tenant: 'demo' });
 *   await client.createEvents(events, { ack: 'BUFFERED' });
 *   await client.waitForEvents({ correlationId: 'run-42', count: events.length });
 */
import { createClient, type Client as WsClient } from 'graphql-ws';
import {
  type Ack,
  type AuditEventFilter,
  type AuditEventInput,
  type AuditEventOrder,
  type ClientCreateEventsMutation,
  type ClientEventFragment,
  type ClientEventsQuery,
  type ClientFlushMutation,
  type ClientTailSubscription,
  type ClientWaitForEventsQuery,
  type EventStatus,
  OPERATIONS,
} from './generated.js';

export type {
  Ack,
  AuditEventFilter,
  AuditEventInput,
  AuditEventOrder,
  EventStatus,
  EventWaitOutcome,
  Outcome,
} from './generated.js';

/** A stored event as the client reads it. */
export type AuditEvent = ClientEventFragment;

export interface AuditClientOptions {
  /** The service's GraphQL endpoint, e.g. `http://localhost:4000/graphql`. */
  url: string;
  /** An API key (`agk_…`; AUTH_MODE=keys). */
  apiKey?: string;
  /** The tenant, for a service in AUTH_MODE=dev. */
  tenant?: string;
  /** Another `fetch` (default: the global one). */
  fetch?: typeof fetch;
  /**
   * A WebSocket implementation for `tail` where there is no global one (Node 20: the `ws`
   * package's `WebSocket`).
   */
  webSocketImpl?: unknown;
}

/** A refusal or failure the service answered, with its code (e.g. VALIDATION, FORBIDDEN). */
export class AuditClientError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly retryable: boolean,
    /** What else the service said: `issues` of a ValidationError, `retryAfterMs`, … */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'AuditClientError';
  }
}

/** waitForEvents ended without its events: `result` says what it saw. */
export class WaitForEventsError extends AuditClientError {
  constructor(readonly result: WaitResult) {
    super(result.message, result.outcome, result.outcome === 'TIMED_OUT', { ...result });
    this.name = 'WaitForEventsError';
  }
}

export interface CreateEventsOptions {
  /** COMMITTED (default): answered once stored; BUFFERED: once accepted. */
  ack?: Ack;
  /** Attempts at most, retries included (default 8). */
  maxAttempts?: number;
}

export interface CreateEventsResult {
  /** Per event, in input order. After a retry, events an earlier attempt stored are DUPLICATE. */
  events: { eventId: string; occurredAt: string; status: EventStatus }[];
  stored: number;
  duplicates: number;
  buffered: number;
  /** Calls it took (1 without a retry). */
  attempts: number;
}

export type FlushResult = Extract<
  ClientFlushMutation['flushAudit'],
  { __typename: 'FlushAuditPayload' }
>;

export type WaitResult = ClientWaitForEventsQuery['waitForEvents'];

export interface WaitForEventsOptions {
  correlationId: string;
  count: number;
  /** How long to wait in all (default 10 000 ms). */
  timeoutMs?: number;
}

export interface EventsOptions {
  filter?: AuditEventFilter;
  order?: AuditEventOrder;
  /** Events per request (default 100, at most 500). */
  pageSize?: number;
}

export interface TailOptions {
  filter?: AuditEventFilter;
  /** Start after this cursor (a Tail's `cursor`): every event stored since comes first. */
  after?: string | null;
  /** Tries in a row that may fail (connecting, or resuming) before the tail gives up; 8. */
  maxAttempts?: number;
}

/** A live tail: iterate it for events; `ready` resolves once the server will deliver them. */
export interface Tail extends AsyncIterable<AuditEvent> {
  readonly ready: Promise<void>;
  /**
   * Where the tail is: after the last event it yielded (before the first, where it started).
   * Keep it to resume later — `client.tail({ after: tail.cursor })` — with nothing missed.
   */
  readonly cursor: string | null;
  /** Ends the tail (as does leaving a `for await` loop). */
  close(): Promise<void>;
}

/**
 * The longest a single wait request asks the server for: a longer wait is several requests, so
 * that it stays under any FLUSH_MAX_TIMEOUT_MS a deployment sets (default 60 s) and under the
 * idle timeouts of proxies on the way.
 */
const MAX_WAIT_REQUEST_MS = 10_000;

/** A failure below GraphQL (network, a proxy's 5xx, a cut connection): always worth a retry. */
class TransportError extends AuditClientError {
  constructor(message: string) {
    super(message, 'TRANSPORT', true);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class AuditClient {
  private readonly fetchImpl: typeof fetch;
  /** How to close each open tail. */
  private readonly tails = new Set<() => Promise<void>>();

  constructor(private readonly opts: AuditClientOptions) {
    if (!opts.apiKey && !opts.tenant) {
      throw new TypeError('AuditClient needs an apiKey, or a tenant for AUTH_MODE=dev');
    }
    const f = opts.fetch ?? globalThis.fetch;
    if (!f) throw new TypeError('no fetch: pass options.fetch');
    this.fetchImpl = f.bind(globalThis);
  }

  /**
   * Writes the events, every one or none per call. Events without an id get one here, so every
   * retry sends the same ids and can only store each event once. Retries, up to `maxAttempts`:
   * BackpressureError and RateLimitedError after their retryAfterMs, CommitTimeoutError,
   * ShuttingDownError and other retryable refusals, and transport failures (with backoff).
   * Anything else (ValidationError, FORBIDDEN, …) throws AuditClientError at once.
   */
  async createEvents(
    events: readonly AuditEventInput[],
    options: CreateEventsOptions = {},
  ): Promise<CreateEventsResult> {
    const withIds = events.map((e) => (e.id ? e : { ...e, id: crypto.randomUUID() }));
    const maxAttempts = options.maxAttempts ?? 8;
    let last: AuditClientError | undefined;
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      let answer: ClientCreateEventsMutation['createAuditEvents'];
      try {
        answer = (
          await this.request<ClientCreateEventsMutation>(OPERATIONS.ClientCreateEvents, {
            input: { events: withIds, ack: options.ack ?? 'COMMITTED' },
          })
        ).createAuditEvents;
      } catch (err) {
        if (!(err instanceof TransportError)) throw err;
        last = err;
        await sleep(backoff(attempt));
        continue;
      }
      if (answer.__typename === 'CreateAuditEventsPayload') {
        return {
          events: answer.events,
          stored: answer.stored,
          duplicates: answer.duplicates,
          buffered: answer.buffered,
          attempts: attempt,
        };
      }
      const { __typename, message, code, retryable, ...details } = answer;
      last = new AuditClientError(`${__typename}: ${message}`, code, retryable, details);
      if (!retryable) throw last;
      const wait = 'retryAfterMs' in answer ? answer.retryAfterMs : backoff(attempt);
      await sleep(Math.min(wait, 30_000));
    }
    throw last ?? new AuditClientError('no attempt was made', 'TRANSPORT', true);
  }

  /** The barrier: every event accepted before the call is stored, duplicate or dead-lettered. */
  async flush(options: { timeoutMs?: number } = {}): Promise<FlushResult> {
    const answer = (
      await this.request<ClientFlushMutation>(OPERATIONS.ClientFlush, {
        timeoutMs: options.timeoutMs ?? null,
      })
    ).flushAudit;
    if (answer.__typename === 'FlushAuditPayload') return answer;
    const { __typename, message, code, retryable, ...details } = answer;
    throw new AuditClientError(`${__typename}: ${message}`, code, retryable, details);
  }

  /** Every event matching the filter, page after page (newest first unless `order` says). */
  async *events(options: EventsOptions = {}): AsyncGenerator<AuditEvent, void, undefined> {
    let after: string | null = null;
    for (;;) {
      const page: ClientEventsQuery['auditEvents'] = (
        await this.request<ClientEventsQuery>(OPERATIONS.ClientEvents, {
          first: options.pageSize ?? 100,
          after,
          filter: options.filter ?? null,
          order: options.order ?? null,
        })
      ).auditEvents;
      for (const edge of page.edges) yield edge.node;
      if (!page.pageInfo.hasNextPage || !page.pageInfo.endCursor) return;
      after = page.pageInfo.endCursor;
    }
  }

  /**
   * Resolves once `count` events of the correlation id are stored — events stored before the
   * call count too — with no polling: the service answers the request when they are
   * (waitForEvents). A request cut by the network, or refused as retryable (an instance that is
   * stopping), is sent again for the time left. Rejects with
   * WaitForEventsError saying what it saw when the time runs out or the rest were dead-lettered
   * ("timed out after 10000 ms: 120 of 150 stored, 30 dead-lettered: …").
   */
  async waitForEvents(options: WaitForEventsOptions): Promise<WaitResult> {
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    let last: WaitResult | undefined;
    let retries = 0;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0 && last) throw new WaitForEventsError(last);
      try {
        last = (
          await this.request<ClientWaitForEventsQuery>(OPERATIONS.ClientWaitForEvents, {
            correlationId: options.correlationId,
            count: options.count,
            timeoutMs: Math.max(1, Math.min(left, MAX_WAIT_REQUEST_MS)),
          })
        ).waitForEvents;
      } catch (err) {
        // A cut connection, or a refusal worth another try (an instance stopping: SHUTTING_DOWN).
        if (!(err instanceof AuditClientError) || !err.retryable || Date.now() >= deadline) {
          throw err;
        }
        await sleep(Math.min(backoff(++retries), Math.max(0, deadline - Date.now())));
        continue;
      }
      if (last.outcome === 'STORED') return last;
      if (last.outcome === 'DEAD_LETTERED') throw new WaitForEventsError(last);
    }
  }

  /**
   * Events as they are stored, matching the filter, from any instance (auditEventsAdded over
   * graphql-ws), each once, in commit order within each month. With `after` (a `cursor` this
   * tail or an earlier one gave), it starts with every event stored after that cursor.
   *
   * It resumes by itself, from its last cursor, when the connection drops or the server ends it
   * in a way worth a retry (an instance stopping, a slow read): nothing is missed or repeated
   * across the reconnect. It ends with an AuditClientError when resuming cannot help (a revoked
   * key, REPLAY_TOO_LARGE) or `maxAttempts` tries in a row fail.
   */
  tail(options: TailOptions = {}): Tail {
    const state: TailState = {
      cursor: options.after ?? null,
      closing: false,
      markReady: () => {},
      failReady: () => {},
    };
    const ready = new Promise<void>((resolve, reject) => {
      state.markReady = resolve;
      state.failReady = reject;
    });
    ready.catch(() => {}); // a tail nobody waits on for readiness still reports through iteration
    const open = () => {
      // A connection of its own, never retried by graphql-ws: a retried subscription would be
      // sent again with the cursor it was first opened with, not the last one delivered.
      const socket = this.socket();
      const iterator = socket.iterate<ClientTailSubscription>({
        query: OPERATIONS.ClientTail,
        variables: { filter: options.filter ?? null, after: state.cursor },
      });
      state.current = { socket, iterator };
      return state.current;
    };
    const stream = resumingTail(state, open, options.maxAttempts ?? 8);
    // The first message (readiness) comes only when the stream is read, so it is read ahead of
    // the caller, one step at a time: `ready` can be awaited before the first `next()`.
    const ahead: IteratorResult<AuditEvent>[] = [];
    let failure: { error: unknown } | undefined;
    let pulling: Promise<void> | undefined;
    const pull = () => {
      pulling ??= stream
        .next()
        .then(
          (step) => {
            ahead.push(step);
          },
          (error: unknown) => {
            failure ??= { error };
            state.failReady(error);
          },
        )
        .finally(() => {
          pulling = undefined;
        });
      return pulling;
    };
    void pull();
    const next = async (): Promise<IteratorResult<AuditEvent>> => {
      for (;;) {
        const step = ahead.shift();
        if (step) return step;
        if (failure) {
          const { error } = failure;
          failure = undefined;
          ahead.push({ value: undefined, done: true });
          throw error;
        }
        await pull();
      }
    };
    const tails = this.tails;
    const close = async () => {
      if (state.closing) return;
      state.closing = true;
      tails.delete(close);
      state.failReady(
        new AuditClientError('the tail was closed before it was ready', 'CLOSED', false),
      );
      // graphql-ws's return() completes the subscription but leaves a read waiting on it
      // waiting; its throw() wakes that read, and the stream ends with it.
      await state.current?.iterator.return?.();
      await state.current?.iterator.throw?.(new Error('tail closed'));
      await state.current?.socket.dispose();
      await stream.return(undefined);
    };
    tails.add(close);
    return {
      ready,
      close,
      get cursor() {
        return state.cursor;
      },
      [Symbol.asyncIterator]: () => ({
        next,
        async return(): Promise<IteratorResult<AuditEvent>> {
          await close();
          return { value: undefined, done: true };
        },
      }),
    };
  }

  /** Ends every tail this client opened. */
  async close(): Promise<void> {
    await Promise.all([...this.tails].map((close) => close()));
  }

  private socket(): WsClient {
    return createClient({
      url: this.opts.url.replace(/^http/, 'ws'),
      ...(this.opts.webSocketImpl ? { webSocketImpl: this.opts.webSocketImpl } : {}),
      connectionParams: this.opts.apiKey
        ? { authorization: `Bearer ${this.opts.apiKey}` }
        : { tenantId: this.opts.tenant },
      lazy: true,
      retryAttempts: 0,
    });
  }

  private headers(): Record<string, string> {
    return {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      ...(this.opts.apiKey
        ? { authorization: `Bearer ${this.opts.apiKey}` }
        : { 'x-tenant-id': this.opts.tenant! }),
    };
  }

  /** One operation over HTTP: its data, or AuditClientError for `errors`, TransportError below. */
  private async request<T>(query: string, variables: Record<string, unknown>): Promise<T> {
    let res: Response;
    try {
      res = await this.fetchImpl(this.opts.url, {
        method: 'POST',
        headers: this.headers(),
        body: JSON.stringify({ query, variables }),
      });
    } catch (err) {
      throw new TransportError(`request failed: ${(err as Error).message ?? err}`);
    }
    let body: { data?: T | null; errors?: GraphQLErrorBody[] };
    try {
      body = (await res.json()) as typeof body;
    } catch (err) {
      if (res.status >= 500 || res.status === 0) {
        throw new TransportError(`HTTP ${res.status}: ${(err as Error).message ?? err}`);
      }
      throw new AuditClientError(`HTTP ${res.status}: not a GraphQL response`, 'HTTP', false);
    }
    if (body.errors?.length) throw graphQLError(body.errors);
    if (!body.data) throw new TransportError(`HTTP ${res.status}: no data`);
    return body.data;
  }
}

interface GraphQLErrorBody {
  message: string;
  extensions?: { code?: string; retryable?: boolean; [key: string]: unknown };
}

function graphQLError(errors: readonly GraphQLErrorBody[]): AuditClientError {
  const first = errors[0]!;
  const { code, retryable, ...details } = first.extensions ?? {};
  return new AuditClientError(
    first.message,
    typeof code === 'string' ? code : 'GRAPHQL',
    retryable === true,
    details,
  );
}

/** 250 ms, doubling, at most 5 s, with jitter. */
/** What a tail shares with the loop that feeds it. */
interface TailState {
  cursor: string | null;
  closing: boolean;
  markReady: () => void;
  failReady: (err: unknown) => void;
  current?: {
    socket: WsClient;
    iterator: AsyncIterableIterator<{ data?: ClientTailSubscription | null; errors?: unknown }>;
  };
}

/**
 * The tail's events over one subscription after another: each opened (`open`) after the cursor
 * the last one reached, until one ends in a way a retry cannot help or `maxAttempts` in a row
 * fail.
 */
async function* resumingTail(
  state: TailState,
  open: () => NonNullable<TailState['current']>,
  maxAttempts: number,
): AsyncGenerator<AuditEvent, void, undefined> {
  let failures = 0;
  try {
    for (;;) {
      const current = open();
      let failure: unknown;
      try {
        for await (const result of current.iterator) {
          if (Array.isArray(result.errors) && result.errors.length) {
            throw graphQLError(result.errors as GraphQLErrorBody[]);
          }
          const message = result.data?.auditEventsAdded;
          if (!message) continue;
          if (message.__typename === 'SubscriptionReady') {
            state.cursor = message.startCursor ?? state.cursor;
            state.markReady();
          } else if (message.__typename === 'SubscriptionInterruptedError') {
            throw new AuditClientError(message.message, message.reason, message.retryable);
          } else {
            state.cursor = message.cursor;
            failures = 0;
            yield message.node;
          }
        }
        failure = new TransportError('the server completed the tail');
      } catch (err) {
        failure = err;
      } finally {
        await current.iterator.return?.();
        await current.socket.dispose();
      }
      if (state.closing) return;
      const error = asClientError(failure);
      if (!error.retryable || ++failures >= maxAttempts) throw error;
      await sleep(backoff(failures));
      if (state.closing) return;
    }
  } catch (err) {
    if (state.closing) return;
    state.failReady(err);
    throw err;
  }
}

/**
 * What a tail's connection ended with, as a client error: graphql-ws rejects with the socket's
 * close event, whose 4xxx codes (4401, 4403, …) are refusals and the rest lost connections.
 */
function asClientError(failure: unknown): AuditClientError {
  if (failure instanceof AuditClientError) return failure;
  const close = failure as { code?: unknown; reason?: unknown } | null;
  if (close && typeof close.code === 'number') {
    const reason = typeof close.reason === 'string' && close.reason ? `: ${close.reason}` : '';
    if (close.code >= 4000) {
      const code = close.code === 4401 || close.code === 4403 ? 'UNAUTHENTICATED' : 'CLOSED';
      return new AuditClientError(`connection refused (${close.code}${reason})`, code, false);
    }
    return new TransportError(`connection closed (${close.code}${reason})`);
  }
  return new TransportError(`connection failed: ${(failure as Error)?.message ?? failure}`);
}

function backoff(attempt: number): number {
  const base = Math.min(5_000, 250 * 2 ** (attempt - 1));
  return base / 2 + Math.random() * (base / 2);
}
