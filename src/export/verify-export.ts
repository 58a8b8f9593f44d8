import { createPublicKey, type KeyObject } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import {
  type ChainedRow,
  ChainHasher,
  canonicalEvent,
  chainMonth,
  genesisHash,
} from '../domain/chain.js';
import {
  type Checkpoint,
  type CheckpointJson,
  checkpointFromJson,
  keyIdOf,
  type TrustedKey,
  type TrustedKeyJson,
  trustedKeyFromJson,
  untrustedBecause,
  vouchedKeys,
} from '../domain/checkpoint.js';
import { ValidationError } from '../domain/errors.js';
import { tenantIdProblem } from '../domain/tenant.js';
import {
  CSV_COLUMNS,
  CSV_ERROR_PREFIX,
  CSV_TRAILER_PREFIX,
  chainedRowFromExport,
  csvRecordComplete,
  EXPORT_FORMAT_VERSION,
  ExportFormatError,
  type ExportMonthSummary,
  type ExportTrailer,
  exportedEventFromCsv,
  parseCsvRecord,
} from './format.js';
import { filterFromValue, isEmptyFilter } from './params.js';

/**
 * Offline verification of an export (JSON Lines or CSV, plain or gzip), in one pass and constant
 * memory: the file is read as a stream, line by line, and only a few figures per month are kept.
 *
 * While reading, every event's hash is recomputed from its own fields (`link(prevHash,
 * canonical JSON)`, the service's ChainHasher and canonicalEvent), positions must increase within
 * a month, and where two positions are consecutive the later event's prevHash must be the
 * earlier one's hash. What depends on the trailer — the tenant (for genesis hashes), whether the
 * export is complete, the checkpoints — is known only at the end of the stream, so those checks
 * are made on the figures kept per month, which for a complete export amounts to exactly what
 * MonthChainWalker checks over the database: each month starts at position 1 on its genesis
 * hash, has no gap, and ends on the position and hash its signed checkpoint vouches for.
 *
 * The first problem is reported with its line, event, and what was expected and found.
 */

export type ExportProblemKind =
  /** Not an export, or a line that cannot be read (bad JSON, a missing field, bad gzip). */
  | 'FORMAT'
  /** Months or positions not in chain order. */
  | 'ORDER'
  /** An event without a hash (written with CHAIN_HASHING=off): nothing vouches for it. */
  | 'UNHASHED'
  /** An event whose content does not match its hash. */
  | 'HASH_MISMATCH'
  /** An event that does not follow the one before it (or the month's genesis hash). */
  | 'PREVIOUS_HASH_MISMATCH'
  /** A complete export that misses positions. */
  | 'SEQUENCE_GAP'
  /** The file has no trailer: cut short, or not an export. */
  | 'MISSING_TRAILER'
  /** The trailer's figures disagree with the events. */
  | 'TRAILER_MISMATCH'
  /** A checkpoint whose signature does not hold with the trusted key. */
  | 'BAD_SIGNATURE'
  /** The event at a checkpoint's position has another hash than the checkpoint vouches for. */
  | 'CHECKPOINT_MISMATCH'
  /** A complete export that ends before the position its checkpoint vouches for. */
  | 'TRUNCATED'
  /** An event past the snapshot's position (the checkpoint does not cover it). */
  | 'BEYOND_CHECKPOINT'
  /** A complete export month that no checkpoint covers. */
  | 'UNCOVERED'
  /** The chain is keyed (HMAC) and no secret was given — or a secret was given for a plain chain. */
  | 'KEY_REQUIRED';

export interface ExportProblem {
  kind: ExportProblemKind;
  /** 1-based line of the file (the first line of a multi-line CSV record); null: the whole file. */
  line: number | null;
  eventId: string | null;
  /** The chain month (ISO 8601) and position concerned, when known. */
  month: string | null;
  seq: number | null;
  expected: string | null;
  found: string | null;
  message: string;
}

export interface VerifiedMonth {
  month: string;
  count: number;
  firstSeq: number | null;
  lastSeq: number | null;
  lastHash: string | null;
  /** Position of the covering checkpoint whose signature held; null when none. */
  checkpointSeq: number | null;
}

export interface ExportVerification {
  ok: boolean;
  format: 'jsonl' | 'csv' | null;
  gzip: boolean;
  /** Event rows read. */
  rows: number;
  /** Physical lines read. */
  lines: number;
  tenant: string | null;
  complete: boolean | null;
  months: VerifiedMonth[];
  checkpointsVerified: number;
  /** The key checkpoints were verified with (the newest, when several were), and where the keys came from. */
  keyId: string | null;
  /** Every key that verified at least one checkpoint, oldest first. */
  keyIds: string[];
  keySource: 'given' | 'export' | null;
  warnings: string[];
  problem: ExportProblem | null;
}

