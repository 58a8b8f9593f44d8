import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BackpressureError, JournalUnavailableError } from '../../src/domain/errors.js';
import type { AuditEventRecord } from '../../src/domain/event.js';
import type { DeadLetterStore } from '../../src/ingest/dead-letter-queue.js';
import { IngestService } from '../../src/ingest/ingest-service.js';
import {
  type BookChange,
  type EntryOutcome,
  emptyTerms,
  MemoryBooks,
  releaseChange,
} from '../../src/ingest/journal/books.js';
import {
  FileJournal,
  foldJournal,
  JournalInUseError,
} from '../../src/ingest/journal/file-journal.js';
import { GroupCommit } from '../../src/ingest/journal/group-commit.js';
import type { JournalEntry } from '../../src/ingest/journal/journal.js';
import { harness, OPTIONS, records, settle, TENANT, watch } from '../support/pipeline-fakes.js';

/**
 * The journal's rules: the pipeline answers BUFFERED only once the journal has the call, refuses
 * the call whole when it cannot, and releases an entry only when every event of it is settled;
 * appends of a moment share one write; the local file keeps exactly what was not released.
 */

/** A journal whose appends wait until the test answers them. */
class FakeJournal {
  readonly appends: { entry: JournalEntry; ok(): void; fail(err?: unknown): void }[] = [];
  readonly released: string[] = [];
  readonly outcomes: EntryOutcome[] = [];
  append(entry: JournalEntry): Promise<void> {
    return new Promise((resolve, reject) => {
      this.appends.push({
        entry,
        ok: resolve,
        fail: (err = new JournalUnavailableError('redis: connection is closed')) => reject(err),
      });
    });
  }
  /** Releases not yet written: the test writes them (`written`). */
  readonly unwritten: (() => void)[] = [];
  release(id: string, outcome: EntryOutcome, written?: () => void): BookChange | null {
    this.released.push(id);
    this.outcomes.push({ ...outcome });
    if (written) this.unwritten.push(written);
    const events =
      outcome.stored + outcome.duplicates + outcome.deadLettered + (outcome.withdrawn ?? 0);
    return releaseChange(events, true, outcome);
  }
}

/** Books that keep every change, and refuse the first `failures` of them. */
class FakeBooks extends MemoryBooks {
  readonly changes: BookChange[] = [];
  constructor(private failures = 0) {
    super();
  }
  override async book(tenant: typeof TENANT, change: BookChange, booked?: () => void) {
    if (this.failures-- > 0) throw new Error('redis: connection is closed');
    this.changes.push(change);
    await super.book(tenant, change, booked);
  }
}

function journaled(options = {}) {
  const h = harness(options);
  const journal = new FakeJournal();
  h.sink.journal = journal;
  return { h, journal };
}

