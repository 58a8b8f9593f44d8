import { randomBytes } from 'node:crypto';
import { type Client, createClient } from 'graphql-ws';
import { inject } from 'vitest';
import { WebSocket } from 'ws';

/** Environment for an app whose pub/sub goes through the test Redis, under its own key prefix. */
export function redisEnv(prefix = `test:${randomBytes(4).toString('hex')}:`): {
  REDIS_URL: string;
  REDIS_KEY_PREFIX: string;
} {
  return { REDIS_URL: inject('redisUrl'), REDIS_KEY_PREFIX: prefix };
}

export const FLUSH_COMPLETED = `subscription Flushed($correlationId: String) {
  flushCompleted(filter: { correlationId: $correlationId }) {
    __typename
    ... on SubscriptionReady { instanceId subscribedAt }
    ... on FlushCompleted {
      batchId trigger attempts committedAt durationMs instanceId stored duplicates deadLettered
      correlations { correlationId stored duplicates deadLettered }
    }
    ... on SubscriptionInterruptedError { reason }
    ... on AuditError { message retryable }
  }
}`;

export const EVENTS_ADDED = `subscription Tail($filter: AuditEventFilter) {
  auditEventsAdded(filter: $filter) {
    __typename
    ... on SubscriptionReady { instanceId }
    ... on AuditEventAdded {
      cursor
      node { id: eventId occurredAt correlationId outcome eventType batchId data actor { type id: actorId ip } resource { id: resourceId } }
    }
    ... on SubscriptionInterruptedError { reason }
    ... on AuditError { message retryable }
    
  }
}`;

/** A message of a subscription: the field's value (`__typename` and what the query selected). */
export type Message = Record<string, any> & { __typename: string };

/** The messages of one subscription, pulled one at a time. */
export interface Stream {
  next(): Promise<Message>;
  /** Messages until `done(message, all so far)` says stop; returns them all. */
  until(done: (m: Message, all: Message[]) => boolean): Promise<Message[]>;
  close(): Promise<void>;
}

function streamOf(pull: () => Promise<Message | null>, close: () => Promise<void>): Stream {
  const stream: Stream = {
    async next() {
      const m = await pull();
      if (m === null) throw new Error('the subscription ended');
      return m;
    },
    async until(done) {
      const all: Message[] = [];
      for (;;) {
        const m = await stream.next();
        all.push(m);
        if (done(m, all)) return all;
      }
    },
    close,
  };
  return stream;
}

/** A graphql-ws client of the tenant (connection_init `{ tenantId }`), never retrying. */
export function wsClient(
  httpUrl: string,
  connectionParams: Record<string, unknown> | undefined,
  on: { closed?: (event: unknown) => void } = {},
  options: { lazyCloseTimeout?: number } = {},
): Client {
  return createClient({
    url: httpUrl.replace(/^http/, 'ws'),
    webSocketImpl: WebSocket,
    connectionParams,
    retryAttempts: 0,
    lazy: true,
    on,
    ...options,
  });
}

/** Subscribes over graphql-ws; the stream yields `data[field]` of each result. */
export function wsSubscribe(
  client: Client,
  field: string,
  query: string,
  variables: Record<string, unknown> = {},
): Stream {
  const it = client.iterate({ query, variables });
  return streamOf(
    async () => {
      // A subscription refused when it is opened rejects with graphql-ws' `error` message: the
      // list of its GraphQL errors.
      const r = await it.next();
      if (r.done) return null;
      if (r.value.errors) throw new Error(`GraphQL errors: ${JSON.stringify(r.value.errors)}`);
      return (r.value.data as Record<string, Message>)[field]!;
    },
    async () => {
      await it.return?.();
    },
  );
}

export interface SseEvent {
  event: string;
  data: string;
}

/**
 * Subscribes over SSE (yoga's built-in: POST with `accept: text/event-stream`), as `tenant`
 * (x-tenant-id). A small parser: events are separated by a blank line, `:` lines are pings.
 */
export async function sseSubscribe(
  httpUrl: string,
  tenant: string | null,
  field: string,
  query: string,
  variables: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Promise<Stream & { events: SseEvent[] }> {
  const controller = new AbortController();
  const res = await fetch(httpUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'text/event-stream',
      ...(tenant ? { 'x-tenant-id': tenant } : {}),
      ...headers,
    },
    body: JSON.stringify({ query, variables }),
    signal: controller.signal,
  });
  if (!res.ok || !res.body) {
    const body = await res.text().catch(() => '');
    throw Object.assign(new Error(`SSE request failed: ${res.status} ${body}`), {
      status: res.status,
      headers: res.headers,
      body,
    });
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const events: SseEvent[] = [];
  let buffer = '';

  async function nextEvent(): Promise<SseEvent | null> {
    for (;;) {
      const end = buffer.indexOf('\n\n');
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const ev: SseEvent = { event: 'message', data: '' };
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const key = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (key === 'event') ev.event = value;
          else if (key === 'data') data.push(value);
        }
        if (block.split('\n').every((l) => l.startsWith(':'))) continue; // a ping
        ev.data = data.join('\n');
        events.push(ev);
        return ev;
      }
      const chunk = await reader.read();
      if (chunk.done) return null;
      buffer += decoder.decode(chunk.value, { stream: true });
    }
  }

  const stream = streamOf(
    async () => {
      const ev = await nextEvent();
      if (ev === null || ev.event === 'complete') return null;
      const body = JSON.parse(ev.data);
      if (body.errors) throw new Error(`GraphQL errors: ${JSON.stringify(body.errors)}`);
      return body.data[field] as Message;
    },
    async () => {
      controller.abort();
      await reader.cancel().catch(() => {});
    },
  );
  return Object.assign(stream, { events });
}

/** Sums FlushCompleted counts of one correlation id over messages. */
export function settledOf(messages: Message[], correlationId: string) {
  const total = { stored: 0, duplicates: 0, deadLettered: 0, batches: 0 };
  for (const m of messages) {
    if (m.__typename !== 'FlushCompleted') continue;
    for (const c of m.correlations) {
      if (c.correlationId !== correlationId) continue;
      total.stored += c.stored;
      total.duplicates += c.duplicates;
      total.deadLettered += c.deadLettered;
    }
    total.batches++;
  }
  return { ...total, settled: total.stored + total.duplicates + total.deadLettered };
}

/** Reads FlushCompleted messages until `expected` events of the correlation id have settled. */
export async function waitForSettled(stream: Stream, correlationId: string, expected: number) {
  const messages = await stream.until((m, all) => {
    if (m.__typename !== 'FlushCompleted') {
      throw new Error(`unexpected message while waiting: ${JSON.stringify(m)}`);
    }
    return settledOf(all, correlationId).settled >= expected;
  });
  return { messages, ...settledOf(messages, correlationId) };
}