export interface VerifyExportOptions {
  /**
   * Trusted checkpoint public keys (KeyObject or SPKI PEM), for any time. Without these or
   * `keys`, the keys the file itself names are used (with a warning).
   */
  publicKey?: KeyObject | string | (KeyObject | string)[];
  /** Trusted checkpoint keys with their periods (GraphQL auditChainKeys, npm run deployment -- keys). */
  keys?: TrustedKeyJson[];
  /** CHAIN_HMAC_SECRET of the deployment, for keyed chains. */
  hmacSecret?: string;
  /** Called every `progressEvery` rows (default 100,000). */
  onProgress?: (rows: number) => void;
  progressEvery?: number;
}

/** Longest physical line accepted: an event is far below (data ≤ 256 KiB); this bounds memory. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;

interface MonthState {
  month: Date;
  count: number;
  firstSeq: number;
  firstPrevHash: Buffer;
  firstLine: number;
  firstId: string;
  lastSeq: number;
  lastHash: Buffer;
  lastLine: number;
  lastId: string;
  /** First missing position (reported only if the export claims to be complete). */
  gap: { line: number; id: string; expected: number; found: number } | null;
}

/** Splits bytes into lines on LF only (CSV cells may hold CR), bounding a line's length. */
class LineSplitter {
  private rest: Buffer[] = [];
  private restBytes = 0;

  constructor(private readonly onLine: (text: string) => void) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      if (this.restBytes > 0) {
        this.rest.push(chunk.subarray(start, nl));
        const text = Buffer.concat(this.rest).toString('utf8');
        this.rest = [];
        this.restBytes = 0;
        this.onLine(text);
      } else {
        this.onLine(chunk.toString('utf8', start, nl));
      }
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.rest.push(chunk.subarray(start));
      this.restBytes += chunk.length - start;
      if (this.restBytes > MAX_LINE_BYTES) {
        throw new ExportFormatError('(line)', `a line longer than ${MAX_LINE_BYTES} bytes`);
      }
    }
  }

  end(): void {
    if (this.restBytes > 0) {
      const text = Buffer.concat(this.rest).toString('utf8');
      this.rest = [];
      this.restBytes = 0;
      this.onLine(text);
    }
  }
}

/** The verifier's state over one file; `line()` per physical line, then `finish()`. */
class ExportVerifier {
  private readonly hasher: ChainHasher;
  private readonly result: ExportVerification = {
    ok: false,
    format: null,
    gzip: false,
    rows: 0,
    lines: 0,
    tenant: null,
    complete: null,
    months: [],
    checkpointsVerified: 0,
    keyId: null,
    keyIds: [],
    keySource: null,
    warnings: [],
    problem: null,
  };
  private readonly months: MonthState[] = [];
  private current: MonthState | null = null;
  private firstHash: Buffer | null = null;
  private lastHash: Buffer | null = null;
  /** The trailer (parsed JSON) once its line was read; `stopped` after an unreadable start. */
  private trailer: unknown = undefined;
  private trailerLine = 0;
  private stopped = false;
  /** A CSV record spanning lines: its text so far and its first line. */
  private pending = '';
  private pendingLine = 0;

  constructor(private readonly opts: VerifyExportOptions) {
    this.hasher = new ChainHasher(opts.hmacSecret);
  }

  set gzip(v: boolean) {
    this.result.gzip = v;
  }

  private fail(p: Partial<ExportProblem> & Pick<ExportProblem, 'kind' | 'message'>): void {
    this.result.problem ??= problemOf(null, p);
  }

  /** Fails with a problem found while reading lines. */
  failAt(line: number | null, kind: ExportProblemKind, message: string): void {
    this.fail({ kind, line, message });
  }

  line(text: string): void {
    const n = ++this.result.lines;
    if (n === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    if (this.stopped) return;
    if (this.trailerLine > 0) {
      if (text.trim() !== '') {
        this.fail({ kind: 'FORMAT', line: n, message: 'content after the trailer line' });
      }
      return;
    }
    if (this.result.format === null) {
      if (text.trim() === '') return;
      if (text.startsWith('{')) this.result.format = 'jsonl';
      else if (text === CSV_COLUMNS.join(',')) {
        this.result.format = 'csv';
        return;
      } else {
        this.fail({
          kind: 'FORMAT',
          line: n,
          message: 'not an auditgraph export: expected a JSON object or the CSV header',
        });
        this.stopped = true;
        return;
      }
    }
    if (this.result.format === 'jsonl') this.jsonlLine(text, n);
    else this.csvLine(text, n);
  }

  private jsonlLine(text: string, n: number): void {
    if (text === '') return;
    // After a problem, only the trailer is still of interest (it tells a keyed chain apart).
    if (this.result.problem && !text.startsWith('{"trailer"')) return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.fail({ kind: 'FORMAT', line: n, message: 'not valid JSON' });
      return;
    }
    if (value !== null && typeof value === 'object' && Object.hasOwn(value, 'trailer')) {
      this.trailer = (value as { trailer: unknown }).trailer;
      this.trailerLine = n;
      return;
    }
    if (value !== null && typeof value === 'object' && Object.hasOwn(value, 'error')) {
      this.failedOnServer((value as { error: unknown }).error, n);
      return;
    }
    this.row(value, n);
  }

