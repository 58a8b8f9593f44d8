import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { inject } from 'vitest';
import { type App, buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import type { TenantId } from '../../src/domain/tenant.js';
import type { BatchWriter } from '../../src/ingest/batch-writer.js';
import { databaseUrl, graphqlClient, type TestApp } from './harness.js';

/** Helpers shared by the fault tests (faults-*.test.ts). */

export const STATS_FULL = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered discarded replayed failedWrites identityHolds fromBooks lastError
}  } }`;

export interface FullStats {
  accepted: number;
  stored: number;
  duplicates: number;
  pending: number;
  deadLettered: number;
  discarded: number;
  replayed: number;
  failedWrites: number;
  identityHolds: boolean;
  lastError: string | null;
}

export async function readStats(t: Pick<TestApp, 'gql'>, tenant: string): Promise<FullStats> {
  const r = await t.gql(tenant, STATS_FULL);
  if (r.auditStats.__typename !== 'AuditStats') {
    throw new Error(`auditStats answered ${JSON.stringify(r.auditStats)}`);
  }
  return r.auditStats as FullStats;
}

/** The identity recomputed from its terms, not trusting identityHolds. */
export const balances = (s: FullStats) =>
  s.accepted === s.stored + s.duplicates + s.pending + s.deadLettered + s.discarded;

/**
 * Starts the service in-process like `startApp`, but lets the caller attach listeners to
 * `app.graph.events` before anything runs (the retry worker can act during `start()`).
 */
export async function startAppWith(
  env: Record<string, string>,
  beforeStart: (app: App) => void = () => {},
): Promise<TestApp> {
  const config = loadConfig({
    DATABASE_URL: databaseUrl(),
    AUTH_MODE: 'dev',
    TENANT_AUTO_PROVISION: 'true',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
    DLQ_DIR: mkdtempSync(join(tmpdir(), 'auditgraph-dlq-')),
    // The run's key, as every app of a file's deployment has (never one in the repository).
    CHECKPOINT_KEY_FILE: inject('checkpointKeyFile'),
    ...env,
  });
  const app = buildApp(config);
  beforeStart(app);
  const { port } = await app.start();
  const url = `http://127.0.0.1:${port}/graphql`;
  return { app, url, ...graphqlClient(url), stop: () => app.stop() };
}

/**
 * Resolves once the app holds nothing of `tenant` in a buffer or in the dead-letter queue
 * (everything replayed), judged after each batch or dead-letter step the app reports; rejects
 * after `timeoutMs` with the counters.
 */
export function untilNothingOutstanding(
  app: App,
  tenant: string,
  timeoutMs: number,
): Promise<void> {
  const { ingest, events } = app.graph;
  return new Promise((resolve, reject) => {
    const cleanup: (() => void)[] = [];
    const finish = (err?: Error) => {
      for (const f of cleanup) f();
      if (err) reject(err);
      else resolve();
    };
    const check = () => {
      const s = ingest.stats(tenant as TenantId);
      if (s.pending === 0 && s.deadLettered === 0) finish();
    };
    // Listeners run before the worker updates its counters: look once the step is finished.
    cleanup.push(events.onBatchSettled((e) => e.tenant === tenant && setImmediate(check)));
    cleanup.push(events.onDeadLetter((e) => e.tenant === tenant && setImmediate(check)));
    const timer = setTimeout(() => {
      const s = ingest.stats(tenant as TenantId);
      finish(new Error(`still outstanding after ${timeoutMs} ms: ${JSON.stringify(s)}`));
    }, timeoutMs);
    cleanup.push(() => clearTimeout(timer));
    check();
  });
}

