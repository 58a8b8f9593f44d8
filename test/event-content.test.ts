import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CREATE, event, FLUSH, STATS } from './support/harness.js';
import { createCommitted, statuses, useTwoApps } from './support/two-apps.js';

/**
 * What a writer may put in an event: the `auditgraph.` event types are the service's own (its
 * access records must not be forgeable), and `data` holds only numbers it can give back exactly.
 */

const apps = useTwoApps();
const { tenant, writerOnB } = apps;
const create = createCommitted;

const BY_ID = `query ById($id: String!, $occurredAt: DateTime) {
  auditEvent(eventId: $id, occurredAt: $occurredAt) {
    __typename
    ... on AuditEvent { id: eventId occurredAt eventType action data }
  }
}`;

describe('the auditgraph. event-type namespace belongs to the service', () => {
  it('a writer cannot store an event whose type starts with auditgraph. (any case): ValidationError naming events[i].eventType', async () => {
    const tn = tenant('ns');
    const writer = await writerOnB(tn);
    for (const eventType of ['auditgraph.apikey.revoked', 'AuditGraph.access.read']) {
      const r = await writer.create([event(), event({ eventType })]);
      expect(r.__typename).toBe('ValidationError');
      expect(r.issues).toEqual([
        { index: 1, field: 'eventType', message: expect.stringContaining('auditgraph.') },
      ]);
      expect(r.message).toContain('events[1].eventType');
    }
    // Nothing of those calls was accepted; a look-alike outside the namespace is an ordinary type.
    expect(statuses(await writer.create([event({ eventType: 'auditgraphx.apikey' })]))).toEqual([
      'STORED',
    ]);
    const { rows } = await apps.sql.query<{ n: number }>(
      `select count(*)::int as n from "t_${tn}".audit_events
        where event_type ilike 'auditgraph.%' and actor_type <> 'api_key'`,
    );
    expect(rows[0]!.n).toBe(0);
  });

  it('the service still writes its own auditgraph. records (reads audited on instance b)', async () => {
    const tn = tenant('own');
    const reader = await writerOnB(tn);
    expect(statuses(await reader.create([event()]))).toEqual(['STORED']);
    const probe = randomUUID();
    expect((await reader.gql(BY_ID, { id: probe })).auditEvent).toBeNull();
    expect((await reader.gql(FLUSH, { timeoutMs: 10_000 })).flushAudit.__typename).toBe(
      'FlushAuditPayload',
    );
    const { rows } = await apps.sql.query<{ n: number }>(
      `select count(*)::int as n from "t_${tn}".audit_events
        where event_type = 'auditgraph.access.read' and data->>'id' = $1`,
      [probe],
    );
    expect(rows[0]!.n).toBe(1);
  });
});

describe('numbers data cannot hold exactly are refused', () => {
  /** Sends the variables as raw JSON text, so a literal such as 1e999 reaches the server as written. */
  async function createRaw(tn: string, eventJson: string) {
    const body = `{"query":${JSON.stringify(CREATE)},"variables":{"input":{"ack":"COMMITTED","events":[${eventJson}]}}}`;
    return apps.a.raw(tn, body);
  }
  const withData = (dataJson: string) => {
    const e = JSON.stringify(event({ data: {} }));
    return e.replace('"data":{}', `"data":${dataJson}`);
  };

  it('an integer beyond 2^53 − 1 in data is a ValidationError with its path; nothing is stored', async () => {
    const tn = tenant('big');
    for (const [json, path] of [
      ['{"a":{"b":9007199254740994}}', 'data.a.b'],
      ['{"list":[1,-9007199254740994]}', 'data.list[1]'],
      ['{"x":1e300}', 'data.x'],
    ] as const) {
      const { status, body } = await createRaw(tn, withData(json));
      expect(status).toBe(200);
      expect(body.errors).toBeUndefined();
      const r = body.data.createAuditEvents;
      expect(r.__typename).toBe('ValidationError');
      expect(r.issues).toEqual([{ index: 0, field: path, message: expect.any(String) }]);
      expect(r.message).toContain(`events[0].${path}`);
    }
    // Nothing was accepted, so the tenant was never even provisioned.
    expect((await apps.a.refused(tn, STATS)).extensions.code).toBe('UNKNOWN_TENANT');
  });

  it('1e999 in data (Infinity once parsed) is a ValidationError with its path, not an internal error', async () => {
    const tn = tenant('inf');
    const { status, body } = await createRaw(tn, withData('{"a":{"b":1e999}}'));
    expect(status).toBe(200);
    expect(body.errors).toBeUndefined();
    const r = body.data.createAuditEvents;
    expect(r.__typename).toBe('ValidationError');
    expect(r.issues).toEqual([{ index: 0, field: 'data.a.b', message: expect.any(String) }]);
    expect(r.message).toContain('events[0].data.a.b');
  });

  it('±(2^53 − 1) and ordinary fractions are stored and read back exactly', async () => {
    const tn = tenant('safe');
    const data = { max: 9007199254740991, min: -9007199254740991, f: 0.1, n: [1.5e-300] };
    const e = event({ id: randomUUID(), data });
    expect(statuses(await create(apps.a, tn, [e]))).toEqual(['STORED']);
    const found = (await apps.a.gql(tn, BY_ID, { id: e.id })).auditEvent;
    expect(found.data).toEqual(data);
  });
});