  /** The service's line saying the export failed while it was sent: nothing after it counts. */
  private failedOnServer(error: unknown, n: number): void {
    const message = (error as { message?: unknown } | null)?.message;
    this.fail({
      kind: 'MISSING_TRAILER',
      line: n,
      message: `the export failed on the server while it was sent${typeof message === 'string' ? `: ${message}` : ''}; it is incomplete`,
    });
    this.stopped = true;
  }

  private csvLine(text: string, n: number): void {
    if (this.pending === '' && text.startsWith(CSV_ERROR_PREFIX)) {
      let error: unknown = null;
      try {
        error = JSON.parse(text.slice(CSV_ERROR_PREFIX.length));
      } catch {}
      this.failedOnServer(error, n);
      return;
    }
    if (this.pending === '') {
      if (text.startsWith(CSV_TRAILER_PREFIX)) {
        this.trailerLine = n;
        try {
          this.trailer = JSON.parse(text.slice(CSV_TRAILER_PREFIX.length));
        } catch {
          this.fail({ kind: 'FORMAT', line: n, message: 'trailer: not valid JSON' });
        }
        return;
      }
      if (text === '') return;
      this.pendingLine = n;
      this.pending = text;
    } else {
      this.pending += `\n${text}`;
      if (this.pending.length > MAX_LINE_BYTES) {
        throw new ExportFormatError('(csv)', `a record longer than ${MAX_LINE_BYTES} bytes`);
      }
    }
    if (!csvRecordComplete(this.pending)) return;
    const record = this.pending;
    this.pending = '';
    if (this.result.problem) return;
    let value: Record<string, unknown>;
    try {
      value = exportedEventFromCsv(parseCsvRecord(record));
    } catch (err) {
      this.fail({ kind: 'FORMAT', line: this.pendingLine, message: (err as Error).message });
      return;
    }
    this.row(value, this.pendingLine);
  }

  /** One event: its own hash, its place in the month, its link to the event before it. */
  private row(value: unknown, n: number): void {
    const id =
      value && typeof value === 'object' && typeof (value as { id?: unknown }).id === 'string'
        ? (value as { id: string }).id
        : null;
    let row: ChainedRow;
    try {
      row = chainedRowFromExport(value);
    } catch (err) {
      this.fail({ kind: 'FORMAT', line: n, eventId: id, message: (err as Error).message });
      return;
    }
    const month = chainMonth(row.occurredAt);
    const at = { line: n, eventId: row.id, month: month.toISOString(), seq: row.chainSeq };
    if (row.chainSeq === null || row.prevHash === null || row.hash === null) {
      this.fail({
        ...at,
        kind: 'UNHASHED',
        message: 'the event has no chain position or hash (written with CHAIN_HASHING=off)',
      });
      return;
    }
    let cur = this.current;
    if (!cur || cur.month.getTime() !== month.getTime()) {
      if (cur && month.getTime() < cur.month.getTime()) {
        this.fail({
          ...at,
          kind: 'ORDER',
          expected: `a month from ${cur.month.toISOString()} on`,
          found: month.toISOString(),
          message: 'months must come in ascending order, each once',
        });
        return;
      }
      cur = {
        month,
        count: 0,
        firstSeq: row.chainSeq,
        firstPrevHash: row.prevHash,
        firstLine: n,
        firstId: row.id,
        lastSeq: 0,
        lastHash: row.prevHash,
        lastLine: n,
        lastId: row.id,
        gap: null,
      };
      this.months.push(cur);
      this.current = cur;
    } else if (row.chainSeq <= cur.lastSeq) {
      this.fail({
        ...at,
        kind: 'ORDER',
        expected: `a position after ${cur.lastSeq}`,
        found: String(row.chainSeq),
        message: 'positions must increase within a month',
      });
      return;
    }
    const expected = this.hasher.link(row.prevHash, canonicalEvent(row));
    if (!expected.equals(row.hash)) {
      this.fail({
        ...at,
        kind: 'HASH_MISMATCH',
        expected: expected.toString('hex'),
        found: row.hash.toString('hex'),
        message: 'the event’s content does not match its hash: it was changed after it was written',
      });
      return;
    }
    if (cur.count > 0) {
      if (row.chainSeq === cur.lastSeq + 1) {
        if (!row.prevHash.equals(cur.lastHash)) {
          this.fail({
            ...at,
            kind: 'PREVIOUS_HASH_MISMATCH',
            expected: cur.lastHash.toString('hex'),
            found: row.prevHash.toString('hex'),
            message: `prevHash is not the hash of the event at position ${cur.lastSeq} (line ${cur.lastLine})`,
          });
          return;
        }
      } else {
        cur.gap ??= { line: n, id: row.id, expected: cur.lastSeq + 1, found: row.chainSeq };
      }
    }
    cur.count++;
    cur.lastSeq = row.chainSeq;
    cur.lastHash = row.hash;
    cur.lastLine = n;
    cur.lastId = row.id;
    this.firstHash ??= row.hash;
    this.lastHash = row.hash;
    const rows = ++this.result.rows;
    const every = this.opts.progressEvery ?? 100_000;
    if (this.opts.onProgress && rows % every === 0) this.opts.onProgress(rows);
  }

