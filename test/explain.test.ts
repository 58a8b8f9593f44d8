import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDatabase, type Database } from '../src/db/client.js';
import { addMonths, monthStart, partitionName, type TimeWindow } from '../src/db/partitions.js';
import type { AuditEventFilter, AuditEventOrder } from '../src/domain/filter.js';
import type { KeysetPosition } from '../src/domain/keyset-cursor.js';
import { createLogger } from '../src/logger.js';
import { AuditEventReader } from '../src/query/audit-event-reader.js';
import {
  CREATE,
  captureStatements,
  databaseUrl,
  dropTenants,
  event,
  newTenant,
  sqlClient,
  startApp,
  type TestApp,
} from './support/harness.js';

/**
 * The page statements the service really runs (AuditEventReader.pageQuery for each window of
 * pageWindows — the same objects page() awaits), EXPLAINed under default planner settings
 * against 100,000+ rows spread over three monthly partitions (plus the near-empty current month
 * and the empty partitions created ahead).
 *
 * For every AuditEventFilter shape, in both orders, without and with an `after` cursor, it pins:
 * - an index is used, and no partition holding more than BIG_PARTITION rows is read by a
 *   Seq Scan;
 * - every big partition the plan reads is read through the index the shape is meant to use
 *   (`index` per shape below); shapes without an index of their own (category, action,
 *   outcome, severity) and the time range must read the (occurred_at, id) primary key in page
 *   order, with no Sort — so a page costs about `limit` rows, not every matching row;
 * - partitions are pruned: the partitions the plan of the page's first window touches are
 *   exactly those whose month overlaps both that window and the time range the query allows
 *   (the time range filter and/or the plain occurred_at bound that accompanies every keyset
 *   condition), never more than WINDOW, and fewer than exist whenever a range or a cursor is
 *   given; and the page's windows, one statement each, read every partition the range allows
 *   exactly once between them, none more than WINDOW.
 * And a page after a cursor is one statement (its rows and the probe of the cursor's far side)
 * that still reads no more than WINDOW months, through an index (with the probe over its own
 * nearest window instead of the cursor's month, the same statement read 4 of WINDOW = 3).
 * Two negative controls show the checks can fail: the same statement with index scans
 * disabled is flagged, and the cursor statement without its plain occurred_at bound (a row
 * comparison alone) touches every partition.
 */

const ROWS = 100_000;
const BIG_PARTITION = 1000;
/** Months per statement: less than the tenant has (7), so that pages walk several windows. */
const WINDOW = 3;

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  'Subplans Removed'?: number;
  Filter?: string;
  Plans?: PlanNode[];
}

/** A plain-text table (console.table colours and quotes its cells in vitest's output). */
function formatTable(rows: Record<string, string>[]): string {
  const cols = Object.keys(rows[0] ?? {});
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]) => cells.map((v, i) => v.padEnd(width[i]!)).join(' | ');
  return [
    line(cols),
    width.map((w) => '-'.repeat(w)).join('-+-'),
    ...rows.map((r) => line(cols.map((c) => r[c] ?? ''))),
  ].join('\n');
}

function flatten(node: PlanNode): PlanNode[] {
  return [node, ...(node.Plans ?? []).flatMap(flatten)];
}

const INDEX_NODES = new Set(['Index Scan', 'Index Only Scan', 'Bitmap Index Scan']);

interface Shape {
  name: string;
  filter: AuditEventFilter;
  /** The index (by a fragment of its generated name) the big partitions must be read through. */
  index: RegExp;
  /** The index must deliver the rows in page order: no Sort node in the plan. */
  inOrder?: boolean;
  /** Why, when the shape is not served by an index of its own. */
  note?: string;
}