describe('the pipeline and its journal', () => {
  it('answers BUFFERED only once the journal has the call, and releases it once all its events are stored', async () => {
    const { h, journal } = journaled();
    const call = watch(h.pipeline.accept(TENANT, records(4), 'BUFFERED'));
    await h.settle();
    expect(call.done).toBe(false);
    expect(h.stats()).toMatchObject({ accepted: 0, pending: 0 });
    journal.appends[0]!.ok();
    await h.settle();
    expect(call.value!.map((e) => e.status)).toEqual(Array(4).fill('BUFFERED'));
    expect(h.stats()).toMatchObject({ accepted: 4, pending: 4 });
    // One full batch of 3 is written; the fourth event waits: the entry stays.
    h.sink.writes[0]!.succeed();
    await h.settle();
    expect(journal.released).toEqual([]);
    await h.advance(1_000);
    h.sink.writes[1]!.succeed(['DUPLICATE']);
    await h.settle();
    expect(journal.released).toEqual([journal.appends[0]!.entry.id]);
    // The release says how its events ended: that is what the books count them as.
    expect(journal.outcomes).toEqual([{ stored: 3, duplicates: 1, deadLettered: 0 }]);
  });

  it('refuses the call whole when the journal cannot take it: nothing accepted, nothing written', async () => {
    const { h, journal } = journaled();
    const call = watch(h.pipeline.accept(TENANT, records(3), 'BUFFERED'));
    await h.settle();
    journal.appends[0]!.fail();
    await h.settle();
    expect(call.error).toBeInstanceOf(JournalUnavailableError);
    expect(h.stats()).toMatchObject({ accepted: 0, pending: 0 });
    expect(h.pipeline.bufferBytes).toBe(0);
    await h.advance(5_000);
    expect(h.sink.writes).toHaveLength(0);
  });

  it('does not journal COMMITTED calls nor the service’s own access records', async () => {
    const { h, journal } = journaled();
    const committed = watch(h.pipeline.accept(TENANT, records(1), 'COMMITTED'));
    await h.pipeline.accept(TENANT, records(1), 'BUFFERED', 'read');
    await h.advance(10);
    expect(journal.appends).toHaveLength(0);
    for (const w of h.sink.open) w.succeed();
    await h.settle();
    expect(committed.value![0]!.status).toBe('STORED');
  });

  it('holds a call’s place while its entry is written: a call admitted meanwhile cannot take it', async () => {
    const { h, journal } = journaled(); // bufferCapacity 10
    const first = watch(h.pipeline.accept(TENANT, records(8), 'BUFFERED'));
    await h.settle();
    await expect(h.pipeline.accept(TENANT, records(3), 'BUFFERED')).rejects.toBeInstanceOf(
      BackpressureError,
    );
    journal.appends[0]!.ok();
    await h.settle();
    expect(first.done).toBe(true);
    // Negative control: once the first fails instead, its place is free again.
    const { h: h2, journal: j2 } = journaled();
    const failed = watch(h2.pipeline.accept(TENANT, records(8), 'BUFFERED'));
    await h2.settle();
    j2.appends[0]!.fail();
    await h2.settle();
    expect(failed.error).toBeInstanceOf(JournalUnavailableError);
    const again = watch(h2.pipeline.accept(TENANT, records(3), 'BUFFERED'));
    await h2.settle();
    j2.appends[1]!.ok();
    await h2.settle();
    expect(again.done && !again.error).toBe(true);
  });

  it('adopts a recovered call: accepted and recovered here, written at once, released with the whole call’s outcome once settled', async () => {
    const { h, journal } = journaled();
    const entry = { id: 'entry-1', events: 3, booked: true };
    const before = { stored: 1, duplicates: 0, deadLettered: 0 };
    void h.pipeline.adopt(TENANT, entry, records(2), [1, 2], before);
    await h.settle();
    expect(h.stats()).toMatchObject({ accepted: 2, recovered: 2, pending: 2 });
    // The books have the entry as appended (3 pending); this process knows 1 of them is stored.
    expect(h.stats().unbooked).toMatchObject({ pending: -1, stored: 1, accepted: 0 });
    expect(h.sink.writes.map((w) => w.records.length)).toEqual([2]);
    h.sink.writes[0]!.succeed(['STORED', 'DUPLICATE']);
    await h.settle();
    expect(journal.outcomes).toEqual([{ stored: 2, duplicates: 1, deadLettered: 0 }]);
    expect(h.stats()).toMatchObject({ stored: 1, duplicates: 1, pending: 0 });
    expect(h.stats().unbooked).toMatchObject({ pending: -3, stored: 2, duplicates: 1 });
    journal.unwritten[0]!();
    expect(h.stats().unbooked).toEqual(emptyTerms());
  });

  it('counts a journaled event’s move to its final term at once, not when its whole call is released', async () => {
    const { h, journal } = journaled();
    void h.pipeline.accept(TENANT, records(4), 'BUFFERED');
    await h.settle();
    journal.appends[0]!.ok();
    await h.settle();
    h.sink.writes[0]!.succeed(); // 3 of the 4 (BATCH_SIZE 3)
    await h.settle();
    expect(journal.released).toEqual([]);
    expect(h.stats().unbooked).toMatchObject({ pending: -3, stored: 3 });
    await h.advance(1_000);
    h.sink.writes[1]!.succeed();
    await h.settle();
    // Released, not yet written: the release's change is what the books lack.
    expect(h.stats().unbooked).toMatchObject({ pending: -4, stored: 4, accepted: 0 });
    journal.unwritten[0]!();
    expect(h.stats().unbooked).toEqual(emptyTerms());
  });

  it('gives each journaled event its place in its call to the batch and to a dead letter; others none', async () => {
    const { h, journal } = journaled({ batchSize: 10 });
    void h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    await h.settle();
    journal.appends[0]!.ok();
    await h.settle();
    void h.pipeline.accept(TENANT, records(1), 'COMMITTED');
    // A recovered call keeps the places it had: only what was not settled comes back.
    const old = { id: 'old-entry', events: 8, booked: true };
    const before = { stored: 6, duplicates: 0, deadLettered: 0 };
    void h.pipeline.adopt(TENANT, old, records(2), [3, 7], before);
    await h.settle();
    const id = journal.appends[0]!.entry.id;
    expect(h.sink.writes).toHaveLength(1);
    expect(h.sink.writes[0]!.journal).toEqual([
      { entry: id, position: 0 },
      { entry: id, position: 1 },
      null,
      { entry: 'old-entry', position: 3 },
      { entry: 'old-entry', position: 7 },
    ]);
    h.sink.writes[0]!.succeed(['STORED', 'REJECTED', 'STORED', 'STORED', 'REJECTED']);
    await h.settle();
    expect(h.sink.deadLetters.map((d) => d.journalRefs)).toEqual([
      [
        { entry: id, position: 1 },
        { entry: 'old-entry', position: 7 },
      ],
    ]);
  });

  it('books a call outside the journal once all its events are final, counting it unbooked until then', async () => {
    const { h, journal } = journaled();
    const books = new FakeBooks();
    h.sink.books = books;
    void h.pipeline.accept(TENANT, records(2), 'COMMITTED');
    void h.pipeline.accept(TENANT, records(1), 'BUFFERED');
    await h.settle();
    journal.appends[0]!.ok();
    await h.advance(10);
    expect(h.stats()).toMatchObject({ accepted: 3, pending: 3 });
    expect(h.stats().unbooked).toMatchObject({ accepted: 2, pending: 2, stored: 0 });
    for (const w of h.sink.open) {
      w.succeed((['STORED', 'DUPLICATE', 'STORED'] as const).slice(0, w.records.length));
    }
    await h.advance(2_000);
    for (const w of h.sink.open) w.succeed();
    await h.settle();
    // The journaled call is booked by its release, never by a change of its own.
    expect(books.changes).toEqual([{ accepted: 2, stored: 1, duplicates: 1, deadLettered: 0 }]);
    expect(journal.released).toHaveLength(1);
    for (const written of journal.unwritten) written();
    expect(h.stats()).toMatchObject({ pending: 0, unbooked: emptyTerms() });
  });

  it('keeps a call unbooked (pending for auditStats) while the books refuse it, and books it once they take it', async () => {
    const h = harness();
    const books = new FakeBooks(2);
    h.sink.books = books;
    void h.pipeline.accept(TENANT, records(2), 'COMMITTED');
    await h.advance(10);
    h.sink.open[0]!.succeed();
    await h.settle();
    // Final here, not booked yet: counted unbooked as accepted and stored (no longer pending).
    expect(h.stats()).toMatchObject({ stored: 2, pending: 0 });
    expect(h.stats().unbooked).toMatchObject({ accepted: 2, stored: 2, pending: 0 });
    // Tried again after 250 ms, then 500 ms (real timers: the books are outside the clock).
    await vi.waitFor(() => expect(h.stats().unbooked).toEqual(emptyTerms()), { timeout: 3_000 });
    expect(await books.read(TENANT)).toMatchObject({ accepted: 2, stored: 2, pending: 0 });
  });

  it('without a journal, writes carry no places', async () => {
    const h = harness({ batchSize: 2 });
    void h.pipeline.accept(TENANT, records(2), 'BUFFERED');
    await h.settle();
    expect(h.sink.writes).toHaveLength(1);
    expect(h.sink.writes[0]!.journal).toBeUndefined();
  });
});

