/**
 * Where a V8 CPU profile (`node --cpu-prof`) spends its self time: by package or source folder,
 * and the hottest functions. `npx tsx test/bench/profile-summary.ts <file.cpuprofile>`, or run.ts
 * with --cpu-prof.
 */
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** The bucket a frame's time belongs to: a package, a folder of src/, node internals, or V8. */
function bucketOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const pkg = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (pkg) return pkg[1]!;
  const src = url.match(/\/src\/(.+)$/);
  if (src) return `src/${src[1]}`;
  if (url.startsWith('node:')) return url.replace(/^node:(internal\/)?/, 'node:').split('/')[0]!;
  return url.split('/').slice(-2).join('/');
}

export function summariseProfile(file: string, top = 25): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const buckets = new Map<string, number>();
  const functions = new Map<string, number>();
  // Inclusive time of the service's own functions (and of the packages' entry points it calls):
  // every sample counts once for each distinct src/ function on its stack.
  const inclusive = new Map<string, number>();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') continue;
    total += us;
    const bucket = bucketOf(url, functionName);
    buckets.set(bucket, (buckets.get(bucket) ?? 0) + us);
    const name = `${functionName || '(anonymous)'} ${bucket}${url ? `:${lineNumber + 1}` : ''}`;
    functions.set(name, (functions.get(name) ?? 0) + us);
    const onStack = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const f = byId.get(at)!.callFrame;
      if (!/\/src\//.test(f.url) || !f.functionName) continue;
      onStack.add(`${f.functionName} ${bucketOf(f.url, f.functionName)}`);
    }
    for (const k of onStack) inclusive.set(k, (inclusive.get(k) ?? 0) + us);
  }
  const table = (title: string, m: Map<string, number>, n: number) => {
    const rows = [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, n);
    return [
      `| ${title} | self CPU s | share |`,
      '|---|---|---|',
      ...rows.map(
        ([k, us]) =>
          `| ${k.replaceAll('|', '\\|')} | ${(us / 1e6).toFixed(2)} | ${((us / total) * 100).toFixed(1)}% |`,
      ),
    ].join('\n');
  };
  return [
    `Busy (non-idle) samples: ${(total / 1e6).toFixed(1)} s.`,
    '',
    table('package or folder', buckets, 20),
    '',
    table('function (self time)', functions, top),
    '',
    table('service function (inclusive: itself and what it calls)', inclusive, top),
  ].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: tsx test/bench/profile-summary.ts <file.cpuprofile>');
    process.exit(2);
  }
  console.log(summariseProfile(file));
}
