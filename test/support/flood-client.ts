/**
 * A hostile client in a process of its own (so that the test's own event loop, which times
 * another tenant's requests, is not also busy with this client's messages): opens
 * `connections` graphql-ws connections with `key`, each with `perConnection` subscriptions of
 * `query`, and counts what comes back. Started with fork(): says `ready` once loaded, floods on
 * `go`, and answers `report` with its counts.
 */
import { createClient } from 'graphql-ws';
import { WebSocket } from 'ws';

const [url, key, connections, perConnection, query] = process.argv.slice(2) as [
  string,
  string,
  string,
  string,
  string,
];
const counts: Record<string, number> = {};
const count = (k: string) => {
  counts[k] = (counts[k] ?? 0) + 1;
};

function flood(): void {
  for (let c = 0; c < Number(connections); c++) {
    const client = createClient({
      url: url.replace(/^http/, 'ws'),
      webSocketImpl: WebSocket,
      connectionParams: { authorization: `Bearer ${key}` },
      retryAttempts: 0,
      lazy: true,
      on: { closed: (e) => count(`closed:${(e as { code?: number }).code}`) },
    });
    for (let s = 0; s < Number(perConnection); s++) {
      client.subscribe(
        { query },
        {
          next: (r) => {
            const m = (r.data as Record<string, Record<string, unknown>> | null | undefined)
              ?.auditEventsAdded;
            if (!m) return count('errors');
            count(String(m.__typename));
            if (
              m.__typename === 'AuditEventAdded' &&
              String((m.node as { eventType?: string }).eventType).startsWith('auditgraph.')
            ) {
              count('serviceEventsDelivered');
            }
            if (m.__typename === 'SubscriptionInterruptedError') count(`interrupted:${m.reason}`);
          },
          // A subscription refused when it is opened is a graphql-ws `error` message.
          error: (e) => {
            const first = Array.isArray(e)
              ? (e[0] as { extensions?: { code?: string; limit?: string } } | undefined)
              : undefined;
            if (first?.extensions?.code === 'LIMIT_EXCEEDED') {
              count(`limit:${first.extensions.limit}`);
            } else count('subscriptionError');
          },
          complete: () => count('complete'),
        },
      );
    }
  }
}

process.on('message', (m) => {
  if (m === 'go') flood();
  if (m === 'report') process.send?.(counts);
});
process.send?.('ready');
