import type { CpuSplit } from './proc-stats.js';

/** One line of the results table. `met` null: a reference figure with no target. */
export interface Row {
  scenario: string;
  figure: string;
  value: string;
  baseline: string;
  ratio: string;
  target: string;
  met: boolean | null;
  /** Numbers behind the text, for the JSON. */
  data?: Record<string, unknown>;
}

export const fmt = {
  rate: (n: number) => `${Math.round(n).toLocaleString('en-US')}/s`,
  ms: (n: number) => (Number.isFinite(n) ? `${n < 10 ? n.toFixed(2) : n.toFixed(1)} ms` : 'n/a'),
  ratio: (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}×` : 'n/a'),
  mb: (bytes: number) => `${Math.round(bytes / 2 ** 20)} MB`,
  int: (n: number) => Math.round(n).toLocaleString('en-US'),
};

const mark = (met: boolean | null) => (met === null ? '—' : met ? '✅' : '❌');

function escapeCell(cell: string): string {
  return cell.replaceAll('|', '\\|');
}

export function resultsTable(rows: readonly Row[]): string {
  const lines = [
    '| # | Figure | Value | Baseline (same run) | Ratio | Target | Met |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${[r.scenario, r.figure, r.value, r.baseline, r.ratio, r.target, mark(r.met)].map(escapeCell).join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

export function cpuTable(
  phases: Record<string, CpuSplit>,
  rss: Record<string, number> = {},
  heap: Record<string, number> = {},
): string {
  const lines = [
    '| Phase | Wall s | Service | Load side | PostgreSQL | Redis | No-op Yoga | Other processes | Service RSS / V8 heap used after |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  const cell = (cpu: number, wall: number) =>
    `${cpu.toFixed(1)} s (${Math.round((cpu / Math.max(wall, 1e-9)) * 100)}%)`;
  for (const [name, c] of Object.entries(phases)) {
    lines.push(
      `| ${name} | ${c.wallSeconds.toFixed(1)} | ${cell(c.service, c.wallSeconds)} | ${cell(c.load, c.wallSeconds)} | ${cell(c.postgres, c.wallSeconds)} | ${cell(c.redis, c.wallSeconds)} | ${c.noop > 0 ? cell(c.noop, c.wallSeconds) : '—'} | ${cell(c.other, c.wallSeconds)} | ${rss[name] ? fmt.mb(rss[name]) : '—'} / ${heap[name] ? fmt.mb(heap[name]) : '—'} |`,
    );
  }
  lines.push(
    '',
    'CPU-seconds used during each phase (in brackets: percent of one core; 2 cores = 200%). ' +
      'Load side: the worker processes (their whole life, start-up included) and the orchestrator. ' +
      '"Other processes": machine busy time none of the columns accounts for (other work on the same cores).',
  );
  if (rss.start) lines.push(`Service RSS right after start: ${fmt.mb(rss.start)}.`);
  return lines.join('\n');
}
