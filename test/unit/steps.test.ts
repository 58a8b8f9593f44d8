import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { type Step, startSteps, stopSteps } from '../../src/steps.js';

/*
 * Start-up and shutdown as named steps: started in order, stopped in reverse under one deadline.
 * A step that overruns is cut and the rest still stop; a step that keeps its own deadline (the
 * one that writes the buffers) is waited for in full, since cutting it would lose what it holds.
 */

const log = pino({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function recorder() {
  const seen: string[] = [];
  const step = (name: string, stopMs = 0, extra: Partial<Step> = {}): Step => ({
    name,
    start: () => {
      seen.push(`start ${name}`);
    },
    quiesce: () => seen.push(`quiesce ${name}`),
    stop: async () => {
      await sleep(stopMs);
      seen.push(`stopped ${name}`);
    },
    ...extra,
  });
  return { seen, step };
}

describe('steps', () => {
  it('start in order, quiesce all, then stop in reverse', async () => {
    const { seen, step } = recorder();
    const steps = [step('a'), step('b'), step('c')];
    await startSteps(steps, log);
    await stopSteps(steps, Date.now() + 5_000, log);
    expect(seen).toEqual([
      'start a',
      'start b',
      'start c',
      'quiesce c',
      'quiesce b',
      'quiesce a',
      'stopped c',
      'stopped b',
      'stopped a',
    ]);
  });

  it('cut a step that overruns the deadline, and still stop the ones before it', async () => {
    const { seen, step } = recorder();
    const steps = [step('first'), step('slow', 2_000)];
    const began = Date.now();
    await stopSteps(steps, Date.now() + 300, log);
    expect(Date.now() - began).toBeLessThan(1_500);
    expect(seen.filter((s) => s.startsWith('stopped'))).toEqual(['stopped first']);
  });

  it('wait in full for a step that keeps its own deadline', async () => {
    const { seen, step } = recorder();
    const steps = [step('first'), step('buffers', 600, { ownDeadline: true })];
    await stopSteps(steps, Date.now() + 300, log);
    expect(seen.filter((s) => s.startsWith('stopped'))).toEqual([
      'stopped buffers',
      'stopped first',
    ]);
  });
});