/** Counts the batches the ledger recognised as already committed by an earlier attempt. */
export function watchLedger(app: App): { recognised: number } {
  // The service's one BatchWriter, shared by the ingest path and the retry worker.
  const writer = (app.graph.retryWorker as any).writer as BatchWriter;
  const original = writer.write.bind(writer);
  const seen = { recognised: 0 };
  writer.write = async (...args: Parameters<BatchWriter['write']>) => {
    const result = await original(...args);
    if (result.alreadyCommitted) seen.recognised++;
    return result;
  };
  return seen;
}

/**
 * A child this test process started must not outlive it (a test that timed out may never reach
 * its cleanup): SIGKILL it when this process exits.
 */
function killWithThisProcess(child: ChildProcess): void {
  const onExit = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', onExit);
  child.once('exit', () => process.off('exit', onExit));
}

/** A loopback port nobody listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Resolves with `p`, or rejects after `ms` naming `what`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    }),
  ]);
}

/**
 * A redis-server of the test's own, on a loopback port, keeping nothing on disk: the shared
 * Redis is never stopped, this one may be killed and started again on the same port.
 */
export class OwnRedis {
  private child: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    /** With an append-only file (fsync always) in this directory: what it took survives a restart. */
    readonly aofDir?: string,
  ) {}

  static async start(opts: { aof?: boolean } = {}): Promise<OwnRedis> {
    const dir = opts.aof ? mkdtempSync(join(tmpdir(), 'auditgraph-aof-')) : undefined;
    const r = new OwnRedis(await freePort(), dir);
    await r.start();
    return r;
  }

  /** SHUTDOWN (Redis writes and closes its files), then the server again on the same port. */
  async restart(): Promise<void> {
    const child = this.child;
    if (child && this.running) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      const c = new Redis(this.url, {
        lazyConnect: true,
        maxRetriesPerRequest: 1,
        retryStrategy: () => null,
      });
      c.on('error', () => {}); // the server goes away under it, as asked
      await c.connect();
      await c.call('SHUTDOWN').catch(() => undefined); // the connection ends with the server
      c.disconnect();
      await within(exited, 10_000, 'redis-server SHUTDOWN');
    }
    await this.start();
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && !this.child.signalCode;
  }

  /** Starts the server and resolves once it says it accepts connections (10 s at most). */
  async start(): Promise<void> {
    if (this.running) return;
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        ...(this.aofDir
          ? ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', this.aofDir]
          : ['--appendonly', 'no']),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    killWithThisProcess(child);
    let output = '';
    await within(
      new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (chunk: Buffer) => {
          output += chunk.toString();
          if (output.includes('Ready to accept connections')) resolve();
        });
        child.stderr!.on('data', (chunk: Buffer) => {
          output += chunk.toString();
        });
        child.once('exit', (code) =>
          reject(new Error(`redis-server exited (${code}) before it was ready:\n${output}`)),
        );
        child.once('error', reject);
      }),
      10_000,
      `redis-server on port ${this.port}`,
    ).catch((err: unknown) => {
      child.kill('SIGKILL');
      throw err;
    });
  }

  private watchdog: NodeJS.Timeout | undefined;

  /**
   * SIGSTOP: the server keeps its connections but answers nothing (a partition without resets).
   * A watchdog sends SIGCONT after `watchdogMs`, so a test that times out before its own
   * `resume()` cannot leave the server frozen for the hooks that follow.
   */
  pause(watchdogMs = 20_000): void {
    if (!this.running) return;
    this.child!.kill('SIGSTOP');
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.resume(), watchdogMs);
    this.watchdog.unref();
  }

  /** SIGCONT after `pause()`. */
  resume(): void {
    clearTimeout(this.watchdog);
    if (this.running) this.child!.kill('SIGCONT');
  }

  /** SIGKILL, and resolves once the process is gone. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await within(exited, 10_000, 'redis-server exit');
  }
}

/**
 * The child services and temporary directories one test file starts: `spawn` waits until the
 * service is ready; `cleanup` (for afterAll) kills every one still running and removes the
 * directories.
 */
