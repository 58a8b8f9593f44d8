import { BodyTemplate, CREATE_MUTATION, makeEvent, rng } from '../events.js';
import { GqlConnection, type GqlResponse } from '../gql-client.js';
import { FailureLog, ownCpuSeconds, sleep } from '../util.js';
import type { IngestJob, IngestResult } from '../worker-protocol.js';

/** Distinct bodies per client; ids are fresh on every call, so repeating a body is safe. */
const TEMPLATES_PER_CLIENT = 8;

/**
 * `createAuditEvents` load: closed loop (each client back to back), paced (a total call rate
 * shared by the clients), or open loop (calls due at a rate whatever the answers, capped in flight).
 */
export async function runIngest(job: IngestJob): Promise<IngestResult> {
  const cpuStart = ownCpuSeconds();
  const random = rng(job.seed);
  const now = Date.now();
  const templates = Array.from({ length: job.connections }, (_, c) =>
    Array.from({ length: TEMPLATES_PER_CLIENT }, (_, k) => {
      const correlation = `ing-${job.seed}-${c}-${k}`;
      const events = Array.from({ length: job.eventsPerCall }, () =>
        makeEvent(random, new Date(now - Math.floor(random() * 5_000)), correlation),
      );
      return new BodyTemplate(CREATE_MUTATION, job.ack, events);
    }),
  );
  const failures = new FailureLog();
  const byTenant: Record<string, number> = Object.fromEntries(job.tenants.map((t) => [t, 0]));
  const latencies: number[] = [];
  let calls = 0;
  let accepted = 0;
  let backpressure = 0;
  let skipped = 0;
  const slow: { sentAtMs: number; tookMs: number }[] = [];

  const start = performance.now();
  const windowStart = start + job.warmupMs;
  const end = windowStart + job.durationMs;
  let lastAnswer = windowStart;

  /** Sends one call and accounts for its answer; resolves with the wait a BackpressureError asked for. */
  async function call(conn: GqlConnection, tenant: string, body: string): Promise<number> {
    const sent = performance.now();
    const r = await conn.post(tenant, body);
    const answered = performance.now();
    const counted = sent >= windowStart && sent < end;
    if (counted) {
      calls++;
      latencies.push(answered - sent);
      lastAnswer = Math.max(lastAnswer, answered);
      if (answered - sent > 5_000 && slow.length < 20) {
        slow.push({ sentAtMs: Math.round(sent - start), tookMs: Math.round(answered - sent) });
      }
    }
    const outcome = classify(r, job.eventsPerCall);
    if (outcome.accepted > 0) {
      byTenant[tenant] = (byTenant[tenant] ?? 0) + outcome.accepted;
      if (counted) accepted += outcome.accepted;
    }
    if (outcome.kind === 'backpressure') {
      if (counted) backpressure++;
      return outcome.retryAfterMs;
    }
    if (outcome.kind === 'failure') failures.add(outcome.what);
    return 0;
  }

  if (job.openLoop) {
    const pool = new GqlConnection(job.url, { connections: job.openLoop.maxInFlight });
    const rate = job.callsPerSecond ?? 1;
    const bodies = templates.flat();
    let due = 0;
    let inFlight = 0;
    const pending = new Set<Promise<number>>();
    while (performance.now() < end) {
      const owed = Math.floor(((performance.now() - start) / 1000) * rate);
      for (; due < owed; due++) {
        if (inFlight >= job.openLoop.maxInFlight) {
          if (performance.now() >= windowStart) skipped++;
          continue;
        }
        inFlight++;
        const tenant = job.tenants[due % job.tenants.length]!;
        const p = call(pool, tenant, bodies[due % bodies.length]!.render()).finally(() => {
          inFlight--;
          pending.delete(p);
        });
        pending.add(p);
      }
      await sleep(2);
    }
    await Promise.all(pending);
    await pool.close();
  } else {
    let next = 0;
    const interval = job.callsPerSecond ? 1000 / job.callsPerSecond : 0;
    await Promise.all(
      templates.map(async (mine, c) => {
        const conn = new GqlConnection(job.url);
        const tenant = job.tenants[c % job.tenants.length]!;
        let k = 0;
        for (;;) {
          if (interval > 0) {
            const dueAt = start + next++ * interval;
            if (dueAt >= end) break;
            const wait = dueAt - performance.now();
            if (wait > 0) await sleep(wait);
          } else if (performance.now() >= end) {
            break;
          }
          const retryAfter = await call(conn, tenant, mine[k++ % mine.length]!.render());
          if (retryAfter > 0 && job.honourBackpressure) await sleep(retryAfter);
        }
        await conn.close();
      }),
    );
  }

  return {
    calls,
    acceptedEvents: accepted,
    backpressure,
    otherFailures: failures.count,
    failureSamples: failures.samples,
    skipped,
    latenciesMs: latencies,
    windowMs: Math.max(lastAnswer, end) - windowStart,
    byTenant,
    slowCalls: slow,
    cpuSeconds: ownCpuSeconds() - cpuStart,
  };
}

type Outcome =
  | { kind: 'accepted'; accepted: number }
  | { kind: 'backpressure'; accepted: 0; retryAfterMs: number }
  | { kind: 'failure'; accepted: number; what: string };

/** What a createAuditEvents answer means for the benchmark (and for accounting). */
export function classify(r: GqlResponse, expected: number): Outcome {
  if (r.failure) return { kind: 'failure', accepted: 0, what: `transport: ${r.failure}` };
  if (r.errors)
    return { kind: 'failure', accepted: 0, what: `errors: ${JSON.stringify(r.errors)}` };
  const result = r.data?.createAuditEvents as Record<string, any> | undefined;
  switch (result?.__typename) {
    case 'CreateAuditEventsPayload':
      if (result.accepted !== expected) {
        return {
          kind: 'failure',
          accepted: result.accepted,
          what: `accepted ${result.accepted} of ${expected}`,
        };
      }
      return { kind: 'accepted', accepted: result.accepted };
    // Both refuse the call whole and say when to come back: a refusal, not a failure.
    case 'BackpressureError':
    case 'RateLimitedError':
      return { kind: 'backpressure', accepted: 0, retryAfterMs: result.retryAfterMs };
    case 'CommitTimeoutError':
      // Accepted and still pending: it counts for accounting, and as a failure of the run.
      return { kind: 'failure', accepted: expected, what: 'CommitTimeoutError' };
    default:
      return {
        kind: 'failure',
        accepted: 0,
        what: `${result?.__typename}: ${result?.message ?? JSON.stringify(result)}`,
      };
  }
}
