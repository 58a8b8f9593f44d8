import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Database } from '../db/client.js';
import type { DeadLetterStore } from '../ingest/dead-letter-queue.js';
import type { IngestService } from '../ingest/ingest-service.js';
import type { RetryWorker } from '../ingest/retry-worker.js';
import type { Logger } from '../logger.js';
import { withTimeout } from '../steps.js';

export interface ReadinessReport {
  ready: boolean;
  reasons: string[];
  deadLetters: Record<string, unknown> & { store: string; persistence: string };
  /** Which acknowledgement levels a createAuditEvents call can get now. */
  acks: { COMMITTED: boolean; BUFFERED: boolean };
  /** The write-ahead journal of BUFFERED calls (null: JOURNAL=off, BUFFERED is memory). */
  journal: { store: string; available: boolean; held: number; persistence: string } | null;
}

/** What /readyz answers: whether this instance can take writes now, and if not, why. */
export class Readiness {
  /** Dead letters are only as durable as Redis: said at start-up when it keeps nothing on disk. */
  private redisPersistence: string;

  constructor(
    private readonly deps: {
      config: Pick<Config, 'dlqMaxEvents'>;
      db: Database;
      ingest: Pick<IngestService, 'isStopping' | 'isDeadLetterQueueFull' | 'journal'>;
      retryWorker: Pick<RetryWorker, 'lastHealthy' | 'lastDepth'>;
      deadLetters: Pick<DeadLetterStore, 'kind'>;
      /** The dead-letter queue's Redis client (none without REDIS_URL). */
      redis: Redis | undefined;
      log: Logger;
    },
  ) {
    this.redisPersistence = deps.redis ? 'unknown' : 'local files';
  }

  /** Asks Redis whether it keeps an append-only file, and warns when it does not. */
  async reportRedisPersistence(): Promise<void> {
    const { redis, log } = this.deps;
    if (!redis) return;
    try {
      const reply = (await redis.config('GET', 'appendonly')) as string[];
      this.redisPersistence = reply[1] === 'yes' ? 'aof' : 'none';
    } catch {
      this.redisPersistence = 'unknown (CONFIG GET refused)';
    }
    if (this.redisPersistence !== 'aof') {
      log.warn(
        { redisPersistence: this.redisPersistence },
        'Redis append-only file is off: dead letters and BUFFERED events in the journal do not ' +
          'survive a Redis restart',
      );
    }
  }

  async check(): Promise<ReadinessReport> {
    const { config, db, ingest, retryWorker, deadLetters } = this.deps;
    const reasons: string[] = [];
    if (ingest.isStopping) reasons.push('shutting down');
    if (!retryWorker.lastHealthy)
      reasons.push(`dead-letter queue (${deadLetters.kind}) unavailable`);
    if (ingest.isDeadLetterQueueFull)
      reasons.push(`dead-letter queue full (DLQ_MAX_EVENTS=${config.dlqMaxEvents})`);
    try {
      await withTimeout(db.query('select 1'), 2_000, 'database did not answer within 2000 ms');
    } catch (err) {
      reasons.push(`database unavailable: ${(err as Error).message}`);
    }
    const database = !reasons.some((r) => r.startsWith('database'));
    const journal = ingest.journal;
    const open = !ingest.isStopping && !ingest.isDeadLetterQueueFull;
    return {
      ready: reasons.length === 0,
      reasons,
      acks: {
        COMMITTED: open && database,
        BUFFERED: open && (journal ? journal.available : true),
      },
      journal: journal
        ? {
            store: journal.kind,
            available: journal.available,
            held: journal.held,
            persistence: journal.kind === 'redis' ? this.redisPersistence : 'local file (fsync)',
          }
        : null,
      deadLetters: {
        store: deadLetters.kind,
        persistence: this.redisPersistence,
        ...retryWorker.lastDepth,
      },
    };
  }
}
