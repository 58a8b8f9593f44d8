import { describe, expect, it } from 'vitest';
import { addMonths, monthWindows, type TimeWindow } from '../../src/db/partitions.js';

const month = (y: number, m: number) => Date.UTC(y, m - 1, 1);
const iso = (w: TimeWindow) => [w.from?.toISOString() ?? '-inf', w.to?.toISOString() ?? '+inf'];

/** The months of `months` that overlap window `w`. */
function inside(months: number[], w: TimeWindow): number[] {
  return months.filter(
    (m) =>
      (w.to === undefined || m < w.to.getTime()) &&
      (w.from === undefined || addMonths(new Date(m), 1).getTime() > w.from.getTime()),
  );
}

describe('monthWindows', () => {
  // 20 months with gaps: 2019-01..2019-06, 2021-01..2021-10, 2030-01..2030-04.
  const months = [
    ...Array.from({ length: 6 }, (_, i) => month(2019, i + 1)),
    ...Array.from({ length: 10 }, (_, i) => month(2021, i + 1)),
    ...Array.from({ length: 4 }, (_, i) => month(2030, i + 1)),
  ];

  it('covers the whole range, each window holding at most `size` months, in walk order', () => {
    for (const ascending of [true, false]) {
      for (const size of [1, 3, 6, 7, 100]) {
        const ws = monthWindows(months, {}, size, ascending);
        const inTime = ascending ? ws : [...ws].reverse();
        // Contiguous, open at both ends, disjoint.
        expect(inTime[0]!.from).toBeUndefined();
        expect(inTime.at(-1)!.to).toBeUndefined();
        for (let i = 1; i < inTime.length; i++) {
          expect(inTime[i]!.from!.getTime()).toBe(inTime[i - 1]!.to!.getTime());
        }
        // Every month in exactly one window, at most `size` per window.
        const seen = inTime.flatMap((w) => inside(months, w));
        expect(seen).toEqual(months);
        for (const w of ws) expect(inside(months, w).length).toBeLessThanOrEqual(size);
        expect(ws).toHaveLength(Math.ceil(months.length / size));
        // The walk's first window is full: the page's nearest months.
        expect(inside(months, ws[0]!).length).toBe(Math.min(size, months.length));
      }
    }
  });

  it('starts from the newest months when walking backwards in time', () => {
    const ws = monthWindows(months, {}, 6, false);
    expect(ws.map(iso)).toEqual([
      ['2021-09-01T00:00:00.000Z', '+inf'],
      ['2021-03-01T00:00:00.000Z', '2021-09-01T00:00:00.000Z'],
      ['2019-03-01T00:00:00.000Z', '2021-03-01T00:00:00.000Z'],
      ['-inf', '2019-03-01T00:00:00.000Z'],
    ]);
  });

  it('keeps to the given range, its months counted only when they overlap it', () => {
    const range = { from: new Date(month(2019, 5) + 5), to: new Date(month(2021, 3) + 7) };
    const ws = monthWindows(months, range, 2, true);
    expect(ws.map(iso)).toEqual([
      [range.from.toISOString(), '2021-01-01T00:00:00.000Z'],
      ['2021-01-01T00:00:00.000Z', '2021-03-01T00:00:00.000Z'],
      ['2021-03-01T00:00:00.000Z', range.to.toISOString()],
    ]);
    expect(monthWindows(months, { from: range.to, to: range.to }, 2, true)).toEqual([]);
  });

  it('is one window, the range itself, when no month is known', () => {
    expect(monthWindows([], {}, 6, true)).toEqual([{}]);
    const to = new Date(month(2020, 1));
    expect(monthWindows(months, { from: new Date(month(2019, 7)), to }, 6, false)).toEqual([
      { from: new Date(month(2019, 7)), to },
    ]);
  });
});