  /** The checks that need the trailer; returns the result. */
  finish(): ExportVerification {
    const r = this.result;
    if (this.pending !== '' && !r.problem) {
      this.fail({
        kind: 'FORMAT',
        line: this.pendingLine,
        message: 'the file ends inside a quoted CSV cell',
      });
    }
    r.months = this.months.map((m) => ({
      month: m.month.toISOString(),
      count: m.count,
      firstSeq: m.count ? m.firstSeq : null,
      lastSeq: m.count ? m.lastSeq : null,
      lastHash: m.count ? m.lastHash.toString('hex') : null,
      checkpointSeq: null,
    }));
    if (this.trailerLine === 0) {
      this.fail({
        kind: 'MISSING_TRAILER',
        line: null,
        message:
          'the file has no trailer line: the export was cut short (or failed while it was written)',
      });
      return this.done();
    }
    let trailer: ExportTrailer;
    try {
      trailer = parseTrailer(this.trailer);
    } catch (err) {
      this.fail({
        kind: 'FORMAT',
        line: this.trailerLine,
        message: `trailer: ${(err as Error).message}`,
      });
      return this.done();
    }
    r.tenant = trailer.tenant;
    r.complete = trailer.complete;
    // A hash that does not match may only mean the wrong hashing mode: say that first.
    if (trailer.hmac !== this.hasher.keyed) {
      const hashProblem = !r.problem || r.problem.kind === 'HASH_MISMATCH';
      if (hashProblem) {
        r.problem = null;
        this.fail({
          kind: 'KEY_REQUIRED',
          line: this.trailerLine,
          expected: trailer.hmac ? 'HMAC-SHA-256 (CHAIN_HMAC_SECRET set)' : 'SHA-256',
          found: this.hasher.keyed ? 'HMAC-SHA-256' : 'SHA-256',
          message: trailer.hmac
            ? 'the chain is keyed (HMAC-SHA-256): set CHAIN_HMAC_SECRET to the deployment’s secret'
            : 'the chain is not keyed: unset CHAIN_HMAC_SECRET',
        });
      }
    }
    if (r.problem) return this.done();
    this.checkTrailer(trailer);
    return this.done();
  }

  /**
   * The trailer against the events: its totals, its months, its checkpoints (signatures with
   * the trusted key) and each month's chain against genesis and its checkpoint. Of the problems
   * found, the one on the earliest line is the result's.
   */
  private checkTrailer(t: ExportTrailer): void {
    const r = this.result;
    const problems = new TrailerProblems(this.trailerLine);
    this.checkTotals(t, problems);
    const summaries = monthSummaries(t, problems);
    const observed = new Map(this.months.map((m) => [m.month.toISOString(), m]));
    checkMonthFigures(summaries, observed, problems);
    const trusted = this.trustedKeys(t, problems);
    const covering = this.checkCheckpoints(t, trusted, summaries, problems);

    // The chains themselves, against genesis and the checkpoints.
    for (const [key, s] of summaries) {
      const m = observed.get(key);
      const c = covering.get(key) ?? null;
      if (m) checkChainEnds(t, key, s, m, problems);
      if (t.complete && !checkCompleteMonth(key, m, c, problems)) continue;
      if (c && m && m.lastSeq === c.seq && !m.lastHash.equals(c.hash)) {
        problems.add({
          kind: 'CHECKPOINT_MISMATCH',
          line: m.lastLine,
          eventId: m.lastId,
          month: key,
          seq: c.seq,
          expected: c.hash.toString('hex'),
          found: m.lastHash.toString('hex'),
          message: `the checkpoint of ${key.slice(0, 7)} vouches for another hash at position ${c.seq}`,
        });
      }
      if (!t.complete && m && !c) {
        r.warnings.push(
          `no valid checkpoint covers ${key}: its events are checked only against each other`,
        );
      }
      const v = r.months.find((x) => x.month === key);
      if (v && c) v.checkpointSeq = c.seq;
    }
    if (!t.complete && !t.hmac && r.rows > 0) {
      r.warnings.push(
        'filtered export: every hash and every link between consecutive positions holds, but an ' +
          'event is vouched for by a checkpoint only through an unbroken chain up to it',
      );
    }
    const first = problems.earliest();
    if (first) this.fail(first);
  }

