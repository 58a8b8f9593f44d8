import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  buildSchema,
  type DefinitionNode,
  type DocumentNode,
  Kind,
  type OperationDefinitionNode,
  parse,
  print,
  validate,
} from 'graphql';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { deleteRedisKeys, freePort } from './support/faults.js';
import { databaseUrl } from './support/harness.js';

/**
 * The README's fenced blocks, run as a reader would paste them. Driven only by the README: its
 * `##` sections, its blocks and their markers, so sections and blocks added later are run too.
 *
 * - ```sh — run with `bash -e` in a copy of the repository (tracked and untracked files, `dist/`,
 *   and a hard-link copy of node_modules, so `npm install` there touches nothing outside it), in
 *   README order, each asserted to exit 0. A ```text block right after one (only blank lines
 *   between) is its output: each of its lines must appear in the output, in order, `…` standing
 *   for any text. What a block exports stays set for the later blocks of its `##` section.
 * - A block that runs `npm start` (or `npm run dev`) is left running in the background until
 *   the port answers; the later blocks of its section run against it, and it is stopped when the
 *   section ends. A block that talks to the service (`localhost:4000`) in a section that started
 *   none gets the service `npm start` runs (`node dist/main.js`: the embedded database,
 *   `AUTH_MODE=dev`) — or, when the block uses `$KEY`, the same in `AUTH_MODE=keys` with `KEY`
 *   set to an API key of the tenant `readme` holding every tenant scope (made with
 *   `npm run keys`). A block that does neither runs with that service stopped: the embedded
 *   database allows one process, as the README says of the command line.
 * - What the runner changes, and nothing else: `PORT` and `HOST=127.0.0.1` in the environment,
 *   and `localhost:4000` in a block's text, become a free loopback port; a database a section
 *   creates with `createdb <name>` gets a fresh name (in the `createdb` line and in
 *   `postgres://…/<name>` URLs of that section), dropped afterwards; `REDIS_KEY_PREFIX` is a
 *   fresh prefix, deleted afterwards; npm runs offline, without audit or fund.
 * - ```graphql — every operation of a block is parsed and validated against
 *   schema/schema.graphql, and executed against the service when it needs no variable without
 *   a default and holds no `…` placeholder (queries and mutations must answer without `errors`;
 *   a subscription's first message must be data, not errors): as the tenant `demo`, the
 *   README's own in `AUTH_MODE=dev`, or with `KEY` when the service runs in `AUTH_MODE=keys`.
 * - ```ts — written into the copy, type-checked with tsc against the package (as a consumer:
 *   `auditgraph/client` resolves to the built package), then run: with vitest when it imports
 *   vitest, else with tsx.
 * - ```js is syntax-checked (`node --check`), ```json parsed, ```ini's keys must be variables the
 *   Configuration table documents. ```text is output, or a formula; any other kind is an error.
 * - `<!-- not run: <reason> -->` on the line before a block skips it; such blocks are listed and
 *   counted, and at most MAX_NOT_RUN are allowed.
 * - Every `](#anchor)` must name a heading, every relative link a file, and the contents list
 *   every `##` section in order.
 */

const MAX_NOT_RUN = 3;
const KNOWN_KINDS = new Set(['sh', 'graphql', 'ts', 'js', 'json', 'ini', 'text']);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
/** The run's database (global-setup.ts) names the server; its name prefixes the fresh ones. */
const runDatabase = new URL(inject('databaseUrl')).pathname.slice(1);
const SERVICE_URL = /\b(?:localhost|127\.0\.0\.1):4000\b/g;
const BLOCK_TIMEOUT_MS = 150_000;

// ---------------------------------------------------------------------------------------------
// The README, parsed

interface Block {
  kind: string;
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
  section: string;
  notRun?: string;
  /** The ```text block right after it (its output). */
  sample?: Block;
}

