import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { FlushTimeoutError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { FlushResult, IngestService } from '../ingest/ingest-service.js';
import { addInto, BOOK_TERMS } from '../ingest/journal/books.js';
import { type TenantStats, withBooks } from '../ingest/stats.js';
import { asError, type Logger } from '../logger.js';
import { createRedis, execChecked, type RedisKeys } from '../redis/client.js';

/** Stats of a tenant summed over the live instances, with who contributed. */
export type ClusterStats = TenantStats & {
  instances: string[];
  /**
   * The identity's terms are the books' (false: the books could not be read, and they are the
   * live instances' own counters since each started).
   */
  fromBooks: boolean;
};

/**
 * The instances serving together. `flush` is the barrier of flushAudit across every live
 * instance’s buffers; `stats` is the books plus what each live instance has not booked yet.
 */
export interface Cluster {
  start(): Promise<void>;
  stop(): Promise<void>;
  flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult>;
  stats(tenant: TenantId): Promise<ClusterStats>;
  liveInstances(): Promise<string[]>;
}

/** One instance alone (no Redis): its own buffers are all there is. */
export class LocalCluster implements Cluster {
  constructor(
    private readonly ingest: IngestService,
    private readonly instanceId: string,
  ) {}
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult> {
    return this.ingest.flush(tenant, timeoutMs);
  }
  async stats(tenant: TenantId): Promise<ClusterStats> {
    const { books, local } = await this.ingest.readBooks(tenant);
    return { ...withBooks(local, books), instances: [this.instanceId], fromBooks: true };
  }
  async liveInstances(): Promise<string[]> {
    return [this.instanceId];
  }
}

type Request =
  | { kind: 'flush'; requestId: string; from: string; tenant: TenantId; timeoutMs: number }
  | { kind: 'stats'; requestId: string; from: string; tenant: TenantId };

type Reply =
  | { requestId: string; instance: string; ok: true; flush?: FlushResult; stats?: TenantStats }
  | { requestId: string; instance: string; ok: false; pending: number; error: string };

const NUMERIC_STATS = [
  ...BOOK_TERMS,
  'replayed',
  'recovered',
  'conflicts',
  'expired',
  'batches',
  'failedWrites',
] as const;

/**
 * Instances that share Redis. Each announces itself with a heartbeat (a sorted set scored by the
 * last beat); a request goes to every instance seen within three beats, each on its own pub/sub
 * channel, and the answers come back on the asker's channel. An instance that does not answer in
 * time is named in FlushTimeoutError — never waited on forever.
 */
export class RedisCluster implements Cluster {
  private readonly pub: Redis;
  private readonly sub: Redis;
  private timer: NodeJS.Timeout | undefined;
  private readonly waiting = new Map<string, (r: Reply) => void>();
  /** The live instances at the last successful look (used while Redis cannot be asked). */
  private lastSeen: string[] = [];

  constructor(
    redisUrl: string,
    private readonly keys: RedisKeys,
    private readonly instanceId: string,
    private readonly ingest: IngestService,
    private readonly log: Logger,
    private readonly heartbeatMs: number,
  ) {
    this.pub = createRedis(redisUrl, `auditgraph-cluster-${instanceId}`, log, { failFast: true });
    this.sub = createRedis(redisUrl, `auditgraph-cluster-sub-${instanceId}`, log);
  }

  private get membersKey() {
    return this.keys.service('cluster', 'instances');
  }
  private channel(instance: string) {
    return this.keys.service('cluster', 'inbox', instance);
  }

  async start(): Promise<void> {
    await Promise.all([this.pub.connect(), this.sub.connect()]);
    this.sub.on('message', (_channel: string, text: string) => this.onMessage(text));
    await this.sub.subscribe(this.channel(this.instanceId));
    await this.beat();
    this.timer = setInterval(() => void this.beat(), this.heartbeatMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.pub.zrem(this.membersKey, this.instanceId).catch(() => undefined);
    await this.sub.quit().catch(() => this.sub.disconnect());
    await this.pub.quit().catch(() => this.pub.disconnect());
  }

  private async beat(): Promise<void> {
    try {
      const now = Date.now();
      await execChecked(
        this.pub
          .multi()
          .zadd(this.membersKey, now, this.instanceId)
          // Forget instances silent for a minute: they are gone, not slow.
          .zremrangebyscore(this.membersKey, 0, now - 60_000),
      );
    } catch (err) {
      this.log.warn({ err: asError(err) }, 'cluster heartbeat failed');
    }
  }

  async liveInstances(): Promise<string[]> {
    const since = Date.now() - 3 * this.heartbeatMs;
    const live = await this.pub.zrangebyscore(this.membersKey, since, '+inf');
    this.lastSeen = [...new Set([this.instanceId, ...live])].sort();
    return this.lastSeen;
  }

  private onMessage(text: string): void {
    let msg: Request | Reply;
    try {
      msg = JSON.parse(text) as Request | Reply;
    } catch {
      return;
    }
    if ('kind' in msg) void this.answer(msg);
    else this.waiting.get(msg.requestId)?.(msg);
  }

  /** Serves another instance's request against this instance's own buffers. */
  private async answer(req: Request): Promise<void> {
    let reply: Reply;
    try {
      reply =
        req.kind === 'flush'
          ? {
              requestId: req.requestId,
              instance: this.instanceId,
              ok: true,
              flush: await this.ingest.flush(req.tenant, req.timeoutMs),
            }
          : {
              requestId: req.requestId,
              instance: this.instanceId,
              ok: true,
              stats: this.ingest.stats(req.tenant),
            };
    } catch (err) {
      reply = {
        requestId: req.requestId,
        instance: this.instanceId,
        ok: false,
        pending: err instanceof FlushTimeoutError ? err.pending : -1,
        error: (err as Error).message,
      };
    }
    await this.pub.publish(this.channel(req.from), JSON.stringify(reply)).catch((err: Error) => {
      this.log.warn({ err, to: req.from }, 'could not answer a cluster request');
    });
  }

  /** Sends a request to every other live instance; resolves with the replies that came in time. */
  private async ask(
    make: (requestId: string) => Request,
    timeoutMs: number,
  ): Promise<{ replies: Reply[]; silent: string[] }> {
    let live: string[];
    try {
      live = await this.liveInstances();
    } catch (err) {
      // Redis is unreachable: the other instances cannot be asked. This instance still answers
      // for itself; the instances last seen alive are named as not answering.
      this.log.warn({ err: asError(err) }, 'cannot list live instances');
      return { replies: [], silent: this.lastSeen.filter((i) => i !== this.instanceId) };
    }
    const others = live.filter((i) => i !== this.instanceId);
    if (others.length === 0) return { replies: [], silent: [] };
    const requestId = randomUUID();
    const replies = new Map<string, Reply>();
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.waiting.set(requestId, (r) => {
        replies.set(r.instance, r);
        if (others.every((o) => replies.has(o))) resolve();
      });
      timer = setTimeout(resolve, timeoutMs);
      const text = JSON.stringify(make(requestId));
      for (const o of others) {
        this.pub.publish(this.channel(o), text).catch(() => undefined);
      }
    });
    clearTimeout(timer);
    this.waiting.delete(requestId);
    return { replies: [...replies.values()], silent: others.filter((o) => !replies.has(o)) };
  }

  async flush(tenant: TenantId, timeoutMs: number): Promise<FlushResult> {
    const started = performance.now();
    // Every instance takes its watermark when the request reaches it, this one at once.
    const [local, remote] = await Promise.all([
      this.ingest.flush(tenant, timeoutMs).then(
        (r) => ({ ok: true as const, r }),
        (err: unknown) => ({ ok: false as const, err }),
      ),
      this.ask(
        (requestId) => ({ kind: 'flush', requestId, from: this.instanceId, tenant, timeoutMs }),
        timeoutMs + 250,
      ),
    ]);
    let pending = 0;
    const problems: string[] = [];
    const sum = { stored: 0, duplicates: 0, deadLettered: 0, waitedFor: 0 };
    const add = (f: FlushResult) => {
      sum.stored += f.stored;
      sum.duplicates += f.duplicates;
      sum.deadLettered += f.deadLettered;
      sum.waitedFor += f.waitedFor;
    };
    if (local.ok) add(local.r);
    else if (local.err instanceof FlushTimeoutError) {
      pending += local.err.pending;
      problems.push(`${this.instanceId}: ${local.err.message}`);
    } else throw local.err;
    for (const r of remote.replies) {
      if (r.ok && r.flush) add(r.flush);
      else if (!r.ok) {
        pending += Math.max(0, r.pending);
        problems.push(`${r.instance}: ${r.error}`);
      }
    }
    for (const s of remote.silent) problems.push(`${s}: did not answer`);
    if (problems.length > 0) {
      throw new FlushTimeoutError(timeoutMs, pending, problems.join('; '), remote.silent);
    }
    return {
      ...sum,
      durationMs: performance.now() - started,
      instances: [this.instanceId, ...remote.replies.map((r) => r.instance)].sort(),
    };
  }

  async stats(tenant: TenantId): Promise<ClusterStats> {
    const { replies } = await this.ask(
      (requestId) => ({ kind: 'stats', requestId, from: this.instanceId, tenant }),
      2_000,
    );
    // The books after the other instances' answers, this one's counters at the read: what this
    // instance books meanwhile is counted once (what another books in the moment between its
    // answer and this read may be counted twice in this one answer).
    let read: Awaited<ReturnType<IngestService['readBooks']>> | null = null;
    try {
      read = await this.ingest.readBooks(tenant);
    } catch (err) {
      this.log.warn(
        { err: asError(err), tenant },
        'the books cannot be read: auditStats answers the live instances’ own counters',
      );
    }
    const total: TenantStats = read?.local ?? this.ingest.stats(tenant);
    const instances = [this.instanceId];
    for (const r of replies) {
      if (!r.ok || !r.stats) continue;
      instances.push(r.instance);
      for (const k of NUMERIC_STATS) total[k] += r.stats[k];
      addInto(total.unbooked, r.stats.unbooked);
      if (
        r.stats.lastErrorAt &&
        (!total.lastErrorAt || new Date(r.stats.lastErrorAt) > total.lastErrorAt)
      ) {
        total.lastError = r.stats.lastError;
        total.lastErrorAt = new Date(r.stats.lastErrorAt);
      }
    }
    const counted = read ? withBooks(total, read.books) : total;
    return { ...counted, instances: instances.sort(), fromBooks: read !== null };
  }
}
