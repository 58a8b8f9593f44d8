import { describe, expect, it } from 'vitest';
import { AuditClient, AuditClientError, WaitForEventsError } from '../../src/client/index.js';

/*
 * The client's retry decisions on a scripted fetch: what it sends again, with which ids, and
 * what it gives up on. Against the real service: test/client.test.ts.
 */

type Answer = Record<string, unknown> | Error;

function scripted(answers: Answer[]) {
  const sent: { query: string; variables: Record<string, any> }[] = [];
  const fetch = (async (_url: string, init: { body: string }) => {
    sent.push(JSON.parse(init.body));
    const next = answers.shift();
    if (!next) throw new Error('no more answers scripted');
    if (next instanceof Error) throw next;
    return new Response(JSON.stringify(next), { headers: { 'content-type': 'application/json' } });
  }) as unknown as typeof globalThis.fetch;
  return { client: new AuditClient({ url: 'http://x/graphql', tenant: 't', fetch }), sent };
}

const EVENT = {
  occurredAt: new Date().toISOString(),
  eventType: 'a.b',
  category: 'c',
  action: 'd',
  outcome: 'SUCCESS' as const,
  correlationId: 'c1',
  actor: { type: 'u', id: 'u' },
  resource: { type: 'r', id: 'r' },
};
const refusal = (typename: string, extra: Record<string, unknown> = {}) => ({
  data: {
    createAuditEvents: {
      __typename: typename,
      code: 'X',
      message: 'no',
      retryable: true,
      ...extra,
    },
  },
});
const wait = (outcome: string, stored: number) => ({
  data: {
    waitForEvents: {
      outcome,
      done: outcome === 'STORED',
      count: 2,
      stored,
      deadLettered: 0,
      lastError: null,
      waitedMs: 1,
      message: `${stored} of 2 stored`,
    },
  },
});

describe('client retries', () => {
  it('createEvents sends the same ids again after backpressure and a cut connection', async () => {
    const { client, sent } = scripted([
      refusal('BackpressureError', { retryAfterMs: 1 }),
      new TypeError('fetch failed'),
      {
        data: {
          createAuditEvents: {
            __typename: 'CreateAuditEventsPayload',
            accepted: 2,
            stored: 2,
            duplicates: 0,
            buffered: 0,
            events: [],
          },
        },
      },
    ]);
    const r = await client.createEvents([EVENT, { ...EVENT, id: 'given' }]);
    expect(r.attempts).toBe(3);
    const ids = sent.map((s) => s.variables.input.events.map((e: { id: string }) => e.id));
    expect(ids[0]![1]).toBe('given');
    expect(ids[0]![0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(ids[1]).toEqual(ids[0]);
    expect(ids[2]).toEqual(ids[0]);
  });

  it('createEvents gives up at once on what cannot succeed, and after maxAttempts on the rest', async () => {
    const invalid = scripted([
      {
        data: {
          createAuditEvents: {
            __typename: 'ValidationError',
            code: 'VALIDATION',
            message: 'bad',
            retryable: false,
            issues: [{ index: 0, field: 'occurredAt', message: 'too old' }],
          },
        },
      },
    ]);
    const err = await invalid.client.createEvents([EVENT]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuditClientError);
    expect((err as AuditClientError).details.issues).toHaveLength(1);
    expect(invalid.sent).toHaveLength(1);

    const limited = scripted([
      refusal('RateLimitedError', { retryAfterMs: 1 }),
      refusal('RateLimitedError', { retryAfterMs: 1 }),
    ]);
    const last = await limited.client
      .createEvents([EVENT], { maxAttempts: 2 })
      .catch((e: unknown) => e);
    expect((last as Error).message).toMatch(/^RateLimitedError/);
    expect(limited.sent).toHaveLength(2);
  });

  it('waitForEvents asks again after a cut connection and a stopping instance, then rejects with what it saw', async () => {
    const stopping = {
      errors: [{ message: 'stopping', extensions: { code: 'SHUTTING_DOWN', retryable: true } }],
    };
    const ok = scripted([new TypeError('socket hang up'), stopping, wait('STORED', 2)]);
    expect((await ok.client.waitForEvents({ correlationId: 'c1', count: 2 })).stored).toBe(2);
    expect(ok.sent).toHaveLength(3);

    const forbidden = {
      errors: [{ message: 'no', extensions: { code: 'FORBIDDEN', retryable: false } }],
    };
    const refused = scripted([forbidden]);
    const err = await refused.client
      .waitForEvents({ correlationId: 'c1', count: 2 })
      .catch((e: unknown) => e);
    expect((err as AuditClientError).code).toBe('FORBIDDEN');

    const short = scripted([wait('TIMED_OUT', 1)]);
    const timedOut = await short.client
      .waitForEvents({ correlationId: 'c1', count: 2, timeoutMs: 1 })
      .catch((e: unknown) => e);
    expect(timedOut).toBeInstanceOf(WaitForEventsError);
    expect((timedOut as WaitForEventsError).result.stored).toBe(1);
  });
});
