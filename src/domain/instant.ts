/**
 * The one rule for instants given as text (GraphQL's DateTime, the export's filter): ISO 8601
 * with a time zone and at most millisecond precision, naming a real calendar date and time, in
 * the years PostgreSQL's timestamptz and JavaScript's Date both read the same way.
 */

const ISO_INSTANT =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,3})?(Z|([+-])(\d{2}):(\d{2}))$/;

/**
 * Earliest and latest instants accepted: 0001-01-01 to 9999-12-31 (UTC). Year 0 (1 BC to
 * PostgreSQL), negative years and years past 9999 either fail in SQL or print differently in
 * JavaScript (`+010000-…`), so a cursor, a trailer or a log line would not say what was asked.
 */
const EARLIEST = Date.parse('0001-01-01T00:00:00Z');
const LATEST = Date.parse('9999-12-31T23:59:59.999Z');

const leap = (y: number) => y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const daysIn = (year: number, month: number) =>
  month === 2 && leap(year) ? 29 : (DAYS[month - 1] ?? 0);

export const INSTANT_FORMAT =
  'an ISO 8601 instant with a time zone and at most millisecond precision, e.g. 2026-01-04T13:41:09.005Z';

/** Why an instant cannot be used (outside 0001–9999 UTC, or not a date at all); null if it can. */
export function instantRangeProblem(d: Date): string | null {
  const t = d.getTime();
  if (Number.isNaN(t)) return 'is not a valid date';
  if (t < EARLIEST || t > LATEST) {
    return 'must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z';
  }
  return null;
}

/** The instant a text names, or why it names none (the problem reads after the field's name). */
export function parseInstant(text: unknown): Date | { problem: string } {
  const m = typeof text === 'string' ? ISO_INSTANT.exec(text) : null;
  if (!m) return { problem: `must be ${INSTANT_FORMAT}` };
  const [, y, mo, da, h, mi, s, , , , oh, om] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(da);
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month)) {
    return { problem: `is not a real date (${y}-${mo}-${da})` };
  }
  if (Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) {
    return { problem: `is not a real time of day (${h}:${mi}:${s})` };
  }
  if (oh !== undefined && (Number(oh) > 23 || Number(om) > 59)) {
    return { problem: `has an impossible UTC offset (${oh}:${om})` };
  }
  const d = new Date(text as string);
  const problem = instantRangeProblem(d);
  return problem ? { problem } : d;
}
