import cluster, { type Worker } from 'node:cluster';
import type { Config } from './config.js';
import type { Logger } from './logger.js';

/** A worker that exits this often within RESTART_WINDOW_MS is not started again: all stop. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/** Wait before a worker that exited on its own is started again. */
const RESTART_DELAY_MS = 1_000;

/**
 * The primary of WORKERS=N: N service processes sharing the listening ports (node:cluster hands
 * each connection to one of them), each an instance of its own as separate machines would be —
 * sharing PostgreSQL and Redis, with its own buffers and journal, so that flushAudit, auditStats,
 * the live tail and journal take-over work across them exactly as across machines. It serves
 * nothing itself.
 *
 * Worker `i` is named `<INSTANCE_ID>-w<i>` when INSTANCE_ID is set (host and pid otherwise): a
 * worker started again after a crash keeps its name and replays its own journal at once, rather
 * than waiting for another to take it over after the lease. With METRICS_PORT, worker `i` serves
 * /metrics on METRICS_PORT + i (its own counters, one scrape target per worker; on a shared port
 * a scrape would reach any one of them). SIGTERM or SIGINT is passed to every
 * worker, each stops gracefully (its buffers written), and the primary exits once all have, with
 * the worst exit code. A primary killed outright takes its workers down at once (node:cluster
 * ends a worker whose primary is gone): what they had answered BUFFERED is in their journals.
 */
export function runWorkers(
  config: Pick<Config, 'workers' | 'instanceId' | 'metricsPort'>,
  log: Logger,
  exit: (code: number) => void = (code) => process.exit(code),
): void {
  const { workers, instanceId, metricsPort } = config;
  let stopping = false;
  let worst = 0;
  const restarts = new Map<number, number[]>();
  const running = new Map<Worker, number>();

  const start = (index: number) => {
    const env: Record<string, string> = { AUDITGRAPH_WORKER_INDEX: String(index) };
    if (instanceId !== undefined) env.INSTANCE_ID = `${instanceId}-w${index}`;
    if (metricsPort) env.METRICS_PORT = String(metricsPort + index);
    const worker = cluster.fork(env);
    running.set(worker, index);
    worker.once('online', () =>
      log.info(
        { worker: index, workerPid: worker.process.pid, instance: env.INSTANCE_ID },
        'worker started',
      ),
    );
    worker.on('exit', (code, signal) => {
      running.delete(worker);
      if (stopping) {
        // The exit code says how the stop went: the worst of the workers'.
        worst = Math.max(worst, code ?? (signal ? 1 : 0));
        if (running.size === 0) exit(worst);
        return;
      }
      const now = Date.now();
      const recent = (restarts.get(index) ?? []).filter((t) => now - t < RESTART_WINDOW_MS);
      recent.push(now);
      restarts.set(index, recent);
      if (recent.length > MAX_RESTARTS) {
        log.error(
          { worker: index, code, signal, restarts: recent.length },
          'worker keeps exiting; stopping every worker',
        );
        stopAll('a worker keeps exiting', 1);
        return;
      }
      log.error(
        {
          worker: index,
          workerPid: worker.process.pid,
          code,
          signal,
          restartInMs: RESTART_DELAY_MS,
        },
        'worker exited; starting it again',
      );
      setTimeout(() => {
        if (!stopping) start(index);
      }, RESTART_DELAY_MS);
    });
  };

  const stopAll = (why: string, code = 0) => {
    if (stopping) return;
    stopping = true;
    worst = Math.max(worst, code);
    log.info({ why, workers: running.size }, 'stopping every worker');
    if (running.size === 0) exit(worst);
    for (const w of running.keys()) w.process.kill('SIGTERM');
  };

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (stopping) {
        // The operator insisted: the workers end now (what they answered BUFFERED is journaled).
        log.warn({ signal }, 'second signal while stopping; ending every worker now');
        for (const w of running.keys()) w.process.kill('SIGKILL');
        exit(1);
        return;
      }
      stopAll(signal);
    });
  }
  log.info({ workers, instanceId }, 'starting workers');
  for (let i = 0; i < workers; i++) start(i);
}
