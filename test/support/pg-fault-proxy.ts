import { createServer, connect as netConnect, type Socket } from 'node:net';

/**
 * A loopback TCP proxy in front of PostgreSQL for faults that `pg_terminate_backend` cannot aim
 * precisely. Only the service under test connects through it.
 *
 * - Lost COMMIT answers: it forwards a COMMIT, waits until the server answers (so the
 *   transaction certainly committed), and then cuts the connection instead of passing the
 *   answer on. The client sees "connection terminated" for a transaction that is in fact
 *   durable: exactly the case the batch ledger exists for.
 * - Connections that die as they open: it passes a new connection's start-up through to the
 *   server's first ReadyForQuery and, in the same write, a FATAL "terminating connection due to
 *   administrator command", then closes. The client learns that its fresh connection is ready
 *   and that it is gone in one read: before any caller of the pool had a chance to listen.
 */
export interface FaultProxy {
  readonly port: number;
  /** The server's URL with host and port replaced by the proxy's. */
  url(databaseUrl: string): string;
  /** Loses the answers to the next `n` COMMITs sent through the proxy. */
  loseNextCommitAnswers(n: number): void;
  /** COMMIT answers lost so far (each one a transaction that did commit). */
  readonly lost: number;
  /** Ends each of the next `n` new connections right after its start-up, as described above. */
  killNextConnectionsAfterStartup(n: number): void;
  /** Connections ended that way so far. */
  readonly killedAfterStartup: number;
  close(): Promise<void>;
}

const PROTOCOL_3 = 196_608;
const QUERY = 0x51; // 'Q': a simple-protocol query (pg sends BEGIN/COMMIT/ROLLBACK this way)
const READY_FOR_QUERY = 0x5a; // 'Z'

/** A backend ErrorResponse: FATAL 57P01, what the server sends to a terminated session. */
function adminShutdownMessage(): Buffer {
  const fields = Buffer.concat([
    ...(
      [
        ['S', 'FATAL'],
        ['V', 'FATAL'],
        ['C', '57P01'],
        ['M', 'terminating connection due to administrator command'],
      ] as const
    ).map(([k, v]) => Buffer.from(`${k}${v}\0`, 'utf8')),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(5);
  header.write('E', 0, 'utf8');
  header.writeInt32BE(fields.length + 4, 1);
  return Buffer.concat([header, fields]);
}

export async function startFaultProxy(target = { host: '127.0.0.1', port: 5432 }) {
  let armed = 0;
  let lost = 0;
  let killArmed = 0;
  let killed = 0;
  const sockets = new Set<Socket>();

  const server = createServer((client) => {
    const upstream = netConnect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    let buffered = Buffer.alloc(0);
    let started = false;
    let losing = false;
    // Decided when the connection opens: this one dies right after its start-up.
    const dieAfterStartup = killArmed > 0;
    if (dieAfterStartup) killArmed--;
    let backendStarted = false;
    let fromServer = Buffer.alloc(0);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      // Frontend messages: untyped (length-prefixed) until the StartupMessage, then type + length.
      for (;;) {
        const header = started ? 5 : 8;
        if (buffered.length < header) break;
        const length = started ? buffered.readInt32BE(1) + 1 : buffered.readInt32BE(0);
        if (buffered.length < length) break;
        const message = buffered.subarray(0, length);
        buffered = buffered.subarray(length);
        if (!started) {
          if (message.readInt32BE(4) === PROTOCOL_3) started = true;
        } else if (armed > 0 && message[0] === QUERY) {
          const text = message.subarray(5, length - 1).toString('utf8');
          if (/^\s*commit\s*;?\s*$/i.test(text)) {
            armed--;
            losing = true;
          }
        }
        upstream.write(message);
      }
    });
    upstream.on('data', (chunk) => {
      if (dieAfterStartup && !backendStarted) {
        // Backend messages are type + length; find the end of the first ReadyForQuery.
        fromServer = Buffer.concat([fromServer, chunk]);
        let at = 0;
        while (fromServer.length >= at + 5) {
          const end = at + 1 + fromServer.readInt32BE(at + 1);
          if (fromServer.length < end) break;
          if (fromServer[at] === READY_FOR_QUERY) {
            backendStarted = true;
            killed++;
            client.end(Buffer.concat([fromServer.subarray(0, end), adminShutdownMessage()]));
            upstream.destroy();
            return;
          }
          at = end;
        }
        return;
      }
      if (losing) {
        // The server answered the COMMIT: it is durable. The client never learns that.
        lost++;
        cut();
        return;
      }
      client.write(chunk);
    });
    client.on('error', cut);
    upstream.on('error', cut);
    client.on('close', () => {
      upstream.destroy();
      sockets.delete(client);
    });
    upstream.on('close', () => {
      client.destroy();
      sockets.delete(upstream);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  const port = address.port;

  const proxy: FaultProxy = {
    port,
    url(databaseUrl: string) {
      const u = new URL(databaseUrl);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    loseNextCommitAnswers(n: number) {
      armed = n;
    },
    get lost() {
      return lost;
    },
    killNextConnectionsAfterStartup(n: number) {
      killArmed = n;
    },
    get killedAfterStartup() {
      return killed;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
