import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type { DeadLetterEventKind } from '../src/ingest/events.js';
import { countEventsNow } from './support/db.js';
import {
  CREATE,
  dropTenants,
  event,
  FLUSH,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';
import { sseSubscribe } from './support/realtime.js';

const DEAD_LETTERS = `query DL($filter: DeadLetterFilter) { deadLetters(filter: $filter) { __typename
  ... on DeadLetterConnection { totalCount edges { node { id: deadLetterId state errorCode error attempts replays eventCount events { id: eventId eventType } } } }
   } }`;
const REPLAY = `mutation R($input: ReplayDeadLettersInput!) { replayDeadLetters(input: $input) { __typename
  ... on ReplayDeadLettersPayload { replayed { id: deadLetterId state } notFound } ... on AuditError { message } } }`;
const DISCARD = `mutation D($input: DiscardDeadLetterInput!) { discardDeadLetter(input: $input) { __typename
  ... on DeadLetter { id: deadLetterId eventCount } ... on AuditError { message } } }`;

const STATS = `query { auditStats { __typename ... on AuditStats {
  accepted stored duplicates pending deadLettered parked discarded replayed identityHolds } } }`;
const DEAD_LETTER_EVENTS = `subscription { deadLetterEvents { __typename
  ... on SubscriptionReady { instanceId } ... on DeadLetterEvent { kind deadLetterId events attempts error } } }`;

/** Resolves with the first dead-letter event of `kind` for `tenant` reported by the app. */
function nextDeadLetterEvent(t: TestApp, tenant: string, kind: DeadLetterEventKind) {
  return new Promise<{ deadLetterId: string; error: string | null }>((resolve) => {
    const off = t.app.graph.events.onDeadLetter((e) => {
      if (e.tenant === tenant && e.kind === kind) {
        off();
        resolve(e);
      }
    });
  });
}

async function sql(text: string): Promise<void> {
  const c = await sqlClient();
  try {
    await c.query(text);
  } finally {
    await c.end();
  }
}

const stores = [
  { name: 'Redis streams', redis: true },
  { name: 'local files (embedded mode)', redis: false },
];

describe.each(stores)('dead letters in $name', ({ redis }) => {
  const prefix = `test:${randomBytes(4).toString('hex')}:`;
  const apps: TestApp[] = [];
  const tenants: string[] = [];

  // Each app its own key prefix: apps sharing one would share the retry work (as instances do),
  // and a test listening to its own app's events would miss the steps another app took.
  async function app(env: Record<string, string> = {}) {
    const t = await startApp({
      ...(redis
        ? { REDIS_URL: inject('redisUrl'), REDIS_KEY_PREFIX: `${prefix}${apps.length}:` }
        : {}),
      DLQ_POLL_MS: '50',
      DLQ_RETRY_SCHEDULE_MS: '50,50',
      RETRY_BASE_MS: '10',
      RETRY_MAX_MS: '50',
      ...env,
    });
    apps.push(t);
    return t;
  }
  function tenant() {
    const id = newTenant('dlq');
    tenants.push(id);
    return id;
  }

  afterAll(async () => {
    for (const t of apps) await t.stop();
    await dropTenants(...tenants);
    if (redis) {
      const r = new Redis(inject('redisUrl'));
      const keys = await r.keys(`${prefix}*`);
      if (keys.length) await r.del(...keys);
      await r.quit();
    }
  });

  it('stores 99 of a batch of 100 and dead-letters the one row the database rejects', async () => {
    const t = await app();
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } }); // provisions the schema
    await sql(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const events = Array.from({ length: 100 }, (_, i) =>
      event({ eventType: i === 42 ? 'poison' : 'ok' }),
    );
    const r = await t.gql(id, CREATE, { input: { events } });
    expect(r.createAuditEvents.__typename).toBe('CreateAuditEventsPayload');
    const statuses = r.createAuditEvents.events.map((e: { status: string }) => e.status);
    expect(statuses.filter((s: string) => s === 'STORED')).toHaveLength(99);
    expect(statuses[42]).toBe('DEAD_LETTERED');
    expect(await countEventsNow(id)).toBe(100); // 99 + the provisioning event

    const dl = await t.gql(id, DEAD_LETTERS);
    expect(dl.deadLetters.totalCount).toBe(1);
    expect(dl.deadLetters.edges[0].node).toMatchObject({ errorCode: '23514', eventCount: 1 });
    expect(dl.deadLetters.edges[0].node.events[0].eventType).toBe('poison');

    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({
      accepted: 101,
      stored: 100,
      deadLettered: 1,
      pending: 0,
      identityHolds: true,
    });
  });

  it('retries a dead letter, parks it after its last replay, and stores it when replayed after the fix', async () => {
    const t = await app();
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    await sql(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    // Every step is also published to the tenant's deadLetterEvents subscription.
    const steps = await sseSubscribe(t.url, id, 'deadLetterEvents', DEAD_LETTER_EVENTS);
    expect((await steps.next()).__typename).toBe('SubscriptionReady');
    const parked = nextDeadLetterEvent(t, id, 'PARKED');
    const r = await t.gql(id, CREATE, { input: { events: [event({ eventType: 'poison' })] } });
    expect(r.createAuditEvents.events[0].status).toBe('DEAD_LETTERED');
    const { deadLetterId } = await parked;
    expect((await t.gql(id, STATS)).auditStats).toMatchObject({ deadLettered: 1, parked: 1 });

    const listed = await t.gql(id, DEAD_LETTERS, { filter: { state: 'PARKED' } });
    expect(listed.deadLetters.edges.map((e: { node: { id: string } }) => e.node.id)).toEqual([
      deadLetterId,
    ]);
    expect(listed.deadLetters.edges[0].node.replays).toBe(2); // schedule of two delays: 2 replays, then parked

    await sql(`alter table "t_${id}".audit_events drop constraint poison`);
    const recovered = nextDeadLetterEvent(t, id, 'RECOVERED');
    const replay = await t.gql(id, REPLAY, {
      input: { ids: [deadLetterId, '00000000-0000-0000-0000-000000000000'] },
    });
    expect(replay.replayDeadLetters.replayed).toHaveLength(1);
    expect(replay.replayDeadLetters.notFound).toEqual(['00000000-0000-0000-0000-000000000000']);
    await recovered;
    const kinds = (await steps.until((m) => m.kind === 'RECOVERED')).map((m) => m.kind);
    await steps.close();
    expect(kinds).toEqual(['ENQUEUED', 'RETRIED', 'PARKED', 'REPLAYED', 'RECOVERED']);

    expect(await countEventsNow(id)).toBe(2);
    expect((await t.gql(id, DEAD_LETTERS)).deadLetters.totalCount).toBe(0);
    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({
      accepted: 2,
      stored: 2,
      deadLettered: 0,
      replayed: 1,
      identityHolds: true,
    });
  });

  it('counts a discarded dead letter and logs it with its reason', async () => {
    const t = await app({ DLQ_RETRY_SCHEDULE_MS: '10' });
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    await sql(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const parked = nextDeadLetterEvent(t, id, 'PARKED');
    await t.gql(id, CREATE, {
      input: { events: [event({ eventType: 'poison' }), event({ eventType: 'poison' })] },
    });
    const { deadLetterId } = await parked;

    const noReason = await t.gql(id, DISCARD, { input: { id: deadLetterId, reason: '  ' } });
    expect(noReason.discardDeadLetter.__typename).toBe('ValidationError');
    const d = await t.gql(id, DISCARD, {
      input: { id: deadLetterId, reason: 'test data, not real' },
    });
    expect(d.discardDeadLetter).toMatchObject({ __typename: 'DeadLetter', eventCount: 2 });
    const again = await t.gql(id, DISCARD, { input: { id: deadLetterId, reason: 'twice' } });
    expect(again.discardDeadLetter.__typename).toBe('ValidationError');

    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({
      accepted: 3,
      stored: 1,
      deadLettered: 0,
      discarded: 2,
      identityHolds: true,
    });
  });

  it('dead-letters a batch that keeps failing for another reason, and the worker stores it once the cause is gone', async () => {
    const t = await app({
      WRITE_MAX_ATTEMPTS: '2',
      DLQ_RETRY_SCHEDULE_MS: '100,100,100,100,100,100,100,100',
    });
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    // A missing table is not a data error: the whole batch is retried, then dead-lettered.
    await sql(`alter table "t_${id}".audit_events rename to audit_events_away`);
    const enqueued = nextDeadLetterEvent(t, id, 'ENQUEUED');
    const r = await t.gql(id, CREATE, {
      input: { events: Array.from({ length: 10 }, () => event()) },
    });
    expect(
      r.createAuditEvents.events.every((e: { status: string }) => e.status === 'DEAD_LETTERED'),
    ).toBe(true);
    const { error } = await enqueued;
    expect(error).toMatch(/^42P01/);

    const recovered = nextDeadLetterEvent(t, id, 'RECOVERED');
    await sql(`alter table "t_${id}".audit_events_away rename to audit_events`);
    await recovered;
    expect(await countEventsNow(id)).toBe(11);
    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({
      accepted: 11,
      stored: 11,
      deadLettered: 0,
      replayed: 10,
      identityHolds: true,
    });
  });

  it('makes flushAudit decide a batch in backoff now: written, or dead-lettered', async () => {
    const t = await app({
      WRITE_MAX_ATTEMPTS: '1000',
      RETRY_BASE_MS: '60000',
      RETRY_MAX_MS: '60000',
    });
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    await sql(`alter table "t_${id}".audit_events rename to audit_events_away`);
    try {
      const r = await t.gql(id, CREATE, {
        input: { ack: 'BUFFERED', events: Array.from({ length: 5 }, () => event()) },
      });
      expect(r.createAuditEvents.buffered).toBe(5);
      // The first write fails and waits a minute in backoff; the flush must not wait for it.
      const f = await t.gql(id, FLUSH, { timeoutMs: 20_000 });
      expect(f.flushAudit).toMatchObject({
        __typename: 'FlushAuditPayload',
        stored: 0,
        deadLettered: 5,
      });
      const s = (await t.gql(id, STATS)).auditStats;
      expect(s).toMatchObject({
        accepted: 6,
        stored: 1,
        deadLettered: 5,
        pending: 0,
        identityHolds: true,
      });
    } finally {
      await sql(`alter table "t_${id}".audit_events_away rename to audit_events`);
    }
  });
  it('replays a dead letter once per delay of DLQ_RETRY_SCHEDULE_MS, then parks it, and /readyz and the metrics show the parked one ageing', async () => {
    const t = await app({ DLQ_RETRY_SCHEDULE_MS: '30,30' });
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    await sql(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const kinds: string[] = [];
    const off = t.app.graph.events.onDeadLetter((e) => {
      if (e.tenant === id) kinds.push(e.kind);
    });
    const parked = nextDeadLetterEvent(t, id, 'PARKED');
    await t.gql(id, CREATE, { input: { events: [event({ eventType: 'poison' })] } });
    await parked;
    off();
    // Two delays: two replays (the first RETRIED, the second PARKED), not three.
    expect(kinds.filter((k) => k === 'RETRIED' || k === 'PARKED')).toEqual(['RETRIED', 'PARKED']);

    const age = async () => {
      await t.app.graph.retryWorker.runOnce();
      const ready = (await (await fetch(t.url.replace('/graphql', '/readyz'))).json()) as {
        deadLetters: { oldestAgeMs: number; parkedEntries: number };
      };
      const metrics = await (await fetch(t.url.replace('/graphql', '/metrics'))).text();
      const seconds = Number(
        /^auditgraph_dead_letter_oldest_age_seconds (\S+)$/m.exec(metrics)?.[1],
      );
      return { ready: ready.deadLetters, seconds };
    };
    const first = await age();
    expect(first.ready.parkedEntries).toBe(1);
    await new Promise((r) => setTimeout(r, 300));
    const later = await age();
    expect(later.ready.oldestAgeMs).toBeGreaterThanOrEqual(first.ready.oldestAgeMs + 250);
    expect(later.seconds).toBeGreaterThanOrEqual(0.25);
  });

  it('refuses new writes, and says not ready, when the dead-letter queue reaches DLQ_MAX_EVENTS', async () => {
    const t = await app({ DLQ_MAX_EVENTS: '2', DLQ_RETRY_SCHEDULE_MS: '600000' });
    const id = tenant();
    await t.gql(id, CREATE, { input: { events: [event()] } });
    await sql(
      `alter table "t_${id}".audit_events add constraint poison check (event_type <> 'poison')`,
    );
    const r = await t.gql(id, CREATE, {
      input: { events: [event({ eventType: 'poison' }), event({ eventType: 'poison' })] },
    });
    expect(r.createAuditEvents.events.map((e: { status: string }) => e.status)).toEqual([
      'DEAD_LETTERED',
      'DEAD_LETTERED',
    ]);
    // The worker's next look sees the queue at capacity.
    await t.app.graph.retryWorker.runOnce();
    const refused = await t.gql(id, CREATE, { input: { events: [event()] } });
    expect(refused.createAuditEvents).toMatchObject({
      __typename: 'BackpressureError',
      limit: 'DLQ_MAX_EVENTS',
      retryable: true,
    });
    const ready = await fetch(t.url.replace('/graphql', '/readyz'));
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { reasons: string[] }).reasons.join(' ')).toMatch(
      /dead-letter queue full/,
    );
    // Nothing was dropped to make room, and nothing of the refused call was accepted.
    const s = (await t.gql(id, STATS)).auditStats;
    expect(s).toMatchObject({ accepted: 3, stored: 1, deadLettered: 2, identityHolds: true });
    const held = (await t.gql(id, DEAD_LETTERS)).deadLetters;
    expect(held.totalCount).toBe(1); // the two refused rows of one batch: one dead letter
    expect(held.edges[0].node.eventCount).toBe(2);
  });
});
