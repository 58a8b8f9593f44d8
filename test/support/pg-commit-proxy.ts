import { createServer, connect as netConnect, type Socket } from 'node:net';

/**
 * A loopback TCP proxy in front of PostgreSQL that can make a COMMIT's outcome unknown to the
 * client: it forwards the COMMIT, waits until the server answers (so the transaction certainly
 * committed), and then cuts the connection instead of passing the answer on. The client sees
 * "connection terminated" for a transaction that is in fact durable: exactly the case the batch
 * ledger exists for. Only the service under test connects through it.
 */
export interface CommitProxy {
  readonly port: number;
  /** The server's URL with host and port replaced by the proxy's. */
  url(databaseUrl: string): string;
  /** Loses the answers to the next `n` COMMITs sent through the proxy. */
  loseNextCommitAnswers(n: number): void;
  /** COMMIT answers lost so far (each one a transaction that did commit). */
  readonly lost: number;
  close(): Promise<void>;
}

const PROTOCOL_3 = 196_608;
const QUERY = 0x51; // 'Q': a simple-protocol query (pg sends BEGIN/COMMIT/ROLLBACK this way)

export async function startCommitProxy(target = { host: '127.0.0.1', port: 5432 }) {
  let armed = 0;
  let lost = 0;
  const sockets = new Set<Socket>();

  const server = createServer((client) => {
    const upstream = netConnect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    let buffered = Buffer.alloc(0);
    let started = false;
    let losing = false;
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

  const proxy: CommitProxy = {
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
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