  /** The whole file's figures: the complete flag against the filter, the count, first and last hash. */
  private checkTotals(t: ExportTrailer, problems: TrailerProblems): void {
    let filterEmpty = true;
    try {
      filterEmpty = isEmptyFilter(filterFromValue(t.filter));
    } catch (err) {
      const why = err instanceof ValidationError ? err.message : String(err);
      problems.add({ kind: 'FORMAT', message: `trailer: filter: ${why}` });
    }
    if (t.complete !== filterEmpty) problems.mismatch('complete flag', filterEmpty, t.complete);
    if (t.count !== this.result.rows) problems.mismatch('count', this.result.rows, t.count);
    const hexOf = (b: Buffer | null) => (b ? b.toString('hex') : null);
    if (t.firstHash !== hexOf(this.firstHash))
      problems.mismatch('firstHash', hexOf(this.firstHash), t.firstHash);
    if (t.lastHash !== hexOf(this.lastHash)) {
      problems.mismatch('lastHash', hexOf(this.lastHash), t.lastHash);
    }
  }

  /**
   * The keys checkpoints are checked with: those given, else (with a warning) those the export
   * names. Null when there are none to use.
   */
  private trustedKeys(t: ExportTrailer, problems: TrailerProblems): TrustedKey[] | null {
    const r = this.result;
    const anyTime = (k: KeyObject | string): TrustedKey => {
      const publicKey = typeof k === 'string' ? createPublicKey(k) : k;
      const publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
      return {
        keyId: keyIdOf(publicKey),
        publicKey,
        publicKeyPem,
        trustedFrom: new Date(0),
        retiredAt: null,
        endorsedBy: null,
        endorsement: null,
        retirementNotice: null,
      };
    };
    // A list with periods is taken from its current (else newest) key back, through the
    // endorsements: that key is the one the caller trusts, and it vouches for the rest.
    const vouched = (list: TrustedKey[], anchor?: string) => {
      const newest = [...list].sort((a, b) => b.trustedFrom.getTime() - a.trustedFrom.getTime());
      const current = list.find((k) => k.retiredAt === null) ?? newest[0];
      const { keys, broken } = vouchedKeys(list, anchor ?? current?.keyId ?? '');
      if (broken)
        r.warnings.push(
          `the key list does not hold: ${broken}; its keys from there back are not trusted`,
        );
      return keys;
    };
    const given = this.opts.publicKey;
    if (given !== undefined || this.opts.keys) {
      r.keySource = 'given';
      return [
        ...(given === undefined ? [] : Array.isArray(given) ? given : [given]).map(anyTime),
        ...(this.opts.keys ? vouched(this.opts.keys.map(trustedKeyFromJson)) : []),
      ];
    }
    if (t.checkpoints.length === 0) return null;
    try {
      const keys = t.keys
        ? vouched(t.keys.map(trustedKeyFromJson), t.keyId)
        : [anyTime(t.publicKeyPem)];
      r.keySource = 'export';
      r.warnings.push(
        'checkpoint signatures were checked with the public keys written in the export itself: ' +
          'this proves the file is consistent, not who made it — pass the deployment’s keys ' +
          '(--keys, or --public-key) to trust it',
      );
      return keys;
    } catch {
      problems.add({ kind: 'FORMAT', message: 'trailer: a key is not an Ed25519 public key' });
      return null;
    }
  }

  /**
   * Checkpoints: the signature with the trusted key, one per month, for this tenant, at the
   * position the trailer's month was exported through. Answers the valid ones by month.
   */
  private checkCheckpoints(
    t: ExportTrailer,
    keys: TrustedKey[] | null,
    summaries: Map<string, ExportMonthSummary>,
    problems: TrailerProblems,
  ): Map<string, Checkpoint> {
    const r = this.result;
    const covering = new Map<string, Checkpoint>();
    for (const [i, j] of t.checkpoints.entries()) {
      const c = checkpointFromJson(j);
      const month = c.month.toISOString();
      const where = { month, seq: c.seq };
      if (covering.has(month)) {
        problems.add({
          ...where,
          kind: 'FORMAT',
          message: `trailer: two checkpoints for month ${month}`,
        });
        continue;
      }
      if (c.tenant !== t.tenant) {
        problems.add({
          ...where,
          kind: 'BAD_SIGNATURE',
          expected: t.tenant,
          found: c.tenant,
          message: `checkpoint ${i} is of another tenant`,
        });
        continue;
      }
      if (!keys) continue;
      const why = untrustedBecause(keys, c);
      if (why) {
        problems.add({
          ...where,
          kind: 'BAD_SIGNATURE',
          found: c.keyId,
          message: `the checkpoint of ${month} (position ${c.seq}) is not vouched for: ${why}`,
        });
        continue;
      }
      if (!r.keyIds.includes(c.keyId)) r.keyIds.push(c.keyId);
      r.checkpointsVerified++;
      covering.set(month, c);
      const s = summaries.get(month);
      if (!s) {
        problems.add({
          ...where,
          kind: 'TRAILER_MISMATCH',
          message: `the trailer lists a checkpoint for ${month} but not the month`,
        });
      } else if (s.throughSeq !== c.seq) {
        problems.mismatch(`throughSeq of ${month}`, c.seq, s.throughSeq, month);
      }
    }
    r.keyId = r.keyIds.at(-1) ?? null;
    return covering;
  }

