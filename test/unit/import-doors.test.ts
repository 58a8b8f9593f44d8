import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/*
 * The one-way doors between the rooms of src/ are lint rules (.biome.json's per-folder
 * overrides). These tests lint probe files with the project's own configuration in a scratch
 * directory laid out like the repository: each door refuses the import that breaks it, and lets
 * through the one it allows — so a rule that stopped matching fails here, not silently.
 */

const root = new URL('../..', import.meta.url).pathname;
const biome = join(root, 'node_modules/.bin/biome');
const run = promisify(execFile);

interface Diagnostic {
  category: string;
  message: string;
  location: { path: string };
}

let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'auditgraph-doors-'));
  const config = JSON.parse(readFileSync(join(root, '.biome.json'), 'utf8'));
  config.$schema = undefined;
  config.vcs = { enabled: false };
  writeFileSync(join(scratch, 'biome.json'), JSON.stringify(config));
});

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Lints one probe file, placed at `path` under the scratch root (tests run one at a time). */
async function lint(path: string, source: string): Promise<Diagnostic[]> {
  const file = join(scratch, path);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, source);
  const { stdout } = await run(biome, ['lint', '--reporter=json', path], {
    cwd: scratch,
  }).catch((err: { stdout: string }) => ({ stdout: err.stdout }));
  rmSync(file);
  const report = JSON.parse(stdout) as { diagnostics: Diagnostic[] };
  return report.diagnostics.filter((d) =>
    /^lint\/(style\/no(RestrictedImports|ProcessEnv)|complexity\/noExcessiveLines)/.test(
      d.category,
    ),
  );
}

// Each probe sits where it would in src/, so `../x` means what it means there.
const doors: [string, string, string, RegExp][] = [
  ['src/domain/probe.ts', "import '../db/client.js';", "import './uuid.js';", /domain\/ is pure/],
  ['src/domain/probe.ts', "import 'pg';", "import 'zod';", /domain\/ does no I\/O/],
  [
    'src/ingest/probe.ts',
    "import 'graphql';",
    "import '../domain/event.js';",
    /never imports GraphQL/,
  ],
  [
    'src/ingest/probe.ts',
    "import '../realtime/topics.js';",
    "import '../db/client.js';",
    /IngestEvents/,
  ],
  [
    'src/query/probe.ts',
    "import '../graphql/context.js';",
    "import '../db/client.js';",
    /never imports GraphQL/,
  ],
  [
    'src/query/probe.ts',
    "import '../ingest/events.js';",
    "import '../domain/event.js';",
    /reads only/,
  ],
  [
    'src/graphql/probe.ts',
    "import '../http/server.js';",
    "import '../query/audit-event-queries.js';",
    /transport/,
  ],
  ['src/graphql/probe.ts', "import 'drizzle-orm';", "import 'graphql';", /No SQL or Redis/],
  [
    'src/redis/probe.ts',
    "import '../realtime/pubsub.js';",
    "import 'ioredis';",
    /Redis clients and key names only/,
  ],
  ['src/db/probe.ts', "import '../wiring.js';", "import 'pg';", /stand on the wiring/],
  [
    'src/usecases/probe.ts',
    "import '../http/json-response.js';",
    "import '../db/api-key-store.js';",
    /HTTP transport/,
  ],
  ['src/usecases/probe.ts', "import 'pg';", "import '../domain/errors.js';", /No SQL or Redis/],
];

describe('the rules of the code map are enforced by lint', () => {
  it.each(doors)('%s: refuses %s, allows %s', async (path, refused, allowed, message) => {
    const bad = await lint(path, `${refused}\n`);
    expect(bad.map((d) => d.message)).toEqual([expect.stringMatching(message)]);
    expect(await lint(path, `${allowed}\n`)).toEqual([]);
  });

  it('only config.ts reads the environment', async () => {
    const read = 'export const port = process.env.PORT;\n';
    expect((await lint('src/http/probe.ts', read)).map((d) => d.category)).toEqual([
      'lint/style/noProcessEnv',
    ]);
    expect(await lint('src/config.ts', read)).toEqual([]);
  });

  it('no function in src/ runs past 80 lines without a reason beside it', async () => {
    const body = Array.from({ length: 81 }, (_, i) => `  total += ${i};`).join('\n');
    const long = `export function long(): number {\n  let total = 0;\n${body}\n  return total;\n}\n`;
    expect((await lint('src/ingest/probe.ts', long)).map((d) => d.category)).toEqual([
      'lint/complexity/noExcessiveLinesPerFunction',
    ]);
    const reasoned = `// biome-ignore lint/complexity/noExcessiveLinesPerFunction: a flat list, read top to bottom\n${long}`;
    expect(await lint('src/ingest/probe.ts', reasoned)).toEqual([]);
  });
});
