import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { databaseUrl } from './harness.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Instance {
  /** http://127.0.0.1:<port>/graphql */
  url: string;
  base: string;
  instanceId: string;
  child: ChildProcess;
  /** Parsed JSON log lines so far. */
  logs: Record<string, unknown>[];
  /** Sends a signal; resolves with the exit code once the process has exited (bounded). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

/**
 * Starts the service as its own OS process (`node --import tsx src/main.ts`) against the run's
 * test database, and resolves once it logs that it listens. Bounded by `startTimeoutMs`.
 */
export async function spawnInstance(
  env: Record<string, string>,
  startTimeoutMs = 60_000,
): Promise<Instance> {
  const instanceId = env.INSTANCE_ID ?? `proc-${Math.random().toString(36).slice(2, 8)}`;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: databaseUrl(),
      AUTH_MODE: 'dev',
      TENANT_AUTO_PROVISION: 'true',
      PORT: '0',
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
      DLQ_DIR: mkdtempSync(join(tmpdir(), 'auditgraph-proc-')),
      CHECKPOINT_KEY_FILE: inject('checkpointKeyFile'),
      INSTANCE_ID: instanceId,
      DATABASE_APPLICATION_NAME: `ag-${instanceId}`,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`instance did not start in ${startTimeoutMs} ms: ${stderr}`)),
      startTimeoutMs,
    );
    void exited.then((code) =>
      reject(new Error(`instance exited with ${code} before listening: ${stderr}`)),
    );
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        if (entry.msg === 'listening') {
          clearTimeout(timer);
          resolve(entry.port as number);
        }
      } catch {
        // not a log line
      }
    });
  });
  const base = `http://127.0.0.1:${port}`;
  return {
    url: `${base}/graphql`,
    base,
    instanceId,
    child,
    logs,
    async stop(signal = 'SIGTERM', timeoutMs = 30_000) {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
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