  private done(): ExportVerification {
    this.result.ok = this.result.problem === null;
    return this.result;
  }
}

/**
 * The problems one trailer check finds; each is at the trailer's line unless it names another.
 */
/** A problem as reported: what `p` says, on `line`, every other field null. */
function problemOf(
  line: number | null,
  p: Partial<ExportProblem> & Pick<ExportProblem, 'kind' | 'message'>,
): ExportProblem {
  return { line, eventId: null, month: null, seq: null, expected: null, found: null, ...p };
}

class TrailerProblems {
  private readonly found: ExportProblem[] = [];

  constructor(private readonly trailerLine: number) {}

  add(p: Partial<ExportProblem> & Pick<ExportProblem, 'kind' | 'message'>): void {
    this.found.push(problemOf(this.trailerLine, p));
  }

  /** One of the trailer's figures (found) disagrees with the events' (expected). */
  mismatch(what: string, expected: unknown, found: unknown, month?: string): void {
    this.add({
      kind: 'TRAILER_MISMATCH',
      month: month ?? null,
      expected: String(expected),
      found: String(found),
      message: `the trailer's ${what} (found) does not match the events (expected)`,
    });
  }

  /** The problem on the earliest line (those about the whole file last), if any. */
  earliest(): ExportProblem | undefined {
    this.found.sort(
      (a, b) => (a.line ?? Number.MAX_SAFE_INTEGER) - (b.line ?? Number.MAX_SAFE_INTEGER),
    );
    return this.found[0];
  }
}

/** The trailer's months by month, each listed once. */
function monthSummaries(
  t: ExportTrailer,
  problems: TrailerProblems,
): Map<string, ExportMonthSummary> {
  const summaries = new Map<string, ExportMonthSummary>();
  for (const s of t.months) {
    if (summaries.has(s.month))
      problems.add({ kind: 'FORMAT', message: `trailer: month ${s.month} listed twice` });
    summaries.set(s.month, s);
  }
  return summaries;
}

/** Per month: the trailer's figures, and the events' own. */
function checkMonthFigures(
  summaries: Map<string, ExportMonthSummary>,
  observed: Map<string, MonthState>,
  problems: TrailerProblems,
): void {
  for (const [key, m] of observed) {
    const s = summaries.get(key);
    if (!s) {
      problems.add({
        kind: 'TRAILER_MISMATCH',
        line: m.firstLine,
        month: key,
        message: `the trailer does not list month ${key.slice(0, 7)}, which has events`,
      });
      continue;
    }
    if (s.count !== m.count) problems.mismatch(`count of ${key}`, m.count, s.count, key);
    if (s.firstSeq !== m.firstSeq) {
      problems.mismatch(`firstSeq of ${key}`, m.firstSeq, s.firstSeq, key);
    }
    if (s.lastSeq !== m.lastSeq) problems.mismatch(`lastSeq of ${key}`, m.lastSeq, s.lastSeq, key);
    if (s.lastHash !== m.lastHash.toString('hex')) {
      problems.mismatch(`lastHash of ${key}`, m.lastHash.toString('hex'), s.lastHash, key);
    }
  }
  for (const [key, s] of summaries) {
    if (!observed.has(key) && (s.count !== 0 || s.lastSeq !== null)) {
      problems.mismatch(`count of ${key}`, 0, s.count, key);
    }
  }
}

/**
 * A month's exported events at both ends: a month exported from position 1 starts on the
 * tenant's genesis hash, and no event lies past the position the snapshot covers.
 */
function checkChainEnds(
  t: ExportTrailer,
  key: string,
  s: ExportMonthSummary,
  m: MonthState,
  problems: TrailerProblems,
): void {
  if (m.firstSeq === 1) {
    const genesis = genesisHash(t.tenant, new Date(key));
    if (!m.firstPrevHash.equals(genesis)) {
      problems.add({
        kind: 'PREVIOUS_HASH_MISMATCH',
        line: m.firstLine,
        eventId: m.firstId,
        month: key,
        seq: 1,
        expected: genesis.toString('hex'),
        found: m.firstPrevHash.toString('hex'),
        message: `the first event of ${key.slice(0, 7)} does not start on the genesis hash of tenant ${t.tenant}`,
      });
    }
  }
  if (m.lastSeq > s.throughSeq) {
    problems.add({
      kind: 'BEYOND_CHECKPOINT',
      line: m.lastLine,
      eventId: m.lastId,
      month: key,
      seq: m.lastSeq,
      expected: `at most position ${s.throughSeq}`,
      found: String(m.lastSeq),
      message: `an event past the position the snapshot of ${key.slice(0, 7)} covers`,
    });
  }
}

/**
 * A month of a complete export: a valid checkpoint covers it, and its events run from position 1
 * without a gap up to the checkpoint's position. Answers false when the month has no checkpoint
 * or no event, and nothing more can be checked of it.
 */