function parseReadme(text: string) {
  const lines = text.split('\n');
  const blocks: Block[] = [];
  const headings: { level: number; text: string; line: number }[] = [];
  const prose: { text: string; line: number }[] = [];
  let section = '(top)';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const fence = /^```(.*)$/.exec(line);
    if (fence) {
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]!);
      if (i >= lines.length) throw new Error(`README.md:${start + 1}: a fence that never closes`);
      let j = start - 1;
      while (j >= 0 && lines[j]!.trim() === '') j--;
      const marker = j >= 0 ? /^<!-- not run: (.*) -->$/.exec(lines[j]!.trim()) : null;
      const block: Block = {
        kind: fence[1]!.trim(),
        code: body.join('\n'),
        line: start + 1,
        section,
        ...(marker ? { notRun: marker[1]!.trim() } : {}),
      };
      const previous = blocks.at(-1);
      const onlyBlankBetween =
        previous !== undefined &&
        lines
          .slice(previous.line + previous.code.split('\n').length + 1, start)
          .every((l) => l.trim() === '');
      if (block.kind === 'text' && previous?.kind === 'sh' && onlyBlankBetween)
        previous.sample = block;
      blocks.push(block);
      continue;
    }
    const heading = /^(#{1,6}) (.+)$/.exec(line);
    if (heading) {
      headings.push({ level: heading[1]!.length, text: heading[2]!.trim(), line: i + 1 });
      if (heading[1] === '##') section = heading[2]!.trim();
    }
    prose.push({ text: line, line: i + 1 });
  }
  return { blocks, headings, prose };
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading: string): string {
  return heading
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\- _]/gu, '')
    .replace(/ /g, '-');
}

const { blocks, headings, prose } = parseReadme(README);
const anchors = new Map<string, number>();
for (const h of headings) {
  const base = slug(h.text);
  let name = base;
  for (let n = 1; anchors.has(name); n++) name = `${base}-${n}`;
  anchors.set(name, h.line);
}
const sections = [...new Set(blocks.map((b) => b.section))];
const schema = buildSchema(readFileSync(join(ROOT, 'schema/schema.graphql'), 'utf8'));

/** Each operation of a graphql block on its own, with the block's fragments. */
function operationsOf(code: string): { op: OperationDefinitionNode; doc: DocumentNode }[] {
  const doc = parse(code);
  const fragments: DefinitionNode[] = doc.definitions.filter(
    (d) => d.kind === Kind.FRAGMENT_DEFINITION,
  );
  return doc.definitions
    .filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION)
    .map((op) => ({ op, doc: { kind: Kind.DOCUMENT, definitions: [op, ...fragments] } }));
}

// ---------------------------------------------------------------------------------------------
// The run's context: a copy of the repository, a port, services

let copy = '';
let port = 0;
const redisPrefix = `readme-${randomBytes(4).toString('hex')}:`;
const databases: string[] = [];
const tally = {
  shRun: 0,
  samplesChecked: 0,
  tsChecked: 0,
  tsRun: 0,
  graphqlValidated: 0,
  graphqlExecuted: 0,
  jsChecked: 0,
  jsonParsed: 0,
  iniChecked: 0,
};

interface Running {
  /** `own`: started by a README block; `dev`/`keys`: the runner's (see above). */
  kind: 'own' | 'dev' | 'keys';
  child: ChildProcess;
  output: () => string;
  exited: Promise<void>;
}
let service: Running | undefined;
let apiKey: string | undefined;

function baseEnv(): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? tmpdir(),
    LANG: 'C.UTF-8',
    PORT: String(port),
    HOST: '127.0.0.1',
    REDIS_KEY_PREFIX: redisPrefix,
    npm_config_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
  };
}

/** Starts a process in its own process group (so that it is stopped with its children). */
function start(command: string, args: string[], env: Record<string, string>) {
  const child = spawn(command, args, { cwd: copy, env, detached: true, stdio: 'pipe' });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const onExit = () => killGroup(child, 'SIGKILL');
  process.once('exit', onExit);
  void exited.then(() => process.off('exit', onExit));
  return { child, output: () => output, exited };
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid) process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** Runs a command to its end (bounded); resolves with its exit code and output. */
async function run(
  command: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = BLOCK_TIMEOUT_MS,
): Promise<{ code: number | null; output: string }> {
  const p = start(command, args, env);
  const timer = setTimeout(() => killGroup(p.child, 'SIGKILL'), timeoutMs);
  await p.exited;
  clearTimeout(timer);
  // The group's other members (a backgrounded curl, say) go with it.
  killGroup(p.child, 'SIGKILL');
  return { code: p.child.exitCode, output: p.output() };
}

async function portAnswers(): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

async function untilListening(p: Running, what: string): Promise<void> {
  const deadline = Date.now() + 120_000;
  let gone = false;
  void p.exited.then(() => {
    gone = true;
  });
  while (!(await portAnswers())) {
    if (gone) throw new Error(`${what} exited before its port answered:\n${tail(p.output())}`);
    if (Date.now() > deadline) throw new Error(`${what}: port ${port} did not answer in 120 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function stopService(): Promise<void> {
  const s = service;
  if (!s) return;
  service = undefined;
  const crashed = s.child.exitCode !== null;
  killGroup(s.child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(s.child, 'SIGKILL'), 30_000);
  await s.exited;
  clearTimeout(timer);
  expect(crashed, `the service (${s.kind}) stopped on its own:\n${tail(s.output())}`).toBe(false);
  for (let i = 0; i < 50 && (await portAnswers()); i++)
    await new Promise((r) => setTimeout(r, 100));
}

/** The key of the tenant `readme` with every tenant scope, made once with the command line. */
async function key(): Promise<string> {
  if (apiKey) return apiKey;
  await stopService();
  const npm = (args: string[]) => run('npm', ['run', '-s', ...args], baseEnv());
  const provisioned = await npm(['tenants', '--', 'provision', 'readme']);
  expect(provisioned.code, provisioned.output).toBe(0);
  const made = await npm([
    'keys',
    '--',
    'create',
    '--tenant',
    'readme',
    '--scopes',
    'events:write,events:read,deadletters:admin,audit:admin',
    '--label',
    'readme',
    '--json',
  ]);
  expect(made.code, made.output).toBe(0);
  apiKey = (JSON.parse(made.output.slice(made.output.indexOf('{'))) as { key: string }).key;
  return apiKey;
}

/** The runner's service (see above) in `mode`, started unless it runs already. */
async function ensureService(mode: 'dev' | 'keys'): Promise<Running> {
  if (service?.kind === mode) return service;
  const env = baseEnv();
  if (mode === 'keys') env.AUTH_MODE = 'keys';
  if (mode === 'keys') await key();
  await stopService();
  const p = start(process.execPath, ['--enable-source-maps', 'dist/main.js'], env);
  const s: Running = { kind: mode, ...p };
  service = s;
  await untilListening(s, `the service (${mode})`);
  if (mode === 'dev') {
    // Reads never create a tenant: the one the graphql blocks run as exists before them.
    const res = await graphqlRequest(
      'mutation { provisionTenant(input: { tenantId: "demo" }) { __typename } }',
    );
    expect(res.body.errors, JSON.stringify(res.body)).toBeUndefined();
  }
  return s;
}

function authHeaders(): Record<string, string> {
  return service?.kind === 'keys'
    ? { authorization: `Bearer ${apiKey}` }
    : { 'x-tenant-id': 'demo' };
}

async function graphqlRequest(query: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${port}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...authHeaders() },
    body: JSON.stringify({ query }),
  });
  return { status: res.status, body: await res.json() };
}

