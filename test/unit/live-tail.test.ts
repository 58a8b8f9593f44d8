import { describe, expect, it } from 'vitest';
import type { TailPosition } from '../../src/domain/keyset-cursor.js';
import type { TailStore } from '../../src/query/audit-event-queries.js';
import type { AuditEventRow } from '../../src/query/audit-event-reader.js';
import {
  LiveSubscription,
  SubscriptionInterruptedError,
  SubscriptionReady,
} from '../../src/realtime/live-subscription.js';
import {
  LiveTail,
  TailEventAdded,
  TailReady,
  type TailStep,
  tailSteps,
} from '../../src/realtime/live-tail.js';

const NOV = Date.UTC(2026, 10, 1);
const DEC = Date.UTC(2026, 11, 1);

/** Rows as the tail reads them: only what it looks at (id, type, chain position). */
function row(month: number, seq: number, eventType = 'user.login'): AuditEventRow {
  return {
    id: `${new Date(month).toISOString().slice(0, 7)}#${seq}`,
    eventType,
    chainSeq: seq,
    occurredAt: new Date(month),
  } as unknown as AuditEventRow;
}

/**
 * The database as the tail sees it: committed rows per month (`commit`), chain heads, and the
 * filter the reads apply (`accepts`). Every read is logged.
 */
class FakeStore implements TailStore {
  readonly rows = new Map<number, AuditEventRow[]>();
  readonly reads: string[] = [];
  constructor(private readonly accepts: (r: AuditEventRow) => boolean = () => true) {}

  commit(month: number, n: number, eventType?: string): AuditEventRow[] {
    const list = this.rows.get(month) ?? [];
    this.rows.set(month, list);
    const added: AuditEventRow[] = [];
    for (let i = 0; i < n; i++) {
      const r = row(month, list.length + 1, eventType);
      list.push(r);
      added.push(r);
    }
    return added;
  }

  async heads(month?: number): Promise<ReadonlyMap<number, number>> {
    this.reads.push(month === undefined ? 'heads' : `head ${month === NOV ? 'nov' : 'dec'}`);
    const all = [...this.rows].map(([m, list]) => [m, list.length] as [number, number]);
    return new Map(month === undefined ? all : all.filter(([m]) => m === month));
  }

  async range(month: number, after: number, through: number) {
    this.reads.push(`range ${month === NOV ? 'nov' : 'dec'} ${after}..${through}`);
    return (this.rows.get(month) ?? []).filter(
      (r) => r.chainSeq! > after && r.chainSeq! <= through && this.accepts(r),
    );
  }
}

/** A live message of stored rows, as the bus queues it for a subscriber: its steps. */
function batch(
  rows: AuditEventRow[],
  opts: { accepts?: (r: AuditEventRow) => boolean; noSeq?: boolean } = {},
): TailStep[] {
  const events = rows.map((r) => ({
    row: r,
    month: r.occurredAt.getTime(),
    seq: opts.noSeq ? null : r.chainSeq,
  }));
  return tailSteps(events, (e) => (opts.accepts ? opts.accepts(e.row) : true));
}

/** Queues a message's steps, one by one, as the bus does. */
function publish(source: LiveSubscription<TailStep>, steps: TailStep[]): void {
  for (const step of steps) source.push(step);
}

function setup(start: TailPosition, store: FakeStore, window?: number) {
  const source = new LiveSubscription<TailStep>(1_000);
  const tail = new LiveTail(source, store, start, window);
  return { source, tail };
}

/** The next `n` messages: ids of events, `ready` for the marker, the reason of an interruption. */
async function take(
  tail: LiveTail,
  n: number,
  pending?: Promise<IteratorResult<unknown>>,
): Promise<string[]> {
  const got: string[] = [];
  let ahead = pending;
  while (got.length < n) {
    const r = ahead ? await ahead : await tail.next();
    ahead = undefined;
    if (r.done) break;
    const v = r.value;
    if (v instanceof TailEventAdded) got.push(v.row.id);
    else if (v instanceof SubscriptionReady) got.push('ready');
    else if (v instanceof SubscriptionInterruptedError) got.push(`interrupted ${v.reason}`);
  }
  return got;
}

const ids = (month: number, from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => row(month, from + i).id);

const ready = () => new SubscriptionReady('i1', new Date());

/**
 * Takes the ready marker and lets the replay run (it reads the heads when asked for the next
 * message): what is committed after this comes live only. The pending `next()` is returned.
 */
async function pastReplay(source: LiveSubscription<TailStep>, tail: LiveTail) {
  source.ready(ready());
  expect(await take(tail, 1)).toEqual(['ready']);
  const pending = tail.next();
  await new Promise((r) => setTimeout(r, 5));
  // Wrapped: an async function returning a promise would wait for it.
  return { pending };
}

