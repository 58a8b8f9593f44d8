import type { Logger } from './logger.js';

/**
 * One named part of starting and stopping the service. `start` runs in list order; `stop` in
 * reverse, so a part stops only after everything started after it (and so relying on it) has
 * stopped. `quiesce`, when given, runs for every step before any `stop`: it only stops the part
 * from beginning new work (a timer, say) while the steps after it drain.
 */
export interface Step {
  name: string;
  start?(): Promise<void> | void;
  quiesce?(): void;
  stop?(): Promise<unknown>;
  /**
   * The step keeps its own deadline and must not be cut short (cutting it would drop what it
   * still holds without a word): stop waits for it whatever the shared deadline says.
   */
  ownDeadline?: boolean;
}

/** Starts each step in order; a step that fails stops the start (the caller stops what ran). */
export async function startSteps(steps: readonly Step[], log: Logger): Promise<void> {
  for (const step of steps) {
    if (!step.start) continue;
    log.debug(`starting: ${step.name}`);
    await step.start();
  }
}

/**
 * Stops every step in reverse order under one deadline: each gets what is left of it (at least
 * 250 ms); one that overruns or fails is logged and skipped, so a dependency that answers
 * nothing cannot hold the process forever. A step with `ownDeadline` is waited for in full.
 */
export async function stopSteps(
  steps: readonly Step[],
  deadline: number,
  log: Logger,
): Promise<void> {
  const reversed = [...steps].reverse();
  for (const step of reversed) step.quiesce?.();
  for (const step of reversed) {
    if (!step.stop) continue;
    log.info(`stopping: ${step.name}`);
    const ms = Math.max(250, deadline - Date.now());
    try {
      if (step.ownDeadline) {
        await step.stop();
        continue;
      }
      await withTimeout(
        Promise.resolve().then(() => step.stop!()),
        ms,
        `${step.name} did not finish within ${ms} ms`,
      );
    } catch (err) {
      log.error({ err }, `stopping: ${step.name} failed; going on`);
    }
  }
}

/** `p`, or a rejection with `message` after `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]);
}
