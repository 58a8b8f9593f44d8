import { type ChildProcess, fork, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { WorkerJob, WorkerReply } from './worker-protocol.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Server {
  url: string;
  pid: number;
  child: ChildProcess;
  /** Log lines (parsed JSON) at level warn or above, for the report. */
  warnings: Record<string, unknown>[];
  /** SIGTERM, then the exit code (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | null>;
}

/**
 * Starts a Node program of this repository as its own OS process (`node <entry>`, through tsx
 * when it is TypeScript) and resolves once it logs a JSON line with `msg: "listening"` and a
 * `port`.
 */
export async function spawnServer(
  entry: string,
  env: Record<string, string>,
  opts: { nodeArgs?: string[]; startTimeoutMs?: number } = {},
): Promise<Server> {
  const loader = entry.endsWith('.ts') ? ['--import', 'tsx'] : [];
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), ...loader, entry], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const warnings: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-20_000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${entry} did not start: ${stderr}`)),
      opts.startTimeoutMs ?? 60_000,
    );
    void exited.then((code) => reject(new Error(`${entry} exited with ${code}: ${stderr}`)));
    // Always drained: a child whose stdout pipe fills up blocks.
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (entry.msg === 'listening' && typeof entry.port === 'number') {
        clearTimeout(timer);
        resolve(entry.port);
      }
      if (typeof entry.level === 'number' && entry.level >= 40 && warnings.length < 200) {
        warnings.push(entry);
      }
    });
  });
  return {
    url: `http://127.0.0.1:${port}/graphql`,
    pid: child.pid!,
    child,
    warnings,
    async stop(timeoutMs = 60_000) {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const code = await Promise.race([
        exited,
        new Promise<null>((resolve) => {
          timer = setTimeout(() => {
            child.kill('SIGKILL');
            resolve(null);
          }, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
      return code;
    },
  };
}

/** A load worker: a separate Node process that runs one job and reports back over IPC. */
export interface Worker<R> {
  pid: number;
  /** Resolves with the job's result (or rejects with its error). */
  result: Promise<R>;
  /** Messages the job sends before its result (e.g. "subscribers ready"). */
  onProgress(fn: (message: unknown) => void): void;
  send(message: unknown): void;
}

/** Forks `worker.ts` and hands it `job`. */
export function startWorker<R>(job: WorkerJob): Worker<R> {
  const child = fork(fileURLToPath(new URL('./worker.ts', import.meta.url)), [], {
    cwd: ROOT,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const listeners: ((m: unknown) => void)[] = [];
  const result = new Promise<R>((resolve, reject) => {
    child.on('message', (m: WorkerReply) => {
      if (m.type === 'result') resolve(m.result as R);
      else if (m.type === 'error') reject(new Error(`worker ${job.kind}: ${m.error}`));
      else for (const l of listeners) l(m.message);
    });
    child.once('exit', (code) =>
      reject(new Error(`worker ${job.kind} exited with ${code} before its result`)),
    );
  });
  child.send({ type: 'job', job });
  return {
    pid: child.pid!,
    result: result.finally(() => {
      if (child.connected) child.disconnect();
    }),
    onProgress: (fn) => listeners.push(fn),
    send: (message) => child.send({ type: 'message', message }),
  };
}

/** Runs one job in its own worker process and returns its result. */
export function runWorker<R>(job: WorkerJob): Promise<R> {
  return startWorker<R>(job).result;
}
