import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';

/** A loopback TCP proxy to the service whose open connections the test can cut. */
export async function cuttableProxy(targetPort: number) {
  const open = new Set<Socket>();
  let accepted = 0;
  const server: Server = createServer((inbound) => {
    accepted++;
    const outbound = netConnect(targetPort, '127.0.0.1');
    open.add(inbound);
    inbound.pipe(outbound).pipe(inbound);
    const end = () => {
      open.delete(inbound);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    get open() {
      return open.size;
    },
    get accepted() {
      return accepted;
    },
    cut(): number {
      const n = open.size;
      for (const s of [...open]) s.destroy();
      return n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}
