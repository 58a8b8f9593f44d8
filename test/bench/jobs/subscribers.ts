import { createClient, type Client as WsClient } from 'graphql-ws';
import { Client } from 'undici';
import { WebSocket } from 'ws';
import { epochNow, ownCpuSeconds, sleep } from '../util.js';
import type { JobChannel } from '../worker.js';
import type {
  SubscribersCheck,
  SubscribersJob,
  SubscribersResult,
  TransportResult,
} from '../worker-protocol.js';

const SUBSCRIPTION = `subscription {
  flushCompleted {
    __typename
    ... on SubscriptionReady { instanceId }
    ... on FlushCompleted { batchId committedAt stored }
    ... on SubscriptionInterruptedError { reason }
    ... on AuditError { message }
  }
}`;

interface Subscriber {
  tenant: string;
  transport: 'ws' | 'sse';
  ready: Promise<void>;
  received: Set<string>;
  duplicates: number;
  interrupted: boolean;
  close(): void;
}

/** Shared per transport: latency samples and errors. */
interface Tally {
  latencies: number[];
  errors: string[];
}

function onMessage(
  sub: Subscriber,
  tally: Tally,
  m: Record<string, any> | undefined,
  ready: () => void,
) {
  const at = epochNow();
  switch (m?.__typename) {
    case 'SubscriptionReady':
      ready();
      return;
    case 'FlushCompleted':
      // committedAt is set by the service right after COMMIT (millisecond precision).
      tally.latencies.push(at - Date.parse(m.committedAt));
      if (sub.received.has(m.batchId)) sub.duplicates++;
      else sub.received.add(m.batchId);
      return;
    case 'SubscriptionInterruptedError':
      sub.interrupted = true;
      tally.errors.push(`interrupted: ${m.reason}`);
      return;
    default:
      tally.errors.push(`unexpected message: ${JSON.stringify(m).slice(0, 200)}`);
  }
}

function wsSubscriber(url: string, tenant: string, tally: Tally): Subscriber {
  const client: WsClient = createClient({
    url: url.replace(/^http/, 'ws'),
    webSocketImpl: WebSocket,
    connectionParams: { tenantId: tenant },
    retryAttempts: 0,
    lazy: true,
  });
  let ready!: () => void;
  let failed!: (err: Error) => void;
  const sub: Subscriber = {
    tenant,
    transport: 'ws',
    ready: new Promise<void>((resolve, reject) => {
      ready = resolve;
      failed = reject;
    }),
    received: new Set(),
    duplicates: 0,
    interrupted: false,
    close: () => void client.dispose(),
  };
  client.subscribe(
    { query: SUBSCRIPTION },
    {
      next: (v) => {
        if (v.errors) tally.errors.push(`errors: ${JSON.stringify(v.errors).slice(0, 200)}`);
        onMessage(sub, tally, (v.data as Record<string, any> | null)?.flushCompleted, ready);
      },
      error: (err) => {
        const text = err instanceof Error ? err.message : JSON.stringify(err);
        tally.errors.push(`ws error: ${text}`.slice(0, 200));
        failed(new Error(text));
      },
      complete: () => {},
    },
  );
  return sub;
}

