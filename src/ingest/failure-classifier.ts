import { sqlState } from '../db/client.js';

/**
 * What a failed batch write means for the batch:
 * - `missing-partition`: 23514 "no partition of relation found for row" — create it and retry;
 *   although class 23, it is not a bad row and must never condemn the batch;
 * - `data`: classes 22 (data exception) and 23 (integrity): some row is bad; retrying the same
 *   rows cannot help, the bad rows have to be isolated;
 * - `transient`: everything else (connection lost, lock timeout, serialization, server
 *   restarting, pool exhausted): retry the whole batch with backoff.
 */
export type WriteFailure = 'missing-partition' | 'data' | 'transient';

export function classifyWriteError(err: unknown): WriteFailure {
  const state = sqlState(err);
  if (state === '23514' && /no partition/i.test(String((err as Error).message)))
    return 'missing-partition';
  if (state?.startsWith('22') || state?.startsWith('23')) return 'data';
  return 'transient';
}

/** A message safe to show and store: the SQLSTATE and first line, never parameters or SQL. */
export function describeWriteError(err: unknown): string {
  const state = sqlState(err);
  const first = String((err as Error)?.message ?? err)
    .split('\n')[0]!
    .slice(0, 200);
  return state ? `${state}: ${first}` : first;
}

/**
 * The failure as an Error fit for a log line: the message of describeWriteError (no SQL, no
 * parameters, none of the driver's detail fields) and the original stack frames.
 */
export function writeErrorForLog(err: unknown): Error {
  const logged = new Error(describeWriteError(err));
  if (err instanceof Error) {
    logged.name = err.name;
    const frames = (err.stack ?? '').split('\n').filter((line) => /^\s+at /.test(line));
    logged.stack = [`${logged.name}: ${logged.message}`, ...frames].join('\n');
  }
  return logged;
}
