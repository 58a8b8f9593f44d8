import { describe, expect, it } from 'vitest';
import {
  classifyWriteError,
  describeWriteError,
  writeErrorForLog,
} from '../../src/ingest/failure-classifier.js';

/** An error shaped like one from `pg`: a message and a SQLSTATE in `code`. */
function pgError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe('classifyWriteError', () => {
  it('classifies 23514 "no partition of relation … found for row" as missing-partition', () => {
    const err = pgError('23514', 'no partition of relation "audit_events" found for row');
    expect(classifyWriteError(err)).toBe('missing-partition');
  });

  it('classifies any other 23514 (a check constraint) as a data problem', () => {
    const err = pgError(
      '23514',
      'new row for relation "audit_events_y2026m01" violates check constraint "audit_events_duration_check"',
    );
    expect(classifyWriteError(err)).toBe('data');
  });

  it.each([
    ['22001', 'value too long for type character varying(45)'],
    ['22P02', 'invalid input syntax for type json'],
    ['22021', 'invalid byte sequence for encoding "UTF8": 0x00'],
    ['22007', 'invalid input syntax for type timestamp with time zone'],
    ['23502', 'null value in column "event_type" violates not-null constraint'],
    ['23505', 'duplicate key value violates unique constraint'],
  ])('classifies %s (%s) as a data problem', (code, message) => {
    expect(classifyWriteError(pgError(code, message))).toBe('data');
  });

  it.each([
    ['08006', 'connection failure'],
    ['08003', 'connection does not exist'],
    ['57P01', 'terminating connection due to administrator command'],
    ['55P03', 'canceling statement due to lock timeout'],
    ['40001', 'could not serialize access due to concurrent update'],
    ['40P01', 'deadlock detected'],
    ['53300', 'sorry, too many clients already'],
  ])('classifies %s (%s) as transient', (code, message) => {
    expect(classifyWriteError(pgError(code, message))).toBe('transient');
  });

  it('classifies errors without a SQLSTATE as transient', () => {
    expect(classifyWriteError(new Error('timeout exceeded when trying to connect'))).toBe(
      'transient',
    );
    expect(classifyWriteError(Object.assign(new Error('ECONNRESET'), { code: 'ECONNRESET' }))).toBe(
      'transient',
    );
    expect(classifyWriteError(undefined)).toBe('transient');
    expect(classifyWriteError(null)).toBe('transient');
    expect(classifyWriteError('boom')).toBe('transient');
  });

  it('does not mistake a "no partition" message without SQLSTATE 23514 for a missing partition', () => {
    expect(classifyWriteError(new Error('no partition of relation found for row'))).toBe(
      'transient',
    );
  });
});

describe('describeWriteError', () => {
  it('keeps the SQLSTATE and the first line only, at most 200 characters', () => {
    const err = pgError('22001', `value too long\nDETAIL: secret parameter ${'x'.repeat(50)}`);
    expect(describeWriteError(err)).toBe('22001: value too long');
    expect(describeWriteError(new Error('y'.repeat(500)))).toHaveLength(200);
  });
});

describe('writeErrorForLog', () => {
  it('is an Error with the described message and the original frames, and none of its fields', () => {
    const err = Object.assign(pgError('22001', 'value too long\nDETAIL: secret'), {
      detail: 'Failing row contains (secret)',
    });
    const logged = writeErrorForLog(err);
    expect(logged).toBeInstanceOf(Error);
    expect(logged.message).toBe('22001: value too long');
    expect(logged).not.toHaveProperty('detail');
    expect(logged.stack).not.toContain('secret');
    expect(logged.stack!.split('\n')[0]).toBe('Error: 22001: value too long');
    const frame = err.stack!.split('\n').find((line) => line.trim().startsWith('at '))!;
    expect(logged.stack).toContain(frame);
  });

  it('wraps what is not an Error', () => {
    expect(writeErrorForLog('socket hang up')).toMatchObject({ message: 'socket hang up' });
  });
});