describe('IngestService.recoverJournal', () => {
  const a = { id: 'entry-a', tenant: TENANT, records: records(5) };
  const b = { id: 'entry-b', tenant: TENANT, records: records(2) };

  /** A service whose journal holds a and b from a stopped process; `settled` answers look-ups. */
  function recovering(settled: () => Promise<Map<string, Set<number>>>) {
    const released: string[] = [];
    const outcomes = new Map<string, EntryOutcome>();
    const books = new MemoryBooks();
    const journal = {
      kind: 'file' as const,
      available: true,
      held: 2,
      start: async () => undefined,
      stop: async () => undefined,
      append: async () => undefined,
      release: (id: string, o: EntryOutcome) => {
        released.push(id);
        outcomes.set(id, { ...o });
        return null;
      },
      recover: async () => [{ from: 'dead-1', entries: [a, b] }],
      book: (t: typeof TENANT, c: BookChange) => books.book(t, c),
      read: (t: typeof TENANT) => books.read(t),
    };
    const written: { records: readonly unknown[]; journal: unknown }[] = [];
    const writer = {
      write: async (_s: string, _b: string, recs: readonly AuditEventRecord[], refs?: unknown) => {
        written.push({ records: recs, journal: refs });
        return { statuses: recs.map(() => 'STORED' as const), rejections: new Map(), conflicts: 0 };
      },
      settledPositions: settled,
    };
    const queued = { journalRefs: [{ entry: 'entry-a', position: 3 }, null] };
    const deadLetters = { list: async () => [queued] } as unknown as DeadLetterStore;
    const listener = { batchSettled: () => undefined, deadLetter: () => undefined };
    const log = pino({ level: 'silent' });
    const ingest = new IngestService(
      writer,
      deadLetters,
      listener,
      log,
      OPTIONS,
      undefined,
      journal,
    );
    return { ingest, released, written, outcomes };
  }

  it('replays only the places no committed batch settled and no dead letter holds, asking again until the database answers', async () => {
    let lookups = 0;
    const { ingest, released, written, outcomes } = recovering(async () => {
      if (++lookups === 1) throw new Error('connection refused');
      return new Map([
        ['entry-a', new Set([0, 1])],
        ['entry-b', new Set([0, 1])],
      ]);
    });
    expect(await ingest.recoverJournal()).toBe(2);
    expect(lookups).toBe(2);
    // Entry b was settled whole: let go of at once, nothing replayed.
    expect(released).toEqual(['entry-b']);
    await vi.waitFor(() => expect(released).toEqual(['entry-b', 'entry-a']));
    expect(written).toHaveLength(1);
    expect(written[0]!.records).toEqual([a.records[2], a.records[4]]);
    expect(written[0]!.journal).toEqual([
      { entry: 'entry-a', position: 2 },
      { entry: 'entry-a', position: 4 },
    ]);
    expect(ingest.stats(TENANT)).toMatchObject({
      accepted: 2,
      recovered: 2,
      stored: 2,
      duplicates: 0,
    });
    // Each release books the whole call: what the stopped process settled and what came back.
    expect(outcomes.get('entry-b')).toEqual({ stored: 2, duplicates: 0, deadLettered: 0 });
    expect(outcomes.get('entry-a')).toEqual({ stored: 4, duplicates: 0, deadLettered: 1 });
  });

  it('when the database cannot say (four tries, about 2 s), replays the calls whole rather than leave them unseen', async () => {
    let lookups = 0;
    const { ingest, released, written } = recovering(async () => {
      lookups++;
      throw new Error('connection refused');
    });
    expect(await ingest.recoverJournal()).toBe(7);
    expect(lookups).toBe(4);
    await vi.waitFor(() => expect(released.sort()).toEqual(['entry-a', 'entry-b']));
    expect(written.flatMap((w) => w.records)).toHaveLength(7);
    expect(ingest.stats(TENANT)).toMatchObject({ accepted: 7, recovered: 7, pending: 0 });
  });
});

