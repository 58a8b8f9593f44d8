/**
 * A load worker: a separate OS process from the service and from the orchestrator, forked by
 * run.ts with one job. It reports progress and its result over IPC, then exits.
 */
import { EventEmitter } from 'node:events';
import { runIngest } from './jobs/ingest.js';
import { runLatency } from './jobs/latency.js';
import { runReadLoad, runReads } from './jobs/reads.js';
import { runSqlLoad } from './jobs/sql-load.js';
import { runSubscribers } from './jobs/subscribers.js';
import { runVisible } from './jobs/visible.js';
import { ownCpuSeconds } from './util.js';
import type { WorkerJob, WorkerReply } from './worker-protocol.js';

/** Messages from the orchestrator during a job, and a way to report progress. */
export interface JobChannel {
  messages: EventEmitter;
  progress(message: unknown): void;
}

/** Sends a message; resolves once it is handed to the IPC channel (large results take a while). */
function reply(m: WorkerReply): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(m, undefined, {}, () => resolve());
  });
}

async function finish(m: WorkerReply, code: number): Promise<void> {
  await reply(m);
  process.disconnect?.();
  // Sockets a job left open must not keep the worker alive.
  setTimeout(() => process.exit(code), 1_000).unref();
}

async function run(job: WorkerJob, channel: JobChannel): Promise<unknown> {
  switch (job.kind) {
    case 'ingest':
      return runIngest(job);
    case 'commit-latency':
    case 'flush-latency':
      return runLatency(job);
    case 'reads':
      return runReads(job);
    case 'readLoad':
      return runReadLoad(job);
    case 'subscribers':
      return runSubscribers(job, channel);
    case 'visible':
      return runVisible(job);
    case 'copy':
    case 'insert':
      return runSqlLoad(job);
  }
}

const messages = new EventEmitter();
process.on('message', (m: { type: string; job?: WorkerJob; message?: unknown }) => {
  if (m.type === 'message') {
    messages.emit('message', m.message);
    return;
  }
  if (m.type !== 'job' || !m.job) return;
  const channel = {
    messages,
    progress: (message: unknown) => void reply({ type: 'progress', message }),
  };
  run(m.job, channel).then(
    (result) => {
      // The worker's whole life is load-side CPU of the phase that started it (start-up included).
      const r = result as { cpuSeconds?: number };
      if (typeof r.cpuSeconds === 'number') r.cpuSeconds = ownCpuSeconds();
      return finish({ type: 'result', result }, 0);
    },
    (err: unknown) => finish({ type: 'error', error: (err as Error).stack ?? String(err) }, 1),
  );
});