function checkCompleteMonth(
  key: string,
  m: MonthState | undefined,
  c: Checkpoint | null,
  problems: TrailerProblems,
): boolean {
  if (!c) {
    problems.add({
      kind: 'UNCOVERED',
      month: key,
      message: `no valid checkpoint covers ${key.slice(0, 7)}`,
    });
    return false;
  }
  if (!m) {
    problems.add({
      kind: 'TRUNCATED',
      month: key,
      seq: c.seq,
      expected: `positions 1..${c.seq}`,
      found: 'no event',
      message: `the checkpoint of ${key.slice(0, 7)} vouches for ${c.seq} events, and none was exported`,
    });
    return false;
  }
  if (m.firstSeq !== 1) {
    problems.add({
      kind: 'SEQUENCE_GAP',
      line: m.firstLine,
      eventId: m.firstId,
      month: key,
      seq: m.firstSeq,
      expected: 'position 1',
      found: `position ${m.firstSeq}`,
      message: `${key.slice(0, 7)} does not start at position 1: events are missing`,
    });
  } else if (m.gap) {
    problems.add({
      kind: 'SEQUENCE_GAP',
      line: m.gap.line,
      eventId: m.gap.id,
      month: key,
      seq: m.gap.found,
      expected: `position ${m.gap.expected}`,
      found: `position ${m.gap.found}`,
      message: 'events are missing before this one',
    });
  }
  if (m.lastSeq < c.seq) {
    problems.add({
      kind: 'TRUNCATED',
      line: m.lastLine,
      eventId: m.lastId,
      month: key,
      // The position of the event named (the last one exported), not the checkpoint's.
      seq: m.lastSeq,
      expected: `position ${c.seq}, hash ${c.hash.toString('hex')}`,
      found: `position ${m.lastSeq}, hash ${m.lastHash.toString('hex')}`,
      message:
        `${key.slice(0, 7)} ends at position ${m.lastSeq}, before position ${c.seq} that ` +
        `its checkpoint vouches for: ${c.seq - m.lastSeq} event(s) were removed from its end`,
    });
  }
  return true;
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v);
const isHexOrNull = (v: unknown) =>
  v === null || (typeof v === 'string' && /^[0-9a-f]{64}$/.test(v));
const isCount = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isSeqOrNull = (v: unknown) => v === null || isCount(v);

/** The trailer's JSON, its shape checked (a wrong type is a FORMAT problem, not a crash). */
function parseTrailer(t: unknown): ExportTrailer {
  if (!isObj(t)) throw new ExportFormatError('trailer', 'expected an object');
  const need = (ok: boolean, path: string, what: string) => {
    if (!ok) throw new ExportFormatError(path, `expected ${what}`);
  };
  need(t.format === EXPORT_FORMAT_VERSION, 'format', `"${EXPORT_FORMAT_VERSION}"`);
  need(typeof t.tenant === 'string' && tenantIdProblem(t.tenant) === null, 'tenant', 'a tenant id');
  need(typeof t.exportedAt === 'string', 'exportedAt', 'a string');
  need(isObj(t.filter), 'filter', 'an object');
  need(typeof t.complete === 'boolean', 'complete', 'a boolean');
  need(isCount(t.count), 'count', 'a count');
  need(isHexOrNull(t.firstHash), 'firstHash', '64 hex digits or null');
  need(isHexOrNull(t.lastHash), 'lastHash', '64 hex digits or null');
  need(typeof t.publicKeyPem === 'string', 'publicKeyPem', 'a string');
  need(typeof t.keyId === 'string', 'keyId', 'a string');
  need(typeof t.hmac === 'boolean', 'hmac', 'a boolean');
  need(Array.isArray(t.months), 'months', 'a list');
  for (const [i, m] of (t.months as unknown[]).entries()) {
    const p = `months[${i}]`;
    need(isObj(m), p, 'an object');
    const s = m as Record<string, unknown>;
    need(
      typeof s.month === 'string' &&
        !Number.isNaN(new Date(s.month).getTime()) &&
        new Date(s.month).toISOString() === s.month &&
        chainMonth(new Date(s.month)).toISOString() === s.month,
      `${p}.month`,
      'the first instant of a UTC month',
    );
    need(isCount(s.throughSeq), `${p}.throughSeq`, 'a position');
    need(isCount(s.count), `${p}.count`, 'a count');
    need(isSeqOrNull(s.firstSeq), `${p}.firstSeq`, 'a position or null');
    need(isSeqOrNull(s.lastSeq), `${p}.lastSeq`, 'a position or null');
    need(isHexOrNull(s.lastHash), `${p}.lastHash`, '64 hex digits or null');
  }
  need(Array.isArray(t.checkpoints), 'checkpoints', 'a list');
  for (const [i, c] of (t.checkpoints as unknown[]).entries()) {
    const p = `checkpoints[${i}]`;
    need(isObj(c), p, 'an object');
    const j = c as Record<string, unknown>;
    need(typeof j.tenant === 'string', `${p}.tenant`, 'a string');
    need(
      typeof j.month === 'string' && !Number.isNaN(new Date(j.month).getTime()),
      `${p}.month`,
      'an instant',
    );
    need(isCount(j.seq), `${p}.seq`, 'a position');
    need(typeof j.hash === 'string' && /^[0-9a-f]{64}$/.test(j.hash), `${p}.hash`, '64 hex digits');
    need(
      typeof j.signedAt === 'string' && !Number.isNaN(new Date(j.signedAt).getTime()),
      `${p}.signedAt`,
      'an instant',
    );
    need(typeof j.keyId === 'string', `${p}.keyId`, 'a string');
    need(
      typeof j.signature === 'string' && /^[A-Za-z0-9+/]*={0,2}$/.test(j.signature),
      `${p}.signature`,
      'base64',
    );
  }
  if (t.keys !== undefined) {
    need(Array.isArray(t.keys), 'keys', 'a list');
    for (const [i, k] of (t.keys as unknown[]).entries()) {
      const j = (isObj(k) ? k : {}) as Record<string, unknown>;
      need(isObj(k), `keys[${i}]`, 'an object');
      need(typeof j.publicKeyPem === 'string', `keys[${i}].publicKeyPem`, 'a string');
      need(typeof j.trustedFrom === 'string', `keys[${i}].trustedFrom`, 'an instant');
      need(
        j.retiredAt === null || typeof j.retiredAt === 'string',
        `keys[${i}].retiredAt`,
        'an instant or null',
      );
    }
  }
  return t as unknown as ExportTrailer & { checkpoints: CheckpointJson[] };
}

