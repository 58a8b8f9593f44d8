import { describe, expect, it } from 'vitest';
import { matchesLiveTail } from '../../src/domain/filter.js';
import {
  LiveSubscription,
  QueueBudget,
  SubscriptionInterruptedError,
} from '../../src/realtime/live-subscription.js';

async function drain<T>(sub: LiveSubscription<T>): Promise<unknown[]> {
  const got: unknown[] = [];
  for await (const v of sub) got.push(v);
  return got;
}

describe('byte-bounded subscription queues', () => {
  it('counts queued bytes against the budget and gives them back when delivered', async () => {
    const budget = new QueueBudget(1_000);
    const sub = new LiveSubscription<string>(100, budget);
    sub.push('a', 300);
    sub.push('b', 200);
    expect(sub.queuedBytes).toBe(500);
    expect(budget.bytes).toBe(500);
    expect((await sub.next()).value).toBe('a');
    expect(budget.bytes).toBe(200);
    expect((await sub.next()).value).toBe('b');
    expect(budget.bytes).toBe(0);
  });

  it('does not count a message that a waiting reader takes at once', async () => {
    const budget = new QueueBudget(100);
    const sub = new LiveSubscription<string>(100, budget);
    const waiting = sub.next();
    sub.push('big', 10_000);
    expect((await waiting).value).toBe('big');
    expect(budget.bytes).toBe(0);
    expect(sub.isEnded).toBe(false);
  });

  it('gives the bytes back when the subscription ends', async () => {
    const budget = new QueueBudget(1_000);
    const sub = new LiveSubscription<string>(100, budget);
    sub.push('a', 400);
    await sub.return();
    expect(budget.bytes).toBe(0);
  });

  it('cuts off the subscription holding the most (OVERLOADED), and the others go on', async () => {
    const budget = new QueueBudget(1_000);
    const hog = new LiveSubscription<number>(1_000, budget);
    const quiet = new LiveSubscription<number>(1_000, budget);
    let hogReleased = false;
    hog.onEnd(() => {
      hogReleased = true;
    });
    for (let i = 0; i < 8; i++) hog.push(i, 100); // 800 bytes, never read
    quiet.push(1, 100);
    quiet.push(2, 100); // 1,000: at the bound
    quiet.push(3, 100); // does not fit: the hog goes, not the process nor the quiet one
    expect(hogReleased).toBe(true);
    expect(budget.bytes).toBe(300);
    const fromHog = await drain(hog);
    expect(fromHog).toHaveLength(1); // its queue dropped, its last word the reason
    expect(fromHog[0]).toBeInstanceOf(SubscriptionInterruptedError);
    expect(fromHog[0]).toMatchObject({ reason: 'OVERLOADED', retryable: true });
    expect(quiet.isEnded).toBe(false);
    expect([(await quiet.next()).value, (await quiet.next()).value]).toEqual([1, 2]);
    expect((await quiet.next()).value).toBe(3);
    expect(budget.bytes).toBe(0);
  });

  it('cuts off the subscriber itself when it is the one holding the most', async () => {
    const budget = new QueueBudget(500);
    const small = new LiveSubscription<number>(100, budget);
    const flooder = new LiveSubscription<number>(100, budget);
    small.push(0, 100);
    for (let i = 0; i < 10; i++) flooder.push(i, 100);
    expect(flooder.isEnded).toBe(true);
    expect(small.isEnded).toBe(false);
    expect(budget.bytes).toBe(100);
    const got = await drain(flooder);
    expect(got.at(-1)).toMatchObject({ reason: 'OVERLOADED' });
    expect(budget.bytes).toBe(100);
  });

  it('a message larger than the whole budget ends its subscription, never the process', async () => {
    const budget = new QueueBudget(100);
    const sub = new LiveSubscription<string>(10, budget);
    sub.push('huge', 1_000);
    expect(await drain(sub)).toEqual([expect.objectContaining({ reason: 'OVERLOADED' })]);
    expect(budget.bytes).toBe(0);
  });

  it('frees what an already interrupted (SLOW_CONSUMER) subscription still holds', async () => {
    const budget = new QueueBudget(1_000);
    const slow = new LiveSubscription<number>(3, budget);
    for (let i = 0; i < 4; i++) slow.push(i, 200); // 3 queued (600 bytes), then SLOW_CONSUMER
    expect(slow.isEnded).toBe(true);
    expect(budget.bytes).toBe(600);
    const other = new LiveSubscription<number>(10, budget);
    other.push(1, 300);
    other.push(2, 300); // needs room: the ended one still holds the most
    expect(budget.bytes).toBe(600);
    const rest = await drain(slow);
    expect(rest).toEqual([expect.objectContaining({ reason: 'OVERLOADED' })]);
  });
});

describe('the live tail and the service’s own records', () => {
  const base = {
    id: '0b7c6a4e-2f0e-4a51-9a43-6f1f3c1d2e10',
    occurredAt: new Date(),
    receivedAt: new Date(),
    category: 'access',
    action: 'read',
    outcome: 'SUCCESS',
    correlationId: 'r',
    actorType: 'api_key',
    actorId: 'k',
    actorIp: null,
    resourceType: 'audit_log',
    resourceId: 'auditEventsAdded',
    resourceName: null,
    parentEventId: null,
    severity: 'info',
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: null,
  } as const;
  const access = { ...base, eventType: 'auditgraph.access.read' };
  const own = { ...base, eventType: 'workflow.execution.started' };

  it('leaves access records out unless the filter names their type', () => {
    expect(matchesLiveTail(access, {})).toBe(false);
    expect(matchesLiveTail(access, { category: 'access' })).toBe(false);
    expect(matchesLiveTail(access, { eventTypes: ['auditgraph.access.read'] })).toBe(true);
    expect(matchesLiveTail(access, { eventTypes: ['auditgraph.apikey.revoked'] })).toBe(false);
    expect(matchesLiveTail(own, {})).toBe(true);
  });
});
