import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEventRecord } from '../../src/domain/event.js';
import { jsonContains, matchesFilter } from '../../src/domain/filter.js';
import { sqlClient } from '../support/harness.js';

const at = new Date('2026-03-04T05:06:07.089Z');

function record(overrides: Partial<AuditEventRecord> = {}): AuditEventRecord {
  return {
    id: '0b7c6a4e-2f0e-4a51-9a43-6f1f3c1d2e10',
    occurredAt: at,
    receivedAt: at,
    eventType: 'workflow.execution.started',
    category: 'workflow',
    action: 'start',
    outcome: 'SUCCESS',
    correlationId: 'run-42',
    actorType: 'user',
    actorId: 'alice',
    actorIp: null,
    resourceType: 'workflow',
    resourceId: 'wf-1',
    resourceName: null,
    parentEventId: null,
    severity: 'high',
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    namespace: null,
    clusterId: null,
    traceId: null,
    spanId: null,
    dataJson: JSON.stringify({ tag: 'keep', n: 2, tags: ['a', 'b'], nested: { x: [1, { y: 2 }] } }),
    ...overrides,
  };
}

describe('matchesFilter', () => {
  it('matches the empty filter', () => {
    expect(matchesFilter(record(), {})).toBe(true);
  });

  it('requires every given condition', () => {
    const r = record();
    const yes = {
      correlationId: 'run-42',
      eventTypes: ['other', 'workflow.execution.started'],
      category: 'workflow',
      action: 'start',
      outcome: 'SUCCESS' as const,
      actorType: 'user',
      actorId: 'alice',
      resourceType: 'workflow',
      resourceId: 'wf-1',
      severity: 'high',
      occurredAfter: at,
      occurredBefore: new Date(at.getTime() + 1),
      dataContains: { tag: 'keep' },
    };
    expect(matchesFilter(r, yes)).toBe(true);
    const no: Record<string, unknown> = {
      correlationId: 'run-43',
      eventTypes: ['other'],
      category: 'x',
      action: 'x',
      outcome: 'FAILURE',
      actorType: 'x',
      actorId: 'x',
      resourceType: 'x',
      resourceId: 'x',
      severity: 'low',
      occurredAfter: new Date(at.getTime() + 1),
      occurredBefore: at,
      dataContains: { tag: 'drop' },
    };
    for (const [key, value] of Object.entries(no)) {
      expect(matchesFilter(r, { ...yes, [key]: value }), key).toBe(false);
    }
  });

  it('treats occurredAfter as inclusive and occurredBefore as exclusive, like the query', () => {
    expect(matchesFilter(record(), { occurredAfter: at })).toBe(true);
    expect(matchesFilter(record(), { occurredBefore: at })).toBe(false);
  });

  it('never matches dataContains on an event without data', () => {
    expect(matchesFilter(record({ dataJson: null }), { dataContains: {} })).toBe(false);
    expect(matchesFilter(record(), { dataContains: {} })).toBe(true);
  });
});

/** Pairs (data, dataContains) whose answer must be PostgreSQL's `jsonb @> jsonb`. */
const CASES: [unknown, unknown][] = [
  [{ a: 1 }, { a: 1 }],
  [{ a: 1 }, { a: 1.0 }],
  [{ a: 1 }, { a: '1' }],
  [{ a: 1, b: 2 }, { a: 1 }],
  [{ a: 1 }, { a: 1, b: 2 }],
  [{ a: null }, { a: null }],
  [{ a: null }, {}],
  [{ a: false }, { a: null }],
  [{ a: { b: { c: 1, d: 2 } } }, { a: { b: { c: 1 } } }],
  [{ a: { b: 1 } }, { a: {} }],
  [{ a: { b: 1 } }, { a: [] }],
  [{ a: [] }, { a: {} }],
  [{ tags: ['a', 'b'] }, { tags: ['b'] }],
  [{ tags: ['a', 'b'] }, { tags: ['b', 'a', 'a'] }],
  [{ tags: ['a', 'b'] }, { tags: [] }],
  [{ tags: ['a', 'b'] }, { tags: 'a' }],
  [{ tags: 'a' }, { tags: ['a'] }],
  [{ tags: [['a']] }, { tags: ['a'] }],
  [{ tags: [['a', 'b']] }, { tags: [['b']] }],
  [{ tags: [{ k: 1, j: 2 }] }, { tags: [{ k: 1 }] }],
  [{ tags: [{ k: 1 }] }, { tags: [{ k: 2 }] }],
  [{ tags: [1, [2]] }, { tags: [2] }],
  [{ tags: [{ k: [1, 2] }] }, { tags: [{ k: [2] }] }],
  [{ s: 'é' }, { s: 'é' }],
];

describe('jsonContains agrees with PostgreSQL jsonb @>', () => {
  let c: pg.Client;
  beforeAll(async () => {
    c = await sqlClient();
  });
  afterAll(async () => {
    await c.end();
  });

  it.each(CASES.map((pair, i) => [i, ...pair] as const))('case %i', async (_, a, b) => {
    const { rows } = await c.query<{ contains: boolean }>(
      'select $1::jsonb @> $2::jsonb as contains',
      [JSON.stringify(a), JSON.stringify(b)],
    );
    expect(jsonContains(a, b)).toBe(rows[0]!.contains);
  });
});
