import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { TenantId } from '../domain/tenant.js';
import {
  type DeadLetter,
  type DeadLetterDepth,
  type DeadLetterListOptions,
  type DeadLetterStore,
  parseDeadLetter,
  serialiseDeadLetter,
} from './dead-letter-queue.js';

/** Writes a file so that it is either wholly there or not at all, and on disk when this resolves. */
export async function writeFileDurably(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/**
 * Dead letters as files (`<dir>/<tenant>/<id>.json`), for the embedded mode: one instance,
 * nothing to share, durable on the same disk as the embedded database.
 */
export class FileDeadLetterStore implements DeadLetterStore {
  readonly kind = 'file' as const;
  private readonly busy = new Set<string>();

  constructor(private readonly dir: string) {}

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  async stop(): Promise<void> {
    this.busy.clear();
  }

  async healthy(): Promise<boolean> {
    return true;
  }

  private path(tenant: string, id: string): string {
    return join(this.dir, tenant, `${id}.json`);
  }

  private async write(dl: DeadLetter): Promise<void> {
    await mkdir(join(this.dir, dl.tenant), { recursive: true });
    await writeFileDurably(this.path(dl.tenant, dl.id), serialiseDeadLetter(dl));
  }

  async add(dl: DeadLetter): Promise<void> {
    await this.write(dl);
  }

  async get(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    if (!/^[0-9a-f-]{36}$/.test(id)) return null;
    try {
      return parseDeadLetter(await readFile(this.path(tenant, id), 'utf8'));
    } catch {
      return null;
    }
  }

  private async all(): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    let tenants: string[] = [];
    try {
      tenants = await readdir(this.dir);
    } catch {
      return out;
    }
    for (const tenant of tenants) {
      let files: string[] = [];
      try {
        files = await readdir(join(this.dir, tenant));
      } catch {
        continue;
      }
      for (const f of files) {
        if (!f.endsWith('.json')) continue;
        try {
          out.push(parseDeadLetter(await readFile(join(this.dir, tenant, f), 'utf8')));
        } catch {
          // removed between readdir and read
        }
      }
    }
    return out;
  }

  async list(tenant: TenantId, opts: DeadLetterListOptions = {}): Promise<DeadLetter[]> {
    return (await this.all())
      .filter((d) => d.tenant === tenant)
      .filter((d) => !opts.state || d.state === opts.state)
      .filter((d) => !opts.errorCode || d.errorCode === opts.errorCode)
      .sort(
        (a, b) => a.firstFailedAt.getTime() - b.firstFailedAt.getTime() || (a.id < b.id ? -1 : 1),
      );
  }

  async claimDue(limit: number): Promise<DeadLetter[]> {
    const now = Date.now();
    const due = (await this.all())
      .filter((d) => d.state === 'ACTIVE' && !this.busy.has(d.id))
      .filter((d) => (d.nextAttemptAt?.getTime() ?? 0) <= now)
      .slice(0, limit);
    for (const d of due) this.busy.add(d.id);
    return due;
  }

  async complete(dl: DeadLetter): Promise<void> {
    await rm(this.path(dl.tenant, dl.id), { force: true });
    this.busy.delete(dl.id);
  }

  async reschedule(dl: DeadLetter, previousId = dl.id): Promise<void> {
    await this.write(dl);
    if (previousId !== dl.id) await rm(this.path(dl.tenant, previousId), { force: true });
    this.busy.delete(previousId);
  }

  async replay(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    const dl = await this.get(tenant, id);
    if (dl?.state !== 'PARKED') return null;
    const active: DeadLetter = { ...dl, state: 'ACTIVE', replays: 0, nextAttemptAt: new Date() };
    await this.write(active);
    return active;
  }

  async discard(tenant: TenantId, id: string): Promise<DeadLetter | null> {
    const dl = await this.get(tenant, id);
    if (dl?.state !== 'PARKED') return null;
    await rm(this.path(tenant, id), { force: true });
    return dl;
  }

  async depth(): Promise<DeadLetterDepth> {
    const all = await this.all();
    const parked = all.filter((d) => d.state === 'PARKED');
    const oldest = Math.min(...all.map((d) => d.firstFailedAt.getTime()));
    return {
      entries: all.length,
      events: all.reduce((n, d) => n + d.records.length, 0),
      parkedEntries: parked.length,
      parkedEvents: parked.reduce((n, d) => n + d.records.length, 0),
      oldestAgeMs: all.length ? Date.now() - oldest : 0,
    };
  }
}
