import { describe, expect, it } from 'vitest';
import { jsonDepth } from '../../src/domain/event.js';

/** An object nested `levels` deep: nest(1) = {}, nest(2) = {"a":{}}. */
function nest(levels: number): Record<string, unknown> {
  let v: Record<string, unknown> = {};
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
}

describe('jsonDepth', () => {
  it('counts a scalar as 0 and each object or array level as 1', () => {
    expect(jsonDepth(null, 100)).toBe(0);
    expect(jsonDepth(7, 100)).toBe(0);
    expect(jsonDepth('s', 100)).toBe(0);
    expect(jsonDepth({}, 100)).toBe(1);
    expect(jsonDepth([], 100)).toBe(1);
    expect(jsonDepth({ a: 1 }, 100)).toBe(1);
    expect(jsonDepth({ a: {} }, 100)).toBe(2);
    expect(jsonDepth([[[]]], 100)).toBe(3);
    expect(jsonDepth({ a: [{ b: [1] }] }, 100)).toBe(4);
  });

  it('takes the deepest branch, wherever it is among siblings', () => {
    expect(jsonDepth({ a: 1, b: { c: { d: {} } }, e: {} }, 100)).toBe(4);
    expect(jsonDepth([1, 2, [3, [4]]], 100)).toBe(3);
  });

  it('measures nest(n) as n, so the limit of 10 accepts 10 levels and rejects 11', () => {
    expect(jsonDepth(nest(10), 11)).toBe(10);
    expect(jsonDepth(nest(11), 11)).toBeGreaterThan(10);
  });

  it('reports more than the limit for a too-deep value, even when it stops walking early', () => {
    expect(jsonDepth(nest(50), 11)).toBeGreaterThan(10);
    expect(jsonDepth({ x: nest(3), y: nest(40) }, 11)).toBeGreaterThan(10);
  });

  // Hostile input: a request body can carry data nested far deeper than the limit. The walk must
  // stop at the limit, not recurse to the bottom (which overflows the stack).
  it('answers for a value nested 100,000 levels deep without overflowing the stack', () => {
    expect(() => jsonDepth(nest(100_000), 11)).not.toThrow();
    expect(jsonDepth(nest(100_000), 11)).toBeGreaterThan(10);
  });
});
