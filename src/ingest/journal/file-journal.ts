import { mkdirSync } from 'node:fs';
import { type FileHandle, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lockDirectory } from '../../db/client.js';
import type { TenantId } from '../../domain/tenant.js';
import { asError, type Logger } from '../../logger.js';
import { writeFileDurably } from '../file-dead-letter-store.js';
import {
  type AtBooks,
  addInto,
  type BookChange,
  type BookTerms,
  type EntryOutcome,
  emptyTerms,
  releaseChange,
  termsOf,
} from './books.js';
import { GroupCommit } from './group-commit.js';
import {
  encodeEntry,
  entryOf,
  type Journal,
  type JournalEntry,
  type RecoveredEntries,
  Writability,
} from './journal.js';

/** Another process holds the journal directory: two writers would replay each other's entries. */
export class JournalInUseError extends Error {
  constructor(dir: string, holder: string) {
    super(
      `the journal in ${dir} is in use by ${holder}; without REDIS_URL one instance owns it: ` +
        'stop that one first, or give this one its own JOURNAL_DIR',
    );
    this.name = 'JournalInUseError';
  }
}

/** An appended entry's line. */
function entryLine(e: JournalEntry): string {
  return `{"a":${encodeEntry(e)}}\n`;
}

/** The books of every tenant at once: the first line of a rewritten file. */
function totalsLine(books: ReadonlyMap<TenantId, BookTerms>): string {
  return `${JSON.stringify({ t: Object.fromEntries(books) })}\n`;
}

/** Rewritten with only what it still holds once the file is this large. */
const COMPACT_BYTES = 64 * 1024 * 1024;
/** Rewritten (to its books alone) once nothing is held and the file is this large. */
const EMPTY_COMPACT_BYTES = 1024 * 1024;

/** A release the file did not take is tried again after this long (while the journal is open). */
const RELEASE_RETRY_MS = 1_000;

/** A change the file takes after its appends: a group of releases, or a change of the books. */
type Change =
  | { kind: 'release'; id: string; outcome: EntryOutcome; done: AtBooks | undefined }
  | { kind: 'book'; tenant: TenantId; change: BookChange; done: AtBooks | undefined };

/** What the journal knows of an entry it holds: its line, and what its release books. */
interface Held {
  line: string;
  tenant: TenantId;
  events: number;
  booked: boolean;
}

/** What a journal file's lines add up to: the entries it still holds, and the books. */
export interface FoldedJournal {
  held: Map<string, JournalEntry>;
  books: Map<TenantId, BookTerms>;
  /** Lines that could not be read (a torn last line excepted), by number. */
  unreadable: { line: number; err: unknown }[];
}

/**
 * Reads a journal file's text line by line: `{"t":…}` sets the books, `{"a":entry}` holds an
 * entry (and, booked, counts its events as accepted and pending), `{"r":[ids],"o":[outcomes]}`
 * releases entries (booking each one's outcome once), `{"b":[tenant, change]}` changes a
 * tenant's books. A last line without its newline was cut short by a crash, never acknowledged.
 */
export function foldJournal(text: string): FoldedJournal {
  const held = new Map<string, JournalEntry>();
  const books = new Map<TenantId, BookTerms>();
  const unreadable: FoldedJournal['unreadable'] = [];
  const of = (tenant: TenantId) => termsOf(books, tenant);
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    if (line === '') return;
    try {
      const op = JSON.parse(line) as {
        t?: Record<string, BookTerms>;
        a?: unknown;
        r?: string[];
        o?: EntryOutcome[];
        b?: [TenantId, BookChange];
      };
      if (op.t) {
        for (const [tenant, terms] of Object.entries(op.t))
          books.set(tenant as TenantId, { ...terms });
      } else if (op.a !== undefined) {
        const e = entryOf(op.a);
        held.set(e.id, e);
        const n = e.records.length;
        if (e.booked) addInto(of(e.tenant), { accepted: n, pending: n });
      } else if (op.b) {
        addInto(of(op.b[0]), op.b[1]);
      } else {
        (op.r ?? []).forEach((id, j) => {
          const e = held.get(id);
          if (!e) return;
          held.delete(id);
          // A release line of a version without books carries no outcome: taken as stored.
          const n = e.records.length;
          const outcome = op.o?.[j] ?? { stored: n, duplicates: 0, deadLettered: 0 };
          addInto(of(e.tenant), releaseChange(n, e.booked !== false, outcome));
        });
      }
    } catch (err) {
      if (i < lines.length - 1) unreadable.push({ line: i + 1, err });
    }
  });
  return { held, books, unreadable };
}