describe('EXPLAIN of the page query over 100,000 rows in monthly partitions', () => {
  let t: TestApp;
  let db: Database;
  let reader: AuditEventReader;
  const tenant = newTenant('explain');
  const schema = `t_${tenant}`;
  const now = new Date();
  // The bulk rows fill the three whole months before the current one, so every one of those
  // partitions is big whatever today's date (on the 1st the current month would be nearly
  // empty). The current month and the months created ahead stay (almost) empty.
  const thisMonth = monthStart(now);
  const firstMonth = addMonths(thisMonth, -3);
  const middleMonth = addMonths(thisMonth, -2);
  const lastMonth = addMonths(thisMonth, -1);
  let partitions: string[] = [];
  let big = new Set<string>();

  beforeAll(async () => {
    t = await startApp();
    // Provision through the service: one event in each month creates the tenant and partitions.
    const events = [
      event({ occurredAt: new Date(firstMonth.getTime() + 86_400_000).toISOString() }),
      event({ occurredAt: new Date(middleMonth.getTime() + 86_400_000).toISOString() }),
      event({ occurredAt: new Date(lastMonth.getTime() + 86_400_000).toISOString() }),
      event({ occurredAt: new Date(now.getTime() - 60_000).toISOString() }),
    ];
    const r = await t.gql(tenant, CREATE, { input: { events } });
    expect(r.createAuditEvents.stored, JSON.stringify(r)).toBe(4);

    const c = await sqlClient();
    try {
      const from = firstMonth.getTime();
      const span = thisMonth.getTime() - 1 - from;
      await c.query(
        `insert into "${schema}".audit_events
           (id, occurred_at, received_at, event_type, category, action, outcome, correlation_id,
            actor_type, actor_id, actor_ip, resource_type, resource_id, resource_name, severity,
            duration_ms, data, batch_id)
         select gen_random_uuid(), ts, ts,
                'type.' || (g % 40),
                (array['auth','workflow','data','admin','billing'])[g % 5 + 1],
                'act-' || (g % 10),
                case when g % 10 < 7 then 'SUCCESS' when g % 10 < 9 then 'FAILURE' else 'PENDING' end,
                'corr-' || (g % 2000),
                (array['user','service','system'])[g % 3 + 1], 'user-' || (g % 997), '10.0.0.1',
                (array['workflow','document','project','account'])[g % 4 + 1], 'res-' || (g % 1999),
                'name', (array['info','notice','warning','error'])[g % 4 + 1],
                g % 5000,
                jsonb_build_object('seq', g, 'tag', 'tag-' || (g % 1000), 'region', 'eu'),
                '00000000-0000-4000-8000-000000000000'
         from generate_series(1, $3::int) g,
              lateral (select $1::timestamptz + ((g::bigint * $2::bigint / $3::int) * interval '1 millisecond') as ts) x`,
        [firstMonth.toISOString(), span, ROWS],
      );
      await c.query(`analyze "${schema}".audit_events`);
      const { rows } = await c.query<{ name: string; tuples: number }>(
        `select c.relname as name, c.reltuples::bigint as tuples
         from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = $1::regclass order by c.relname`,
        [`"${schema}".audit_events`],
      );
      partitions = rows.map((r) => r.name);
      big = new Set(rows.filter((r) => Number(r.tuples) > BIG_PARTITION).map((r) => r.name));
      const [count] = (await c.query(`select count(*)::int as n from "${schema}".audit_events`))
        .rows;
      expect(count.n).toBeGreaterThanOrEqual(ROWS);
    } finally {
      await c.end();
    }
    expect(partitions.length).toBeGreaterThan(4);
    expect([...big].sort()).toEqual([firstMonth, middleMonth, lastMonth].map(partitionName));

    db = createDatabase(
      { kind: 'pg', url: databaseUrl(), poolSize: 2, applicationName: 'explain-test' },
      createLogger({ logLevel: 'silent' }),
    );
    reader = new AuditEventReader(db, { windowPartitions: WINDOW });
  });

  afterAll(async () => {
    await db?.close();
    await t?.stop();
    await dropTenants(tenant);
  });

  const rangeFrom = new Date(middleMonth.getTime() + 5 * 86_400_000);
  const rangeTo = new Date(middleMonth.getTime() + 20 * 86_400_000);
  // Cursor positions in the middle month (and inside the time range).
  const cursorAt = new Date(middleMonth.getTime() + 12 * 86_400_000 + 1234);
  const cursor: KeysetPosition = {
    occurredAt: cursorAt,
    id: '7f000000-0000-4000-8000-000000000000',
  };

  const shapes: Shape[] = [
    { name: 'none', filter: {}, index: /pkey/, inOrder: true },
    { name: 'correlationId', filter: { correlationId: 'corr-42' }, index: /correlation_id/ },
    { name: 'eventTypes (one)', filter: { eventTypes: ['type.3'] }, index: /event_type/ },
    {
      name: 'eventTypes (two)',
      filter: { eventTypes: ['type.3', 'type.17'] },
      index: /event_type|pkey/,
      note: 'IN list: the planner may prefer (occurred_at, id) in order + filter',
    },
    {
      name: 'category',
      filter: { category: 'billing' },
      index: /pkey/,
      inOrder: true,
      note: 'no index of its own: (occurred_at, id) in order + filter',
    },
    {
      name: 'action',
      filter: { action: 'act-3' },
      index: /pkey/,
      inOrder: true,
      note: 'no index of its own: (occurred_at, id) in order + filter',
    },
    {
      name: 'outcome',
      filter: { outcome: 'FAILURE' },
      index: /pkey/,
      inOrder: true,
      note: 'no index of its own: (occurred_at, id) in order + filter',
    },
    {
      name: 'actorType+actorId',
      filter: { actorType: 'service', actorId: 'user-42' },
      index: /actor_type/,
    },
    {
      name: 'resourceType+resourceId',
      filter: { resourceType: 'document', resourceId: 'res-41' },
      index: /resource_type/,
    },
    {
      name: 'severity',
      filter: { severity: 'error' },
      index: /pkey/,
      inOrder: true,
      note: 'no index of its own: (occurred_at, id) in order + filter',
    },
    {
      name: 'occurredAfter/Before',
      filter: { occurredAfter: rangeFrom, occurredBefore: rangeTo },
      index: /pkey/,
      inOrder: true,
    },
    {
      name: 'dataContains',
      filter: { dataContains: { tag: 'tag-7' } },
      // The planner picks by statistics: the GIN index for a rare value, the (occurred_at, id)
      // key read in order with a filter for a common one. Both are index plans; neither sorts
      // a whole partition.
      index: /data|pkey/,
      note: 'GIN on data, or (occurred_at, id) in order + filter, by selectivity',
    },
  ];

  async function explain(sql: string, params: unknown[], settings: string[] = []) {
    const c = await sqlClient();
    try {
      await c.query('begin');
      for (const s of settings) await c.query(s);
      const { rows } = await c.query(`explain (format json) ${sql}`, params);
      await c.query('rollback');
      return rows[0]['QUERY PLAN'][0].Plan as PlanNode;
    } finally {
      await c.end();
    }
  }

  /** The page's statement over every month (no window): the negative controls' subject. */
  function pageSql(filter: AuditEventFilter, order: AuditEventOrder, after?: KeysetPosition) {
    return reader
      .pageQuery({ schema, filter, order, direction: 'forward', limit: 50, after })
      .toSQL();
  }

  /** The statements a page runs, one per window, in the order it would run them. */
  async function windowSqls(
    filter: AuditEventFilter,
    order: AuditEventOrder,
    after?: KeysetPosition,
  ): Promise<{ window: TimeWindow; sql: string; params: unknown[] }[]> {
    const q = { schema, filter, order, direction: 'forward' as const, limit: 50, after };
    return (await reader.pageWindows(q)).map((window) => ({
      window,
      ...reader.pageQuery(q, window).toSQL(),
    }));
  }

  /** Partitions whose month overlaps [lo, hi) — what a well-pruned plan may touch. */
  function partitionsIn(lo: Date | null, hi: Date | null): string[] {
    return partitions.filter((name) => {
      const m = /y(\d{4})m(\d{2})$/.exec(name)!;
      const start = Date.UTC(Number(m[1]), Number(m[2]) - 1, 1);
      const end = addMonths(new Date(start), 1).getTime();
      return (lo === null || end > lo.getTime()) && (hi === null || start < hi.getTime());
    });
  }

  function expectedPartitions(s: Shape, order: AuditEventOrder, withCursor: boolean): string[] {
    let lo = s.filter.occurredAfter ?? null;
    let hi = s.filter.occurredBefore ?? null;
    if (withCursor) {
      const justPast = new Date(cursorAt.getTime() + 1);
      // DESC: after the cursor means older (occurred_at <= cursor); ASC: newer (>= cursor).
      if (order === 'OCCURRED_AT_DESC') hi = hi && hi < justPast ? hi : justPast;
      else lo = lo && lo > cursorAt ? lo : cursorAt;
    }
    return partitionsIn(lo, hi);
  }

  function summarise(plan: PlanNode) {
    const all = flatten(plan);
    const touched = [...new Set(all.flatMap((n) => n['Relation Name'] ?? []))]
      .filter((r) => partitions.includes(r))
      .sort();
    const bigSeqScans = all.filter(
      (n) => n['Node Type'] === 'Seq Scan' && big.has(n['Relation Name'] ?? ''),
    );
    const indexNodes = all.filter((n) => INDEX_NODES.has(n['Node Type']));
    const removed = all.reduce((a, n) => a + (n['Subplans Removed'] ?? 0), 0);
    return { all, touched, bigSeqScans, indexNodes, removed };
  }

  it('uses an index and prunes partitions for every filter shape, order and cursor', async () => {
    expect(partitions).toContain(partitionName(middleMonth));
    const table: Record<string, string>[] = [];
    const failures: string[] = [];
    for (const s of shapes) {
      for (const order of ['OCCURRED_AT_DESC', 'OCCURRED_AT_ASC'] as const) {
        for (const withCursor of [false, true]) {
          const statements = await windowSqls(s.filter, order, withCursor ? cursor : undefined);
          const label = `${s.name} ${order === 'OCCURRED_AT_DESC' ? 'desc' : 'asc'}${withCursor ? ' +after' : ''}`;
          const plans = [];
          for (const st of statements) plans.push(summarise(await explain(st.sql, st.params)));
          // The window that reads the bulk of the rows is the one the table shows.
          const main = plans.find((p) => p.touched.some((r) => big.has(r))) ?? plans[0]!;
          const nodeTypes = [...new Set(main.all.map((n) => n['Node Type']))].join(', ');
          const indexes = [
            ...new Set(
              main.indexNodes.map((n) =>
                (n['Index Name'] ?? '').replace(/^audit_events_y\d{4}m\d{2}_/, ''),
              ),
            ),
          ].join(', ');
          table.push({
            shape: label,
            nodes: nodeTypes,
            indexes,
            partitions: `${plans.map((p) => p.touched.length).join('+')}/${partitions.length}`,
            windows: String(statements.length),
            note: s.note ?? '',
          });

          const allowed = expectedPartitions(s, order, withCursor);
          // The page's first statement: exactly its window's share of what the range allows.
          const first = plans[0]!;
          const w = statements[0]!.window;
          const expected = allowed.filter((p) =>
            partitionsIn(w.from ?? null, w.to ?? null).includes(p),
          );
          if (JSON.stringify(first.touched) !== JSON.stringify(expected)) {
            failures.push(
              `${label}: first window touches [${first.touched.join(', ')}], expected [${expected.join(', ')}]`,
            );
          }
          // All windows together: each partition the range allows, once.
          const union = plans.flatMap((p) => p.touched).sort();
          if (JSON.stringify(union) !== JSON.stringify(allowed)) {
            failures.push(
              `${label}: windows touch [${union.join(', ')}], expected [${allowed.join(', ')}]`,
            );
          }
          if ((withCursor || s.filter.occurredAfter) && union.length >= partitions.length) {
            failures.push(`${label}: no partition pruned`);
          }
          plans.forEach((sum, i) => {
            const at = `${label} (window ${i + 1}/${plans.length})`;
            if (sum.touched.length > WINDOW) {
              failures.push(`${at}: touches ${sum.touched.length} partitions, over ${WINDOW}`);
            }
            if (sum.bigSeqScans.length > 0)
              failures.push(
                `${at}: Seq Scan on ${sum.bigSeqScans.map((n) => n['Relation Name']).join(', ')}`,
              );
            // A window of empty partitions (those ahead) may be read any way: it holds nothing.
            const bigTouched = sum.touched.filter((r) => big.has(r));
            if (bigTouched.length === 0) return;
            if (sum.indexNodes.length === 0) failures.push(`${at}: no index node`);
            // Every big partition the plan reads is read through the shape's index.
            for (const rel of bigTouched) {
              const viaIndex = sum.all.some(
                (n) =>
                  INDEX_NODES.has(n['Node Type']) &&
                  (n['Index Name'] ?? '').startsWith(`${rel}_`) &&
                  s.index.test(n['Index Name'] ?? ''),
              );
              if (!viaIndex) failures.push(`${at}: ${rel} not read through ${s.index}`);
            }
            if (s.inOrder && sum.all.some((n) => n['Node Type'] === 'Sort')) {
              failures.push(`${at}: sorts instead of reading the index in order`);
            }
          });
        }
      }
    }
    console.log(
      `EXPLAIN of AuditEventReader.pageQuery, ${ROWS} rows, partitions: ${partitions.join(', ')}`,
    );
    console.log(formatTable(table));
    expect(failures).toEqual([]);
  });

  it('a page after a cursor is one statement (page and far-side probe) that reads no more months than its window, through an index', async () => {
    const { sent, stop } = captureStatements(schema);
    const seen: string[] = [];
    try {
      for (const order of ['OCCURRED_AT_DESC', 'OCCURRED_AT_ASC'] as const) {
        sent.length = 0;
        const q = { schema, filter: {}, order, direction: 'forward' as const, limit: 50 };
        const page = await reader.page({ ...q, after: cursor });
        expect(page.rows).toHaveLength(50);
        expect(page.hasPreviousPage).toBe(true);
        expect(sent).toHaveLength(1);
        expect(sent[0]!.text).toMatch(/union all/i);
        const plan = summarise(await explain(sent[0]!.text, sent[0]!.values));
        const [window] = await reader.pageWindows({ ...q, after: cursor });
        // The page's first window, narrowed by the cursor: the probe's month is inside it.
        const allowed = expectedPartitions(
          { name: 'none', filter: {}, index: /pkey/ },
          order,
          true,
        ).filter((name) => partitionsIn(window!.from ?? null, window!.to ?? null).includes(name));
        expect(plan.touched.length).toBeLessThanOrEqual(WINDOW);
        expect(plan.touched.every((name) => allowed.includes(name))).toBe(true);
        expect(plan.bigSeqScans).toHaveLength(0);
        expect(plan.indexNodes.length).toBeGreaterThan(0);
        seen.push(`${order}: ${plan.touched.join(', ')}`);
      }
    } finally {
      stop();
    }
    console.info(`[explain] page + probe after a cursor, partitions read: ${seen.join('; ')}`);
  });

  it('flags a plan that reads a big partition sequentially (negative control)', async () => {
    const { sql, params } = pageSql({ category: 'billing' }, 'OCCURRED_AT_DESC');
    const plan = await explain(sql, params, [
      'set local enable_indexscan = off',
      'set local enable_bitmapscan = off',
      'set local enable_indexonlyscan = off',
    ]);
    const sum = summarise(plan);
    expect(sum.bigSeqScans.length).toBeGreaterThan(0);
    expect(sum.indexNodes).toHaveLength(0);
  });

  it('prunes only thanks to the plain occurred_at bound beside the row comparison (negative control)', async () => {
    const { sql, params } = pageSql({}, 'OCCURRED_AT_DESC', cursor);
    const bound = /\("t_[a-z0-9_]+"\."audit_events"\."occurred_at" <= \$(\d+)\)/;
    expect(sql).toMatch(bound);
    const rowOnly = sql.replace(bound, (_m, n) => `($${n}::timestamptz is not null)`);
    const pruned = summarise(await explain(sql, params));
    const unpruned = summarise(await explain(rowOnly, params));
    expect(pruned.touched.length).toBeLessThan(partitions.length);
    expect(unpruned.touched).toEqual([...partitions].sort());
  });
});
