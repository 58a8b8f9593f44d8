import type { TailPosition } from '../domain/keyset-cursor.js';
import type { TailStore } from '../query/audit-event-queries.js';
import type { AuditEventRow } from '../query/audit-event-reader.js';
import {
  type LiveItem,
  SubscriptionInterruptedError,
  SubscriptionReady,
} from './live-subscription.js';

/**
 * One step of a live message, as a subscriber's queue holds it: an event the filter takes, or a
 * run of positions of one month it does not take (they only move the tail). A message's steps
 * are queued one by one, so the subscriber's byte budget counts each event until it is taken.
 */
export interface TailStep {
  /** Its month's chain: first instant of the UTC month, epoch ms. */
  month: number;
  /** First and last position of the step; null when the writer could not say. */
  first: number | null;
  last: number | null;
  /** The event to deliver; null for positions passed. */
  row: AuditEventRow | null;
}

/** The steps of a batch's events (in batch order) for a filter's verdict on each. */
export function tailSteps<E extends { month: number; seq: number | null; row: AuditEventRow }>(
  events: readonly E[],
  accepts: (e: E) => boolean,
): TailStep[] {
  const steps: TailStep[] = [];
  let run: TailStep | undefined;
  for (const e of events) {
    if (accepts(e)) {
      run = undefined;
      steps.push({ month: e.month, first: e.seq, last: e.seq, row: e.row });
    } else if (run && run.month === e.month && run.last !== null && e.seq === run.last + 1) {
      run.last = e.seq;
    } else {
      run = { month: e.month, first: e.seq, last: e.seq, row: null };
      steps.push(run);
    }
  }
  return steps;
}

/** An event delivered by the tail, with the position a subscriber resumes from after it. */
export class TailEventAdded {
  constructor(
    readonly row: AuditEventRow,
    /** The position before this event's month moved (shared by the events of one step). */
    private readonly base: TailPosition,
    private readonly month: number,
    private readonly seq: number,
  ) {}

  /** Everything up to and including this event was delivered (or is not the filter's). */
  get position(): TailPosition {
    return new Map(this.base).set(this.month, this.seq);
  }
}

/** The ready marker of a tail: also the position it starts from, to resume from before any event. */
export class TailReady extends SubscriptionReady {
  constructor(
    ready: SubscriptionReady,
    readonly position: TailPosition,
  ) {
    super(ready.instanceId, ready.subscribedAt);
  }
}

/** A read of a month's chain still to do: up to `through`, or to the head read first when null. */
/** A read of a month's chain still to do: up to `through`, or to the head read first when null. */
type Task =
  | { kind: 'replay' }
  | { kind: 'read'; month: number; through: number | null }
  | { kind: 'deliver'; step: TailStep & { first: number; last: number } };

/**
 * A gap-free live tail: every event stored after a position, then every event as it is stored,
 * each once, in chain order within each month.
 *
 * Why it is written here: no library knows this service's chains. The bus (`source`) delivers
 * the events of each batch stored on any instance after the subscription is registered (as
 * steps, see TailStep); the
 * chains say what a batch's events are relative to everything else stored, because a month's
 * positions are taken under its chain lock and so follow commit order. The tail keeps, per
 * month, the last position it has passed (delivered, or not the filter's), and:
 * - once registered (the source's ready marker), reads from the database every position between
 *   the start and the chain heads as they are then — events committed before the subscription
 *   existed, or while it was being registered;
 * - for each live batch, skips the positions it has passed already (read by the replay, or
 *   delivered by another batch), and reads from the database any positions between where it is
 *   and the batch's first one: a batch committed earlier whose message is still on its way from
 *   another instance (it is committed, so it is readable) — its message is skipped when it comes;
 * - for a batch whose positions the writer could not give, reads the month up to its head.
 *
 * Each step is done when the subscriber asks for the next message, so a slow reader holds at
 * most one window of rows. `return()` ends it at once and ends the source.
 */