function toBuffer(chunk: Uint8Array | string): Buffer {
  return typeof chunk === 'string'
    ? Buffer.from(chunk, 'utf8')
    : Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk);
}

/** The source's bytes, gunzipped when they start with the gzip magic number. */
async function* decoded(
  source: AsyncIterable<Uint8Array | string>,
  onGzip: () => void,
): AsyncGenerator<Buffer> {
  const it = source[Symbol.asyncIterator]();
  let head = Buffer.alloc(0);
  let ended = false;
  while (head.length < 2) {
    const n = await it.next();
    if (n.done) {
      ended = true;
      break;
    }
    head = Buffer.concat([head, toBuffer(n.value)]);
  }
  async function* all(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    if (ended) return;
    for (;;) {
      const n = await it.next();
      if (n.done) return;
      yield toBuffer(n.value);
    }
  }
  if (head[0] === 0x1f && head[1] === 0x8b) {
    onGzip();
    const gunzip = createGunzip();
    // pipeline destroys gunzip with any error of the source or of inflating, which ends the loop.
    pipeline(Readable.from(all()), gunzip).catch(() => {});
    yield* gunzip as AsyncIterable<Buffer>;
  } else {
    yield* all();
  }
}

/**
 * Verifies an export read from `source` (a file stream, an HTTP response body, any async
 * iterable of bytes), plain or gzip (detected from the first bytes). Never throws for a bad
 * export: the first problem is in the result. Throws only when the source itself fails to read.
 */
export async function verifyExport(
  source: AsyncIterable<Uint8Array | string>,
  opts: VerifyExportOptions = {},
): Promise<ExportVerification> {
  const v = new ExportVerifier(opts);
  const splitter = new LineSplitter((text) => v.line(text));
  try {
    for await (const chunk of decoded(source, () => {
      v.gzip = true;
    })) {
      splitter.push(chunk);
    }
    splitter.end();
  } catch (err) {
    if (err instanceof ExportFormatError) v.failAt(null, 'FORMAT', err.message);
    else if (
      typeof (err as NodeJS.ErrnoException).code === 'string' &&
      (err as NodeJS.ErrnoException).code!.startsWith('Z_')
    ) {
      v.failAt(
        null,
        'FORMAT',
        `the gzip stream is damaged or cut short (${(err as Error).message})`,
      );
    } else throw err;
  }
  return v.finish();
}

/** Verifies an export file (plain or .gz), streaming it from disk. */
export function verifyExportFile(
  path: string,
  opts: VerifyExportOptions = {},
): Promise<ExportVerification> {
  return verifyExport(createReadStream(path, { highWaterMark: 1024 * 1024 }), opts);
}

/** A one-paragraph account of a failed verification, for people (CLI, test messages). */
export function describeProblem(p: ExportProblem): string {
  const where = [
    p.line !== null ? `line ${p.line}` : null,
    p.eventId ? `event ${p.eventId}` : null,
    p.month ? `month ${p.month.slice(0, 7)}` : null,
    p.seq !== null ? `position ${p.seq}` : null,
  ]
    .filter(Boolean)
    .join(', ');
  return [
    `${p.kind}${where ? ` at ${where}` : ''}: ${p.message}`,
    p.expected !== null ? `  expected: ${p.expected}` : null,
    p.found !== null ? `  found:    ${p.found}` : null,
  ]
    .filter(Boolean)
    .join('\n');
}