function sseSubscriber(url: string, tenant: string, tally: Tally): Subscriber {
  const u = new URL(url);
  const client = new Client(u.origin, { bodyTimeout: 0, headersTimeout: 60_000 });
  let ready!: () => void;
  let failed!: (err: Error) => void;
  let closed = false;
  const sub: Subscriber = {
    tenant,
    transport: 'sse',
    ready: new Promise<void>((resolve, reject) => {
      ready = resolve;
      failed = reject;
    }),
    received: new Set(),
    duplicates: 0,
    interrupted: false,
    close: () => {
      closed = true;
      void client.destroy();
    },
  };
  void (async () => {
    try {
      const res = await client.request({
        path: u.pathname,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          accept: 'text/event-stream',
          'x-tenant-id': tenant,
        },
        body: JSON.stringify({ query: SUBSCRIPTION }),
      });
      if (res.statusCode !== 200) throw new Error(`SSE answered ${res.statusCode}`);
      let buffer = '';
      res.body.setEncoding('utf8');
      for await (const chunk of res.body as AsyncIterable<string>) {
        buffer += chunk;
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (event !== 'next' || data.length === 0) continue;
          const body = JSON.parse(data.join('\n')) as {
            data?: Record<string, any>;
            errors?: unknown;
          };
          if (body.errors)
            tally.errors.push(`errors: ${JSON.stringify(body.errors).slice(0, 200)}`);
          onMessage(sub, tally, body.data?.flushCompleted, ready);
        }
      }
    } catch (err) {
      if (closed) return;
      tally.errors.push(`sse: ${(err as Error).message}`.slice(0, 200));
      failed(err as Error);
    }
  })();
  return sub;
}

/**
 * Holds graphql-ws and SSE subscribers to `flushCompleted`; reports "ready" once every one has
 * its SubscriptionReady, then, told which batches each tenant committed, counts what each
 * subscriber missed and how long each message took from commit to here.
 */
export async function runSubscribers(
  job: SubscribersJob,
  channel: JobChannel,
): Promise<SubscribersResult> {
  const cpuStart = ownCpuSeconds();
  const tallies = {
    ws: { latencies: [], errors: [] },
    sse: { latencies: [], errors: [] },
  } as Record<'ws' | 'sse', Tally>;
  const subs: Subscriber[] = [];
  const started = performance.now();
  let failedToStart = 0;
  for (let i = 0; i < job.subscriptions.length; i += job.connectConcurrency) {
    const group = job.subscriptions.slice(i, i + job.connectConcurrency).map((s) => {
      const tally = tallies[s.transport];
      return s.transport === 'ws'
        ? wsSubscriber(job.url, s.tenant, tally)
        : sseSubscriber(job.url, s.tenant, tally);
    });
    subs.push(...group);
    const settled = await Promise.allSettled(
      group.map((s) =>
        Promise.race([
          s.ready,
          sleep(60_000).then(() => Promise.reject(new Error('no SubscriptionReady in 60 s'))),
        ]),
      ),
    );
    failedToStart += settled.filter((r) => r.status === 'rejected').length;
  }
  const readyMs = performance.now() - started;
  const check = new Promise<SubscribersCheck>((resolve) =>
    channel.messages.on('message', (m: SubscribersCheck) => {
      if (m.type === 'check') resolve(m);
    }),
  );
  channel.progress({ ready: subs.length - failedToStart, failed: failedToStart, readyMs });
  const { expected, ignore, timeoutMs } = await check;

  // Everything committed has been published; give delivery until the deadline to finish.
  const complete = (s: Subscriber) => (expected[s.tenant] ?? []).every((id) => s.received.has(id));
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline && !subs.every((s) => complete(s) || s.interrupted)) {
    await sleep(50);
  }
  for (const s of subs) s.close();

  const summarise = (transport: 'ws' | 'sse'): TransportResult => {
    const mine = subs.filter((s) => s.transport === transport);
    let missing = 0;
    let unexpected = 0;
    for (const s of mine) {
      const want = new Set(expected[s.tenant] ?? []);
      const old = new Set(ignore[s.tenant] ?? []);
      for (const id of want) if (!s.received.has(id)) missing++;
      for (const id of s.received) if (!want.has(id) && !old.has(id)) unexpected++;
    }
    return {
      subscribers: mine.length,
      latenciesMs: tallies[transport].latencies,
      missing,
      unexpected,
      duplicates: mine.reduce((n, s) => n + s.duplicates, 0),
      interrupted: mine.filter((s) => s.interrupted).length,
      errors: [...new Set(tallies[transport].errors)].slice(0, 10),
    };
  };
  await sleep(200);
  return {
    ws: summarise('ws'),
    sse: summarise('sse'),
    readyMs,
    cpuSeconds: ownCpuSeconds() - cpuStart,
  };
}