export class LiveTail implements AsyncIterableIterator<LiveItem<TailEventAdded>> {
  private readonly out: LiveItem<TailEventAdded>[] = [];
  private readonly tasks: Task[] = [];
  private readonly passed: Map<number, number>;
  /** A frozen copy of `passed`, shared by the events delivered until it moves again. */
  private frozen: TailPosition | undefined;
  private ended = false;

  constructor(
    private readonly source: AsyncIterator<LiveItem<TailStep>>,
    private readonly store: TailStore,
    start: TailPosition,
    /**
     * Positions read per statement (a window of positions, see AuditEventReader.chainPage). The
     * rows of one window wait for the subscriber outside SUBSCRIPTION_QUEUE_MAX_BYTES, so it is
     * small: at most this many rows per subscription that is replaying.
     */
    private readonly window = 100,
  ) {
    this.passed = new Map(start);
  }

  async next(): Promise<IteratorResult<LiveItem<TailEventAdded>>> {
    for (;;) {
      if (this.ended) return { value: undefined, done: true };
      const item = this.out.shift();
      if (item !== undefined) return { value: item, done: false };
      const task = this.tasks[0];
      if (task) {
        await this.work(task);
        continue;
      }
      const r = await this.source.next();
      if (r.done) {
        this.ended = true;
        continue;
      }
      this.take(r.value);
    }
  }

  async return(): Promise<IteratorResult<LiveItem<TailEventAdded>>> {
    this.ended = true;
    this.out.length = 0;
    this.tasks.length = 0;
    await this.source.return?.();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** Where the tail is: everything up to it was delivered or is not the filter's. */
  get position(): TailPosition {
    this.frozen ??= new Map(this.passed);
    return this.frozen;
  }

  private take(item: LiveItem<TailStep>): void {
    if (item instanceof SubscriptionReady) {
      this.out.push(new TailReady(item, this.position));
      this.tasks.push({ kind: 'replay' });
      return;
    }
    if (item instanceof SubscriptionInterruptedError) {
      this.out.push(item);
      return;
    }
    const { month, first, last } = item;
    if (first === null || last === null) {
      // Committed before it was published: the month's head covers it.
      this.tasks.push({ kind: 'read', month, through: null });
      return;
    }
    // Anything between where the tail is and this step was committed before it.
    this.tasks.push({ kind: 'read', month, through: first - 1 });
    this.tasks.push({ kind: 'deliver', step: { ...item, first, last } });
  }

  private async work(task: Task): Promise<void> {
    if (task.kind === 'replay') {
      this.tasks.shift();
      const heads = await this.store.heads();
      const reads: Task[] = [...heads]
        .filter(([month, head]) => head > this.at(month))
        .sort(([a], [b]) => a - b)
        .map(([month, head]) => ({ kind: 'read', month, through: head }));
      this.tasks.unshift(...reads);
      return;
    }
    if (task.kind === 'deliver') {
      this.tasks.shift();
      const { month, first, last, row } = task.step;
      const at = this.at(month);
      if (last <= at) return; // read already, or delivered by an earlier step
      if (row && first > at) this.out.push(new TailEventAdded(row, this.position, month, last));
      this.passed.set(month, last);
      this.frozen = undefined;
      return;
    }
    if (task.through === null) {
      const head = (await this.store.heads(task.month)).get(task.month) ?? 0;
      task.through = head;
    }
    const from = this.at(task.month);
    if (task.through <= from) {
      this.tasks.shift();
      return;
    }
    const to = Math.min(task.through, from + this.window);
    const rows = await this.store.range(task.month, from, to);
    if (this.ended) return;
    const base = this.position;
    for (const row of rows) {
      if (row.chainSeq === null || row.chainSeq <= from || row.chainSeq > to) continue;
      this.out.push(new TailEventAdded(row, base, task.month, row.chainSeq));
    }
    this.passed.set(task.month, to);
    this.frozen = undefined;
    if (to >= task.through) this.tasks.shift();
  }

  private at(month: number): number {
    return this.passed.get(month) ?? 0;
  }
}
