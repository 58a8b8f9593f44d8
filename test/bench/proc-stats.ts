import { readdirSync, readFileSync, writeFileSync } from 'node:fs';

/** Clock ticks per second of /proc CPU times (USER_HZ; 100 on Linux everywhere that matters). */
const TICKS = 100;

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; 0 if gone. */
export function processCpuSeconds(pid: number, withChildren = false): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    const ticks =
      Number(f[11]) + Number(f[12]) + (withChildren ? Number(f[13]) + Number(f[14]) : 0);
    return ticks / TICKS;
  } catch {
    return 0;
  }
}

/** Resident set size of a process in bytes (VmRSS), or 0 if it is gone. */
export function rssBytes(pid: number): number {
  return statusField(pid, 'VmRSS');
}

/** Peak resident set size (VmHWM) in bytes since start or the last `resetPeakRss`. */
export function peakRssBytes(pid: number): number {
  return statusField(pid, 'VmHWM');
}

/** Resets VmHWM (Linux ≥ 4.0: writing 5 to clear_refs), so a later peak belongs to one phase. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

function statusField(pid: number, name: string): number {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(
      new RegExp(`^${name}:\\s+(\\d+) kB`, 'm'),
    );
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Busy and total CPU seconds of the whole machine (all cores), from /proc/stat. */
export function machineCpuSeconds(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: (total - idle) / TICKS, total: total / TICKS };
}

export interface ProcInfo {
  pid: number;
  comm: string;
  cmdline: string;
}

function processes(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const comm = readFileSync(`/proc/${name}/comm`, 'utf8').trim();
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      out.push({ pid: Number(name), comm, cmdline });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

const PG_BACKGROUND = /postgres: .*(checkpointer|background writer|walwriter|wal writer)/;

/**
 * The benchmark's PostgreSQL processes: the backends connected to its database (by name in their
 * process title) plus the shared background writers. Backends of other databases (someone
 * else's tests on the same server) are left out.
 */
export function postgresProcess(database: string): (p: ProcInfo) => boolean {
  const mine = new RegExp(` ${database}( |$)`);
  return (p) => p.comm === 'postgres' && (mine.test(p.cmdline) || PG_BACKGROUND.test(p.cmdline));
}

/** The redis-server listening on `port` (shared with anyone else using it). */
export function redisProcess(port: number): (p: ProcInfo) => boolean {
  return (p) => p.comm === 'redis-server' && p.cmdline.includes(`:${port}`);
}

/**
 * Follows the processes `match` selects: looks for new ones every second, reads the CPU of the
 * known ones four times a second, and remembers each one's last reading — so a process that
 * lived and died between two phase snapshots still counts, and one that exits is never
 * subtracted (a backend shorter-lived than a second may be missed).
 */
export class CpuTracker {
  private readonly last = new Map<number, number>();
  private readonly timers: NodeJS.Timeout[];

  constructor(private readonly match: (p: ProcInfo) => boolean) {
    this.discover();
    this.timers = [
      setInterval(() => this.discover(), 1_000),
      setInterval(() => this.sample(), 250),
    ];
    for (const t of this.timers) t.unref();
  }

  private discover(): void {
    for (const p of processes()) {
      if (!this.last.has(p.pid) && this.match(p)) this.last.set(p.pid, processCpuSeconds(p.pid));
    }
  }

  private sample(): void {
    for (const pid of this.last.keys()) {
      const s = processCpuSeconds(pid);
      if (s > 0) this.last.set(pid, s);
    }
  }

  /** CPU seconds so far, summed over every process seen. */
  total(): number {
    this.discover();
    this.sample();
    let s = 0;
    for (const v of this.last.values()) s += v;
    return s;
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
  }
}

/** A reading of every CPU account the report splits. */
export interface CpuSnapshot {
  at: number;
  service: number;
  /** The no-op Yoga baseline server, when it runs. */
  noop: number;
  orchestrator: number;
  postgres: number;
  redis: number;
  machineBusy: number;
}

export function cpuSnapshot(
  pids: { service?: number; noop?: number },
  trackers: { postgres: CpuTracker; redis: CpuTracker },
) {
  const self = process.cpuUsage();
  const machine = machineCpuSeconds();
  return {
    at: performance.now(),
    service: pids.service ? processCpuSeconds(pids.service) : 0,
    noop: pids.noop ? processCpuSeconds(pids.noop) : 0,
    orchestrator: (self.user + self.system) / 1e6,
    postgres: trackers.postgres.total(),
    redis: trackers.redis.total(),
    machineBusy: machine.busy,
  } satisfies CpuSnapshot;
}

/**
 * CPU seconds each side used over a phase. `load` is the load workers' own account (each worker's
 * whole life: it starts and ends inside the phase) plus the orchestrator's.
 */
export interface CpuSplit {
  wallSeconds: number;
  service: number;
  noop: number;
  load: number;
  postgres: number;
  redis: number;
  /** Machine busy time nobody above accounts for: other processes on the same 2 cores. */
  other: number;
}

export function cpuSplit(
  a: CpuSnapshot,
  b: CpuSnapshot,
  workerSeconds: number,
  /** CPU of a baseline server that started and stopped inside the phase (read before it exited). */
  noopSeconds?: number,
): CpuSplit {
  const service = b.service - a.service;
  const noop = noopSeconds ?? b.noop - a.noop;
  const load = workerSeconds + (b.orchestrator - a.orchestrator);
  const postgres = b.postgres - a.postgres;
  const redis = b.redis - a.redis;
  const busy = b.machineBusy - a.machineBusy;
  return {
    wallSeconds: (b.at - a.at) / 1000,
    service,
    noop,
    load,
    postgres,
    redis,
    other: Math.max(0, busy - service - noop - load - postgres - redis),
  };
}
