export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** CPU seconds (user + system) this process has used so far. */
export function ownCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Nearest-rank percentile (p in 0..100) of unsorted samples; NaN when there are none. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

export function median(samples: readonly number[]): number {
  return percentile(samples, 50);
}

/** Milliseconds since `start` (a performance.now() reading). */
export function since(start: number): number {
  return performance.now() - start;
}

/** Wall-clock now with sub-millisecond resolution, in epoch milliseconds. */
export function epochNow(): number {
  return performance.timeOrigin + performance.now();
}

/** Keeps the first `max` distinct failure descriptions. */
export class FailureLog {
  count = 0;
  readonly samples: string[] = [];

  add(what: string): void {
    this.count++;
    if (this.samples.length < 10 && !this.samples.includes(what)) this.samples.push(what);
  }
}