describe('GroupCommit', () => {
  it('writes what arrives while a write is in flight as one next write, and fails a group together', async () => {
    const writes: { items: number[]; ok(): void; fail(): void }[] = [];
    const g = new GroupCommit<number>(
      (items) =>
        new Promise<void>((ok, fail) =>
          writes.push({ items, ok, fail: () => fail(new Error('disk full')) }),
        ),
    );
    const a = watch(g.add(1));
    await settle();
    const b = watch(g.add(2));
    const c = watch(g.add(3));
    await settle();
    expect(writes.map((w) => w.items)).toEqual([[1]]);
    writes[0]!.ok();
    await settle();
    expect(a.done).toBe(true);
    expect(writes.map((w) => w.items)).toEqual([[1], [2, 3]]);
    writes[1]!.fail();
    await settle();
    expect((b.error as Error).message).toBe('disk full');
    expect((c.error as Error).message).toBe('disk full');
  });
});

describe('FileJournal', () => {
  const log = pino({ level: 'silent' });
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const entry = (n: number): JournalEntry => ({ id: `e${n}`, tenant: TENANT, records: records(2) });

  it('keeps exactly what was not released across a restart, and skips a line cut short by a crash', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'journal-unit-'));
    dirs.push(dir);
    const first = new FileJournal(dir, log);
    await first.start();
    await Promise.all([first.append(entry(1)), first.append(entry(2)), first.append(entry(3))]);
    first.release('e2', { stored: 2, duplicates: 0, deadLettered: 0 });
    await first.stop();
    appendFileSync(join(dir, 'journal.log'), '{"a":{"id":"e4","ten'); // a torn append
    const second = new FileJournal(dir, log);
    await second.start();
    const [found] = await second.recover();
    expect(found!.entries.map((e) => e.id).sort()).toEqual(['e1', 'e3']);
    expect(found!.entries[0]!.records[0]!.occurredAt).toBeInstanceOf(Date);
    expect(second.held).toBe(2);
    expect(await second.recover()).toEqual([]);
    second.release('e1', { stored: 2, duplicates: 0, deadLettered: 0 });
    second.release('e3', { stored: 2, duplicates: 0, deadLettered: 0 });
    await second.stop();
    const third = new FileJournal(dir, log);
    await third.start();
    expect(await third.recover()).toEqual([]);
    await third.stop();
  });

  it('keeps the books across restarts: appends count accepted and pending, a release its outcome once, book its change', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'journal-unit-'));
    dirs.push(dir);
    const first = new FileJournal(dir, log);
    await first.start();
    await Promise.all([first.append(entry(1)), first.append(entry(2))]);
    first.release('e1', { stored: 1, duplicates: 1, deadLettered: 0 });
    first.release('e1', { stored: 2, duplicates: 0, deadLettered: 0 }); // a second release: not counted
    await first.book(TENANT, { accepted: 3, stored: 2, deadLettered: 1 });
    await first.stop();
    const expected = { accepted: 7, stored: 3, duplicates: 1, pending: 2, deadLettered: 1 };
    expect(await first.read(TENANT)).toMatchObject(expected);
    // The next start folds the lines; the one after reads the totals line its rewrite began with.
    for (let run = 0; run < 2; run++) {
      const next = new FileJournal(dir, log);
      await next.start();
      expect(await next.read(TENANT)).toMatchObject(expected);
      await next.stop();
    }
    const last = new FileJournal(dir, log);
    await last.start();
    last.release('e2', { stored: 0, duplicates: 0, deadLettered: 2 });
    await last.stop();
    expect(await last.read(TENANT)).toEqual({
      accepted: 7,
      stored: 3,
      duplicates: 1,
      pending: 0,
      deadLettered: 3,
      discarded: 0,
    });
  });

  it('reads a file written before the books: its entries are counted as accepted when released', () => {
    const old = (id: string) => JSON.stringify({ a: { id, tenant: TENANT, records: records(2) } });
    const text = `${old('x')}\n${old('y')}\n${JSON.stringify({ r: ['x'] })}\n`;
    const { held, books } = foldJournal(text);
    expect([...held.keys()]).toEqual(['y']);
    expect(books.get(TENANT)).toMatchObject({ accepted: 2, stored: 2, pending: 0 });
  });

  it('refuses a second owner of the same directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'journal-unit-'));
    dirs.push(dir);
    const owner = new FileJournal(dir, log);
    await owner.start();
    await expect(new FileJournal(dir, log).start()).rejects.toBeInstanceOf(JournalInUseError);
    await owner.stop();
  });
});