/**
 * The journal as one append-only file (`<dir>/journal.log`) for an instance without Redis, and
 * the books with it (see foldJournal for its lines): an append's line counts its events in the
 * books, a release's line books its outcome — one line, so the step and its count cannot part.
 * Appends of a moment are one write and one fdatasync; releases and book changes are written
 * without a sync (a release lost in a crash leaves an entry whose settled places recovery skips,
 * and books then: see IngestService.recoverJournal). The file is rewritten — the books' totals
 * first, then what is held — when it grows past COMPACT_BYTES, or past EMPTY_COMPACT_BYTES with
 * nothing held. A line cut short by a crash was never acknowledged, and is skipped.
 */
export class FileJournal implements Journal {
  readonly kind = 'file' as const;
  private readonly path: string;
  private fh: FileHandle | undefined;
  private releaseLock: (() => void) | undefined;
  /** Entries written and not released (their lines are what a rewrite keeps). */
  private readonly live = new Map<string, Held>();
  /** Held entries whose release is on its way (a second release of one books nothing). */
  private readonly releasing = new Set<string>();
  /** Every tenant's books, as the file's lines add up (one instance owns the file). */
  private readonly books = new Map<TenantId, BookTerms>();
  private bytes = 0;
  /** A failed append's part could not be cut off: cut before the next write. */
  private torn = false;
  /** Every file operation, one at a time. */
  private io: Promise<unknown> = Promise.resolve();
  private readonly appends: GroupCommit<JournalEntry>;
  private readonly changes: GroupCommit<Change>;
  private leftovers: JournalEntry[] = [];
  private readonly writable: Writability;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
    lingerMs = 0,
  ) {
    this.path = join(dir, 'journal.log');
    this.writable = new Writability(log, this.path);
    this.appends = new GroupCommit(
      (entries) => this.serial(() => this.writable.track(() => this.write(entries))),
      lingerMs,
    );
    this.changes = new GroupCommit((items) => this.serial(() => this.change(items)), lingerMs);
  }

  async start(): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    this.releaseLock = lockDirectory(this.dir, (holder) => new JournalInUseError(this.dir, holder));
    let text = '';
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const folded = foldJournal(text);
    for (const { line, err } of folded.unreadable) {
      this.log.error({ err: asError(err), line }, 'journal line unreadable; left out');
    }
    for (const [tenant, terms] of folded.books) this.books.set(tenant, terms);
    this.leftovers = [...folded.held.values()];
    for (const e of this.leftovers) this.hold(e);
    // The books and what is still held, alone, durably: the file starts from them.
    await this.rewrite();
  }

  async stop(): Promise<void> {
    await this.appends.idle();
    await this.changes.idle();
    await this.io;
    await this.fh?.close();
    this.fh = undefined;
    this.releaseLock?.();
  }

  get available(): boolean {
    return this.writable.ok && this.fh !== undefined;
  }

  get held(): number {
    return this.live.size;
  }

  async append(entry: JournalEntry): Promise<void> {
    try {
      await this.appends.add(entry);
    } catch (err) {
      throw this.writable.refusal(err);
    }
  }

  release(id: string, outcome: EntryOutcome, written?: AtBooks): BookChange | null {
    const held = this.live.get(id);
    if (!held || this.releasing.has(id)) return null;
    this.releasing.add(id);
    this.releaseSurely(id, outcome, written);
    return releaseChange(held.events, held.booked, outcome);
  }

  /** Writes a release, again after a while when the file refuses it (while the journal is open). */
  private releaseSurely(id: string, outcome: EntryOutcome, done: AtBooks | undefined): void {
    this.changes.add({ kind: 'release', id, outcome, done }).catch((err: unknown) => {
      // Kept, it is replayed at the next start, its settled places skipped: never lost. Until
      // released, the books show its events pending.
      this.log.warn({ err: asError(err), entry: id }, 'journal entry not released yet; kept');
      if (this.fh)
        setTimeout(() => this.releaseSurely(id, outcome, done), RELEASE_RETRY_MS).unref();
    });
  }

  book(tenant: TenantId, change: BookChange, booked?: AtBooks): Promise<void> {
    return this.changes.add({ kind: 'book', tenant, change, done: booked });
  }

  async read(tenant: TenantId, at?: AtBooks): Promise<BookTerms> {
    at?.();
    return { ...(this.books.get(tenant) ?? emptyTerms()) };
  }

  private hold(e: JournalEntry): void {
    this.live.set(e.id, {
      line: entryLine(e),
      tenant: e.tenant,
      events: e.records.length,
      booked: e.booked !== false,
    });
  }

  async recover(): Promise<RecoveredEntries[]> {
    if (this.leftovers.length === 0) return [];
    const found = [{ from: 'the previous run', entries: this.leftovers }];
    this.leftovers = [];
    return found;
  }

  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.io.then(op, op);
    this.io = run.catch(() => undefined);
    return run;
  }

  private async write(entries: JournalEntry[]): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error('the journal is closed');
    const text = entries.map(entryLine).join('');
    await this.appendWhole(fh, text);
    await fh.datasync();
    this.bytes += Buffer.byteLength(text);
    for (const e of entries) {
      this.hold(e);
      const n = e.records.length;
      addInto(termsOf(this.books, e.tenant), { accepted: n, pending: n });
    }
  }

  /** Writes a group of releases and book changes as lines (no sync), then counts them. */
  private async change(items: Change[]): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error('the journal is closed');
    const released = new Map<string, [Held, EntryOutcome]>();
    const booked: [TenantId, BookChange][] = [];
    for (const c of items) {
      if (c.kind === 'book') booked.push([c.tenant, c.change]);
      else {
        const held = this.live.get(c.id);
        if (held) released.set(c.id, [held, c.outcome]);
      }
    }
    let text = booked.map((b) => `${JSON.stringify({ b })}\n`).join('');
    if (released.size > 0) {
      const r = [...released.keys()];
      const o = [...released.values()].map(([, outcome]) => outcome);
      text += `${JSON.stringify({ r, o })}\n`;
    }
    // Not written, releases stay held: replayed after a crash, exactly once either way.
    if (text !== '') await this.appendWhole(fh, text);
    this.bytes += Buffer.byteLength(text);
    for (const [tenant, change] of booked) addInto(termsOf(this.books, tenant), change);
    for (const [id, [held, outcome]] of released) {
      this.live.delete(id);
      this.releasing.delete(id);
      addInto(termsOf(this.books, held.tenant), releaseChange(held.events, held.booked, outcome));
    }
    for (const c of items) c.done?.();
    if (this.bytes > COMPACT_BYTES || (this.live.size === 0 && this.bytes > EMPTY_COMPACT_BYTES)) {
      // The changes are written and counted: a rewrite that fails leaves the file as it was.
      await this.rewrite().catch((err: unknown) => {
        this.log.warn({ err: asError(err) }, 'journal not compacted; tried again later');
      });
    }
  }

  /**
   * Appends all of `text`, or throws with the file as it was. A write can be short (the disk
   * filling up, a file-size limit) without failing, so it is repeated until done; and when it
   * fails part-way, the part written is cut off again — left there, it would glue onto the
   * next line and make that acknowledged entry unreadable at recovery.
   */
  private async appendWhole(fh: FileHandle, text: string): Promise<void> {
    const buf = Buffer.from(text);
    if (this.torn) {
      await fh.truncate(this.bytes);
      this.torn = false;
    }
    try {
      for (let off = 0; off < buf.length; ) {
        const { bytesWritten } = await fh.write(buf, off, buf.length - off);
        if (bytesWritten === 0) throw new Error('the journal file takes no more bytes');
        off += bytesWritten;
      }
    } catch (err) {
      await fh.truncate(this.bytes).catch((cut: unknown) => {
        this.log.error({ err: asError(cut) }, 'journal: a torn append could not be cut off');
        this.torn = true;
      });
      throw err;
    }
  }

  /**
   * The file again with only the books and what is held, swapped in whole (a crash keeps the old
   * or the new).
   */
  private async rewrite(): Promise<void> {
    // The held entries' lines count their own events again when the file is read.
    const before = new Map([...this.books].map(([tenant, terms]) => [tenant, { ...terms }]));
    for (const h of this.live.values()) {
      if (h.booked) addInto(before.get(h.tenant)!, { accepted: -h.events, pending: -h.events });
    }
    const text = totalsLine(before) + [...this.live.values()].map((h) => h.line).join('');
    await this.fh?.close();
    this.fh = undefined;
    try {
      await writeFileDurably(this.path, text);
      this.bytes = Buffer.byteLength(text);
      this.torn = false;
    } finally {
      // The new file, or (the write failed) the old one as it was.
      this.fh = await open(this.path, 'a');
    }
  }
}