/** A subscription's first message over SSE; the stream is then closed. */
async function firstMessage(query: string): Promise<any> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 20_000);
  try {
    const res = await fetch(`http://127.0.0.1:${port}/graphql`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'text/event-stream',
        ...authHeaders(),
      },
      body: JSON.stringify({ query }),
      signal: abort.signal,
    });
    if (!res.headers.get('content-type')?.includes('text/event-stream'))
      return { status: res.status, ...((await res.json()) as object) };
    const decoder = new TextDecoder();
    let text = '';
    const reader = res.body!.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      const data = /^data: (.*)$/m.exec(text);
      if (data) return JSON.parse(data[1]!);
    }
    throw new Error(`the stream ended without a message: ${text}`);
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

function tail(s: string, n = 4000): string {
  return s.length > n ? `…${s.slice(-n)}` : s;
}

/** The first line of `sample` (`…` = any text) not found, in order, in `output`; or null. */
function missingFromOutput(output: string, sample: string): string | null {
  const got = output.split(/\r?\n/).map((l) => l.trim());
  let at = 0;
  for (const want of sample
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)) {
    const pattern = want
      .split('…')
      .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
      .join('.*?');
    const re = new RegExp(`^${pattern}$`);
    while (at < got.length && !re.test(got[at]!)) at++;
    if (at === got.length) return want;
    at++;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Running one section

/** The block's text as the runner runs it: the port, and the section's fresh database names. */
function localise(code: string, names: Map<string, string>): string {
  let out = code.replace(SERVICE_URL, `127.0.0.1:${port}`);
  for (const [from, to] of names) {
    out = out
      .replace(new RegExp(`^(\\s*createdb\\b.*\\s)${from}(\\s|$)`, 'gm'), `$1${to}$2`)
      .replace(new RegExp(`(postgres(?:ql)?://[^\\s'"/]*/)${from}\\b`, 'g'), `$1${to}`);
  }
  return out;
}

/** Databases the section's blocks create (`createdb … <name>`), each given a fresh name. */
function freshDatabaseNames(section: Block[]): Map<string, string> {
  const names = new Map<string, string>();
  for (const b of section.filter((x) => x.kind === 'sh' && !x.notRun)) {
    for (const line of b.code.split('\n')) {
      const words = line.split('#')[0]!.trim().split(/\s+/);
      if (words[0] !== 'createdb') continue;
      const name = words.at(-1)!;
      // Under the run's prefix, so that the global teardown drops it even after a crash.
      const fresh = `${runDatabase}_readme_${randomBytes(3).toString('hex')}`;
      names.set(name, fresh);
      databases.push(fresh);
    }
  }
  return names;
}

const startsService = (code: string) =>
  /(^|&&|;|\|\|)\s*npm (start|run dev)\b/m.test(code.replace(/#.*$/gm, ''));
const talksToService = (code: string) => new RegExp(SERVICE_URL.source).test(code);
const usesKey = (code: string) => /\$\{?KEY\b/.test(code);

async function runShell(
  block: Block,
  names: Map<string, string>,
  sectionEnv: Record<string, string>,
): Promise<void> {
  const code = localise(block.code, names);
  const where = `README.md:${block.line} (${block.section})`;
  const background = startsService(block.code);
  if (background) await stopService();
  else if (talksToService(block.code) && service?.kind !== 'own')
    await ensureService(usesKey(block.code) ? 'keys' : 'dev');
  else if (!talksToService(block.code) && service && service.kind !== 'own') await stopService();

  const state = join(copy, `.readme-state-${block.line}`);
  const env = { ...baseEnv(), ...sectionEnv };
  if (usesKey(block.code)) env.KEY = await key();
  // What the block exports, kept for the section's later blocks (also for a block that ends in a
  // long-running command: the state is written before each command).
  const script = `trap 'env -0 > "${state}"' DEBUG EXIT\nset -e\n${code}\n`;
  if (background) {
    const p = start('bash', ['-c', script], env);
    service = { kind: 'own', ...p };
    await untilListening(service, `${where}, started in the background`);
    if (process.env.README_TEST_LOG) console.log(`${where}: listening:\n${service.output()}`);
  } else {
    const { code: exit, output } = await run('bash', ['-c', script], env);
    if (process.env.README_TEST_LOG) console.log(`${where}:\n${output}`);
    expect(exit, `${where} exited with ${exit}:\n${code}\n--- output ---\n${tail(output)}`).toBe(0);
    if (block.sample) {
      const missing = missingFromOutput(output, block.sample.code);
      expect(
        missing,
        `${where}: the output sample at README.md:${block.sample.line} does not match; missing line:\n${missing}\n--- output ---\n${tail(output)}`,
      ).toBeNull();
      tally.samplesChecked++;
    }
  }
  if (existsSync(state)) {
    for (const entry of readFileSync(state, 'utf8').split('\0')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) continue;
      const [name, value] = [entry.slice(0, eq), entry.slice(eq + 1)];
      if (['_', 'SHLVL', 'PWD', 'OLDPWD', 'KEY'].includes(name)) continue;
      if (env[name] !== value) sectionEnv[name] = value;
    }
    rmSync(state, { force: true });
  }
  tally.shRun++;
}

async function runTypeScript(block: Block, sectionEnv: Record<string, string>): Promise<void> {
  const where = `README.md:${block.line} (${block.section})`;
  const dir = join(copy, 'readme-blocks');
  mkdirSync(dir, { recursive: true });
  // As in a consumer's project: the package installed under its name.
  const installed = join(copy, 'node_modules', 'auditgraph');
  if (!existsSync(installed)) symlinkSync(copy, installed, 'dir');
  const withVitest = /from ['"]vitest['"]/.test(block.code);
  const file = join(dir, `block-${block.line}${withVitest ? '.test' : ''}.ts`);
  writeFileSync(file, `${block.code.replace(SERVICE_URL, `127.0.0.1:${port}`)}\n`);
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
      },
      files: [file],
    }),
  );
  const env = { ...baseEnv(), ...sectionEnv };
  const tsc = await run(
    process.execPath,
    [join(copy, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json')],
    env,
  );
  expect(tsc.code, `${where} does not type-check:\n${tsc.output}`).toBe(0);
  tally.tsChecked++;

  if (talksToService(block.code) && service?.kind !== 'own')
    await ensureService(usesKey(block.code) ? 'keys' : 'dev');
  if (usesKey(block.code)) env.KEY = await key();
  const ran = withVitest
    ? await run(
        process.execPath,
        [
          join(copy, 'node_modules/vitest/vitest.mjs'),
          'run',
          '--root',
          dir,
          '--reporter',
          'default',
          file,
        ],
        env,
      )
    : await run(process.execPath, ['--import', 'tsx', file], env);
  if (process.env.README_TEST_LOG) console.log(`${where}:\n${tsc.output}\n${ran.output}`);
  expect(ran.code, `${where} failed when run:\n${tail(ran.output)}`).toBe(0);
  tally.tsRun++;
}

async function runGraphql(block: Block): Promise<void> {
  const where = `README.md:${block.line} (${block.section})`;
  const ops = operationsOf(block.code);
  expect(ops.length, `${where}: no operation`).toBeGreaterThan(0);
  for (const { op, doc } of ops) {
    const errors = validate(schema, doc);
    expect(
      errors.map((e) => e.message),
      `${where}: ${print(op).slice(0, 200)}`,
    ).toEqual([]);
    tally.graphqlValidated++;
    const text = print(doc);
    const needsInput = (op.variableDefinitions ?? []).some(
      (v) => v.type.kind === Kind.NON_NULL_TYPE && !v.defaultValue,
    );
    if (needsInput || text.includes('…') || service?.kind === 'own') continue;
    if (!service) await ensureService('dev');
    if (op.operation === 'subscription') {
      const first = await firstMessage(text);
      expect(first.errors, `${where}: ${JSON.stringify(first)}`).toBeUndefined();
      expect(first.data, `${where}: ${JSON.stringify(first)}`).toBeTruthy();
    } else {
      const { status, body } = await graphqlRequest(text);
      expect(body.errors, `${where} (HTTP ${status}): ${JSON.stringify(body)}`).toBeUndefined();
      expect(body.data, where).toBeTruthy();
    }
    tally.graphqlExecuted++;
  }
}

async function checkOther(block: Block): Promise<void> {
  const where = `README.md:${block.line} (${block.section})`;
  if (block.kind === 'json') {
    expect(() => JSON.parse(block.code), where).not.toThrow();
    tally.jsonParsed++;
  } else if (block.kind === 'js') {
    const file = join(copy, `readme-block-${block.line}.mjs`);
    writeFileSync(file, block.code);
    const checked = await run(process.execPath, ['--check', file], baseEnv());
    expect(checked.code, `${where}: ${checked.output}`).toBe(0);
    tally.jsChecked++;
  } else if (block.kind === 'ini') {
    for (const line of block.code.split('\n').filter((l) => l.trim() && !l.startsWith('#'))) {
      const name = /^([A-Z][A-Z0-9_]*)=/.exec(line)?.[1];
      expect(name, `${where}: not NAME=value: ${line}`).toBeTruthy();
      const documented = README.split('\n').some(
        (l) => l.startsWith('|') && l.split('|')[1]?.includes(`\`${name}\``),
      );
      expect(documented, `${where}: ${name} is not in the Configuration table`).toBe(true);
    }
    tally.iniChecked++;
  }
}

// ---------------------------------------------------------------------------------------------

describe('README.md', () => {
  beforeAll(async () => {
    port = await freePort();
    copy = mkdtempSync(join(tmpdir(), 'auditgraph-readme-'));
    const files = execFileSync(
      'git',
      ['ls-files', '-z', '--cached', '--others', '--exclude-standard'],
      { cwd: ROOT },
    )
      .toString()
      .split('\0')
      .filter((f) => f && f !== 'node_modules' && existsSync(join(ROOT, f)))
      .filter((f) => statSync(join(ROOT, f)).isFile());
    for (const f of files) {
      mkdirSync(dirname(join(copy, f)), { recursive: true });
      copyFileSync(join(ROOT, f), join(copy, f));
    }
    // dist/ as the global setup built it; node_modules as hard links (npm replaces files rather
    // than writing into them).
    cpSync(join(ROOT, 'dist'), join(copy, 'dist'), { recursive: true });
    const modules = realpathSync(join(ROOT, 'node_modules'));
    try {
      execFileSync('cp', ['-al', modules, join(copy, 'node_modules')], { stdio: 'pipe' });
    } catch {
      // another file system: a copy of its own
      rmSync(join(copy, 'node_modules'), { recursive: true, force: true });
      execFileSync('cp', ['-a', modules, join(copy, 'node_modules')]);
    }
    // Files tools write in place are the copy's own: its lock file a copy, caches left out.
    for (const own of ['.package-lock.json', '.cache', '.vite', '.vite-temp'])
      rmSync(join(copy, 'node_modules', own), { recursive: true, force: true });
    if (existsSync(join(modules, '.package-lock.json')))
      copyFileSync(
        join(modules, '.package-lock.json'),
        join(copy, 'node_modules/.package-lock.json'),
      );
  });

  afterAll(async () => {
    await stopService().catch(() => {});
    const admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
    for (const name of databases)
      await admin.query(`drop database if exists "${name}" with (force)`);
    await admin.end();
    await deleteRedisKeys(inject('redisUrl'), redisPrefix);
    if (copy) rmSync(copy, { recursive: true, force: true });
    const notRun = blocks.filter((b) => b.notRun);
    console.log(
      [
        `README blocks: ${tally.shRun} sh run (${tally.samplesChecked} output samples checked),`,
        `${tally.tsChecked} ts type-checked / ${tally.tsRun} run,`,
        `${tally.graphqlValidated} graphql operations validated / ${tally.graphqlExecuted} executed,`,
        `${tally.jsChecked} js checked, ${tally.jsonParsed} json parsed, ${tally.iniChecked} ini checked;`,
        `${notRun.length} not run:`,
        ...notRun.map((b) => `  README.md:${b.line} (${b.section}, ${b.kind}): ${b.notRun}`),
      ].join('\n'),
    );
  });

  it('has command blocks, each of a kind it knows', () => {
    expect(blocks.filter((b) => b.kind === 'sh').length).toBeGreaterThan(0);
    for (const b of blocks)
      expect(KNOWN_KINDS.has(b.kind), `README.md:${b.line}: a block of kind "${b.kind}"`).toBe(
        true,
      );
  });

  it('marks at most a few blocks not run, each with its reason', () => {
    const notRun = blocks.filter((b) => b.notRun !== undefined);
    for (const b of notRun) expect(b.notRun, `README.md:${b.line}`).not.toBe('');
    expect(notRun.map((b) => `README.md:${b.line}`).length).toBeLessThanOrEqual(MAX_NOT_RUN);
    // A marker that precedes no block is a mistake.
    const markers = prose.filter((p) => p.text.trim().startsWith('<!-- not run:'));
    expect(markers.length).toBe(notRun.length);
  });

  it('links every anchor to a heading and every relative link to a file', () => {
    for (const p of prose) {
      for (const m of p.text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (target.startsWith('#'))
          expect(anchors.has(target.slice(1)), `README.md:${p.line}: ${target}`).toBe(true);
        else if (!/^[a-z]+:/.test(target))
          expect(existsSync(join(ROOT, target)), `README.md:${p.line}: ${target}`).toBe(true);
      }
    }
  });

  it('lists every ## section in its contents, in order', () => {
    const start = prose.findIndex((p) => p.text.trim() === '**Contents**');
    expect(start, 'a **Contents** line').toBeGreaterThanOrEqual(0);
    const listed: string[] = [];
    for (const p of prose.slice(start + 1)) {
      if (p.text.trim() === '' && listed.length === 0) continue;
      const item = /^- \[[^\]]+\]\(#([^)]+)\)/.exec(p.text);
      if (!item) {
        if (/^\s+- /.test(p.text)) continue; // a nested entry
        break;
      }
      listed.push(item[1]!);
    }
    expect(listed).toEqual(headings.filter((h) => h.level === 2).map((h) => slug(h.text)));
  });

  for (const section of sections) {
    const own = blocks.filter((b) => b.section === section);
    const kinds = own.filter((b) => b.kind !== 'text' && !b.notRun).map((b) => b.kind);
    if (kinds.length === 0) continue;
    it(`runs the blocks of "${section}" (${kinds.join(', ')})`, { timeout: 300_000 }, async () => {
      const names = freshDatabaseNames(own);
      const sectionEnv: Record<string, string> = {};
      try {
        for (const block of own) {
          if (block.notRun) continue;
          if (block.kind === 'sh') await runShell(block, names, sectionEnv);
          else if (block.kind === 'ts') await runTypeScript(block, sectionEnv);
          else if (block.kind === 'graphql') await runGraphql(block);
          else await checkOther(block);
        }
      } finally {
        if (service?.kind === 'own') await stopService();
      }
    });
  }
});
