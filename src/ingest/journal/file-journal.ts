import { mkdirSync } from 'node:fs';
import { type FileHandle, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lockDirectory } from '../../db/client.js';
import { asError, type Logger } from '../../logger.js';
import { writeFileDurably } from '../file-dead-letter-store.js';
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

/** Rewritten with only what it still holds once the file is this large. */
const COMPACT_BYTES = 64 * 1024 * 1024;

/**
 * The journal as one append-only file (`<dir>/journal.log`) for an instance without Redis: one
 * line per appended entry (`{"a":…}`) or released group (`{"r":[ids]}`). Appends of a moment are
 * one write and one fdatasync; releases are written without a sync (one lost in a crash leaves an
 * entry whose settled places recovery skips: see IngestService.recoverJournal). The file is emptied whenever
 * nothing is held, and rewritten with what is held when it grows past COMPACT_BYTES. A line cut
 * short by a crash was never acknowledged, and is skipped.
 */
export class FileJournal implements Journal {
  readonly kind = 'file' as const;
  private readonly path: string;
  private fh: FileHandle | undefined;
  private releaseLock: (() => void) | undefined;
  /** Entries written and not released, as their lines (what a rewrite keeps). */
  private readonly live = new Map<string, string>();
  private bytes = 0;
  /** A failed append's part could not be cut off: cut before the next write. */
  private torn = false;
  /** Every file operation, one at a time. */
  private io: Promise<unknown> = Promise.resolve();
  private readonly appends: GroupCommit<JournalEntry>;
  private readonly releases: GroupCommit<string>;
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
    this.releases = new GroupCommit((ids) => this.serial(() => this.remove(ids)), lingerMs);
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
    const held = new Map<string, JournalEntry>();
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      if (line === '') return;
      try {
        const op = JSON.parse(line) as { a?: unknown; r?: string[] };
        if (op.a !== undefined) {
          const e = entryOf(op.a);
          held.set(e.id, e);
        } else for (const id of op.r ?? []) held.delete(id);
      } catch (err) {
        // A last line without its newline was cut short by a crash (and never acknowledged).
        if (i < lines.length - 1) {
          this.log.error({ err: asError(err), line: i + 1 }, 'journal line unreadable; left out');
        }
      }
    });
    this.leftovers = [...held.values()];
    // What is still held, alone, durably: the file starts from it.
    const kept = this.leftovers.map(entryLine);
    await writeFileDurably(this.path, kept.join(''));
    for (const [i, e] of this.leftovers.entries()) this.live.set(e.id, kept[i]!);
    this.bytes = kept.reduce((n, l) => n + Buffer.byteLength(l), 0);
    this.fh = await open(this.path, 'a');
  }

  async stop(): Promise<void> {
    await this.appends.idle();
    await this.releases.idle();
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

  release(id: string): void {
    this.releases.add(id).catch((err: unknown) => {
      this.log.warn({ err: asError(err), entry: id }, 'journal entry not released; kept');
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
    const lines = entries.map(entryLine);
    const text = lines.join('');
    await this.appendWhole(fh, text);
    await fh.datasync();
    this.bytes += Buffer.byteLength(text);
    for (const [i, e] of entries.entries()) this.live.set(e.id, lines[i]!);
  }

  private async remove(ids: string[]): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    const known = ids.filter((id) => this.live.has(id));
    if (known.length === 0) return;
    if (known.length === this.live.size) {
      // Nothing held: the file can start over (what it held is all released).
      await fh.truncate(0);
      for (const id of known) this.live.delete(id);
      this.bytes = 0;
      this.torn = false;
      return;
    }
    // Not written, they stay held: replayed after a crash, exactly once either way.
    const line = `${JSON.stringify({ r: known })}\n`;
    await this.appendWhole(fh, line);
    for (const id of known) this.live.delete(id);
    this.bytes += Buffer.byteLength(line);
    if (this.bytes > COMPACT_BYTES) await this.rewrite();
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

  /** The file again with only what is held, swapped in whole (a crash keeps the old or the new). */
  private async rewrite(): Promise<void> {
    const text = [...this.live.values()].join('');
    await this.fh?.close();
    await writeFileDurably(this.path, text);
    this.fh = await open(this.path, 'a');
    this.bytes = Buffer.byteLength(text);
  }
}