export function childServices() {
  const running: ServiceProcess[] = [];
  const temps: string[] = [];
  return {
    running,
    async spawn(
      env: Record<string, string>,
      opts?: Parameters<typeof spawnService>[1],
    ): Promise<ServiceProcess> {
      const svc = await spawnService(env, opts);
      running.push(svc);
      await svc.ready();
      return svc;
    },
    tempDir(prefix: string): string {
      const dir = mkdtempSync(join(tmpdir(), prefix));
      temps.push(dir);
      return dir;
    },
    async cleanup(): Promise<void> {
      for (const s of running.splice(0)) await s.kill();
      for (const d of temps.splice(0)) rmSync(d, { recursive: true, force: true });
    },
  };
}

/** Deletes every key under `prefix` in the Redis at `url`. */
export async function deleteRedisKeys(url: string, prefix: string): Promise<void> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await r.connect();
    const keys = await r.keys(`${prefix}*`);
    if (keys.length) await r.del(...keys);
  } finally {
    r.disconnect();
  }
}

/** The service as its own OS process (`node --import tsx src/main.ts`). */
export interface ServiceProcess {
  child: ChildProcess;
  port: number;
  /** http://127.0.0.1:<port> */
  base: string;
  /** JSON log lines so far (pino, LOG_LEVEL=info), in order. */
  logs: Record<string, any>[];
  stderr(): string;
  /** Resolves with the exit code (or the signal's name) once the process has exited. */
  exited: Promise<number | string>;
  /** Resolves once /readyz answers 200 (a bounded poll of start-up); rejects if it exits. */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGKILL if still running (cleanup); resolves once gone. */
  kill(): Promise<void>;
}

const ROOT = new URL('../..', import.meta.url).pathname;

/**
 * Starts the service as a child process on a free loopback port, against the test database.
 * With `fileSizeLimitKiB`, no file the process writes may grow past it (RLIMIT_FSIZE, SIGXFSZ
 * ignored): a write there fails (or comes up short) as it does on a full disk.
 */
export async function spawnService(
  env: Record<string, string>,
  opts: { fileSizeLimitKiB?: number; compiled?: boolean } = {},
): Promise<ServiceProcess> {
  const port = await freePort();
  // `compiled`: what `npm start` runs (dist/, built by `npm run build`), not the TypeScript loader.
  const node = opts.compiled
    ? ['--enable-source-maps', 'dist/main.js']
    : ['--import', 'tsx', 'src/main.ts'];
  const limit = opts.fileSizeLimitKiB;
  const [command, args] =
    limit === undefined
      ? [process.execPath, node]
      : [
          'bash',
          [
            '-c',
            `trap '' XFSZ; ulimit -f ${Math.floor(limit)}; exec "$0" "$@"`,
            process.execPath,
            ...node,
          ],
        ];
  const child = spawn(command, args, {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      DATABASE_URL: databaseUrl(),
      AUTH_MODE: 'dev',
      TENANT_AUTO_PROVISION: 'true',
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
      DLQ_DIR: mkdtempSync(join(tmpdir(), 'auditgraph-dlq-')),
      CHECKPOINT_KEY_FILE: inject('checkpointKeyFile'),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killWithThisProcess(child);
  const logs: Record<string, any>[] = [];
  let stderr = '';
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line) as Record<string, any>);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );
  const base = `http://127.0.0.1:${port}`;
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  return {
    child,
    port,
    base,
    logs,
    stderr: () => stderr,
    exited,
    async ready(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (gone) throw new Error(`the service exited during start-up:\n${stderr}`);
        try {
          const res = await fetch(`${base}/readyz`);
          await res.arrayBuffer();
          if (res.status === 200) return;
        } catch {
          // not listening yet
        }
        if (Date.now() > deadline) {
          throw new Error(`the service was not ready within ${timeoutMs} ms:\n${stderr}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async kill() {
      if (gone) return;
      child.kill('SIGKILL');
      await within(exited, 10_000, 'the service process exit');
    },
  };
}