describe('LiveTail', () => {
  it('replays what was stored after the start, then goes live, each event once', async () => {
    const store = new FakeStore();
    store.commit(DEC, 10);
    const { source, tail } = setup(new Map([[DEC, 4]]), store);
    source.ready(ready());
    const first = await tail.next();
    expect(first.value).toBeInstanceOf(TailReady);
    expect((first.value as TailReady).position).toEqual(new Map([[DEC, 4]]));
    expect(await take(tail, 6)).toEqual(ids(DEC, 5, 10));
    publish(source, batch(store.commit(DEC, 2)));
    expect(await take(tail, 2)).toEqual(ids(DEC, 11, 12));
    expect(tail.position).toEqual(new Map([[DEC, 12]]));
  });

  it('sends an event committed while the subscription was registered once, not twice', async () => {
    const store = new FakeStore();
    store.commit(DEC, 3);
    const { source, tail } = setup(new Map([[DEC, 3]]), store);
    // Committed before the replay reads the heads, published after the subscription existed.
    const late = store.commit(DEC, 2);
    source.ready(ready());
    publish(source, batch(late));
    expect(await take(tail, 3)).toEqual(['ready', ...ids(DEC, 4, 5)]);
    const pending = tail.next();
    publish(source, batch(store.commit(DEC, 1)));
    expect(await take(tail, 1, pending)).toEqual(ids(DEC, 6, 6));
    // The replay read 4..5; their live message was skipped (no event twice), and 6 came live.
    expect(store.reads).toEqual(['heads', 'range dec 3..5']);
  });

  it('reads a batch whose message is still on its way before a later one, and skips it after', async () => {
    const store = new FakeStore();
    const { source, tail } = setup(new Map(), store);
    const { pending } = await pastReplay(source, tail);
    const a = store.commit(DEC, 2); // committed first, on another instance: its message is slow
    const b = store.commit(DEC, 2);
    publish(source, batch(b));
    expect(await take(tail, 4, pending)).toEqual(ids(DEC, 1, 4));
    publish(source, batch(a));
    publish(source, batch(store.commit(DEC, 1)));
    expect(await take(tail, 1)).toEqual(ids(DEC, 5, 5));
    expect(store.reads).toEqual(['heads', 'range dec 0..2']);
  });

  it('reads to the head for a batch the writer could not place', async () => {
    const store = new FakeStore();
    const { source, tail } = setup(new Map(), store);
    const { pending } = await pastReplay(source, tail);
    const unplaced = store.commit(NOV, 3);
    publish(source, batch(unplaced, { noSeq: true }));
    publish(source, batch(unplaced));
    publish(source, batch(store.commit(NOV, 1)));
    expect(await take(tail, 4, pending)).toEqual(ids(NOV, 1, 4));
    expect(store.reads).toContain('head nov');
  });

  it('moves past events the filter does not take, so a resumed tail does not see them again', async () => {
    const mine = (r: AuditEventRow) => r.eventType === 'mine';
    const store = new FakeStore(mine);
    const { source, tail } = setup(new Map(), store);
    const { pending } = await pastReplay(source, tail);
    publish(source, batch(store.commit(DEC, 3, 'other'), { accepts: mine }));
    publish(source, batch(store.commit(DEC, 1, 'mine'), { accepts: mine }));
    const r = await pending;
    const added = r.value as TailEventAdded;
    expect(added.row.id).toBe(row(DEC, 4).id);
    expect(added.position).toEqual(new Map([[DEC, 4]]));
    // No read was needed: positions 1..3 came live, and were passed.
    expect(store.reads).toEqual(['heads']);
  });

  it('keeps each month in chain order and gives every event the position to resume after it', async () => {
    const store = new FakeStore();
    store.commit(NOV, 5);
    store.commit(DEC, 5);
    const { source, tail } = setup(
      new Map([
        [NOV, 2],
        [DEC, 5],
      ]),
      store,
      2,
    );
    source.ready(ready());
    expect(await take(tail, 1)).toEqual(['ready']);
    const got: TailEventAdded[] = [];
    for (let i = 0; i < 3; i++) got.push((await tail.next()).value as TailEventAdded);
    expect(got.map((e) => e.row.id)).toEqual(ids(NOV, 3, 5));
    expect(got.map((e) => e.position.get(NOV))).toEqual([3, 4, 5]);
    expect(got.every((e) => e.position.get(DEC) === 5)).toBe(true);
    // Windows of 2 positions: 2..4, then 4..5.
    expect(store.reads).toEqual(['heads', 'range nov 2..4', 'range nov 4..5']);
  });

  it('resumed from an event’s position, delivers exactly what came after it', async () => {
    const store = new FakeStore();
    const first = setup(new Map(), store);
    first.source.ready(ready());
    await take(first.tail, 1);
    publish(first.source, batch(store.commit(DEC, 3)));
    await first.tail.next();
    const second = (await first.tail.next()).value as TailEventAdded;
    await first.tail.return();
    store.commit(DEC, 2);
    const resumed = setup(second.position, store);
    resumed.source.ready(ready());
    expect(await take(resumed.tail, 4)).toEqual(['ready', ...ids(DEC, 3, 5)]);
  });

  it('passes an interruption on as its last message', async () => {
    const store = new FakeStore();
    const { source, tail } = setup(new Map(), store);
    source.ready(ready());
    source.interrupt(new SubscriptionInterruptedError('SLOW_CONSUMER'));
    expect(await take(tail, 3)).toEqual(['ready', 'interrupted SLOW_CONSUMER']);
    expect((await tail.next()).done).toBe(true);
  });

  it('ends at once when returned while waiting for a message', async () => {
    const store = new FakeStore();
    const { source, tail } = setup(new Map(), store);
    source.ready(ready());
    await take(tail, 1);
    const waiting = tail.next();
    await new Promise((r) => setTimeout(r, 5));
    await tail.return();
    expect((await waiting).done).toBe(true);
    expect(source.isEnded).toBe(true);
  });
});
