/**
 * `npm run bench` — the service against the database's own limits, side by side in one run.
 *
 *   npm run bench                 full run (about 10 minutes on 2 cores)
 *   npm run bench -- --quick      smoke run (< 2 minutes): every scenario small; exits non-zero
 *                                 unless every scenario completes and the accounting holds
 *   npm run bench -- --only=1,3   some scenarios (4 and 5 calibrate a ceiling if 1 is left out)
 *   npm run bench -- --journal=off   the service with JOURNAL=off (BUFFERED in memory), for comparison
 *   npm run bench -- --cpu-prof   write a CPU profile of the service to .bench-results/
 *   npm run bench -- --keep-db    leave the database in place afterwards
 *   npm run bench -- --service-node-args="--max-old-space-size=256"
 *                                 Node flags for the service process (try a setting; the
 *                                 report names them)
 *
 * Builds the service (`npm run build`) and runs it compiled, as `npm start` does. Creates a
 * fresh database (dropped at the end), starts the service as a child process against it and Redis (own key prefix), drives it from separate worker processes, and prints one
 * markdown table (also written as JSON to .bench-results/<timestamp>.json). Environment:
 * BENCH_DATABASE_URL (admin connection, default postgres://root@127.0.0.1:5432/postgres) and
 * BENCH_REDIS_URL (default redis://127.0.0.1:6379).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT, type Server, spawnServer } from './child-processes.js';
import { BENCH_METRICS_TOKEN, Bench, FULL, log, QUICK, type ServiceSpec } from './context.js';
import { machineCpuSeconds } from './proc-stats.js';
import { summariseProfile } from './profile-summary.js';
import { cpuTable, resultsTable } from './report.js';
import {
  accounting,
  chainHashingCost,
  commitLatency,
  ingestCeiling,
  overload,
  reading,
  SCRATCH,
  subscriptions,
  timeToVisible,
} from './scenarios.js';
import {
  createDatabase,
  createScratchSchema,
  deleteRedisKeys,
  dropDatabase,
  machineInfo,
} from './setup.js';
import { sleep } from './util.js';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    journal: { type: 'string' },
    'cpu-prof': { type: 'boolean', default: false },
    'keep-db': { type: 'boolean', default: false },
    'service-node-args': { type: 'string', default: '' },
  },
});

const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const LINGER_MS = 2;

const SCENARIOS = [
  ['1', ingestCeiling],
  ['2', commitLatency],
  ['3', reading],
  ['4', subscriptions],
  ['5', overload],
  ['6', timeToVisible],
  ['7', chainHashingCost],
] as const;

/** Busy CPU of the whole machine over a second: others' work on the same cores skews results. */
async function machineBusyPercent(): Promise<number> {
  const a = machineCpuSeconds();
  await sleep(1_000);
  const b = machineCpuSeconds();
  return Math.round(((b.busy - a.busy) / (b.total - a.total)) * 100);
}

async function main(): Promise<number> {
  const quick = args.quick ?? false;
  const only = args.only ? new Set(args.only.split(',').map((s) => s.trim())) : null;
  const p = quick ? QUICK : FULL;
  const started = new Date();
  const stamp = started.toISOString().replaceAll(':', '-').replace(/\..*/, '');
  const resultsDir = join(ROOT, '.bench-results');
  mkdirSync(resultsDir, { recursive: true });
  const dbName = `auditgraph_bench_${Date.now()}_${process.pid}`;
  const redisPrefix = `bench:${randomBytes(4).toString('hex')}:`;
  const dlqDir = mkdtempSync(join(tmpdir(), 'auditgraph-bench-'));
  const profileDir = join(resultsDir, `profile-${stamp}`);
  // What `npm start` runs: the compiled service, with its flag.
  const serviceNodeArgs = [
    '--enable-source-maps',
    ...(args['service-node-args'] ?? '').split(' ').filter(Boolean),
  ];
  log('building the service (npm run build) …');
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: ['ignore', 2, 2] });

  const busyBefore = await machineBusyPercent();
  if (busyBefore > 15) {
    log(`warning: the machine is already ${busyBefore}% busy before the run; figures will be low`);
  }
  log(`database ${dbName}, redis prefix ${redisPrefix}, ${quick ? 'quick' : 'full'} run`);
  const databaseUrl = await createDatabase(ADMIN_URL, dbName);
  const machine = await machineInfo(databaseUrl, REDIS_URL);
  let service: Server | undefined;
  let bench: Bench | undefined;
  let serviceExit: number | null = null;
  const crashed: string[] = [];
  try {
    for (const schema of Object.values(SCRATCH)) await createScratchSchema(databaseUrl, schema);
    const serviceSpec: ServiceSpec = {
      entry: 'dist/main.js',
      env: {
        DATABASE_URL: databaseUrl,
        REDIS_URL,
        REDIS_KEY_PREFIX: redisPrefix,
        AUTH_MODE: 'dev',
        TENANT_AUTO_PROVISION: 'true',
        PORT: '0',
        HOST: '127.0.0.1',
        LOG_LEVEL: 'info',
        CURSOR_SECRET: randomBytes(24).toString('hex'),
        DLQ_DIR: dlqDir,
        // Not the default ./.data of the checkout: in the run's temporary directory, and shared by
        // every service the run starts, as the instances of one deployment share it.
        CHECKPOINT_KEY_FILE: join(dlqDir, 'checkpoint-ed25519.pem'),
        INSTANCE_ID: `bench-${process.pid}`,
        DATABASE_APPLICATION_NAME: 'auditgraph-bench',
        GRAPHIQL: 'false',
        // A COMMITTED call waits for its batch however busy the writer is: a timeout would be a
        // failed call here, not a figure.
        COMMIT_TIMEOUT_MS: '60000',
        COMMIT_LINGER_MS: String(LINGER_MS),
        // The ceiling is the service's, not a quota's: write rate limits off (a setting that an
        // older service ignores). Every other limit keeps its default.
        RATE_LIMIT_EVENTS_PER_SECOND: '0',
        // /metrics (the heap figures) needs it in AUTH_MODE=keys; dev mode and older services
        // ignore it.
        METRICS_TOKEN: BENCH_METRICS_TOKEN,
        // --journal=off: BUFFERED without the write-ahead journal, to see what the journal costs.
        ...(args.journal ? { JOURNAL: args.journal } : {}),
      },
      nodeArgs: serviceNodeArgs,
      tempDir: dlqDir,
    };
    service = await spawnServer(serviceSpec.entry, serviceSpec.env, {
      nodeArgs: [
        ...(args['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : []),
        ...serviceNodeArgs,
      ],
    });
    log(`service pid ${service.pid} at ${service.url}`);
    bench = new Bench(
      quick,
      p,
      databaseUrl,
      dbName,
      service,
      LINGER_MS,
      Number(new URL(REDIS_URL).port || 6379),
      serviceSpec,
    );
    for (const [id, scenario] of SCENARIOS) {
      if (only && !only.has(id)) continue;
      try {
        await scenario(bench);
      } catch (err) {
        const message = `scenario ${id} did not complete: ${(err as Error).stack ?? err}`;
        log(message);
        crashed.push(message);
      }
    }
    try {
      await accounting(bench);
    } catch (err) {
      crashed.push(`accounting did not complete: ${(err as Error).stack ?? err}`);
    }
  } finally {
    await bench?.close();
    if (service) {
      serviceExit = await service.stop();
      log(`service stopped with exit code ${serviceExit}`);
    }
    if (!args['keep-db']) await dropDatabase(ADMIN_URL, dbName).catch((e) => log(`drop: ${e}`));
    await deleteRedisKeys(REDIS_URL, redisPrefix).catch((e) => log(`redis cleanup: ${e}`));
    rmSync(dlqDir, { recursive: true, force: true });
  }

  const problems = [...crashed, ...(bench?.problems ?? [])];
  if (serviceExit !== 0) problems.push(`the service exited with ${serviceExit} on SIGTERM`);
  const rows = bench?.rows ?? [];
  const missed = rows.filter((r) => r.met === false);
  let profile: string | undefined;
  if (args['cpu-prof']) {
    const file = readdirSync(profileDir).find((f) => f.endsWith('.cpuprofile'));
    if (file) profile = summariseProfile(join(profileDir, file));
  }

  const header = [
    `## auditgraph benchmark — ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC${quick ? ' (quick)' : ''}`,
    '',
    `${machine.cores} cores (${machine.cpuModel}), ${machine.memoryGiB} GiB, Node ${machine.node}, ` +
      `PostgreSQL ${machine.postgres}, Redis ${machine.redis}; machine ${busyBefore}% busy before the run ` +
      `(load average ${machine.loadAverageAtStart.join(' ')}).` +
      ` The service: \`node ${serviceNodeArgs.join(' ')} dist/main.js\` (compiled).`,
    '',
  ].join('\n');
  const out = [
    header,
    resultsTable(rows),
    '',
    cpuTable(bench?.cpu ?? {}, bench?.rss, bench?.heapUsed),
    '',
    problems.length ? `Problems:\n${problems.map((x) => `- ${x}`).join('\n')}` : 'Problems: none.',
    profile ? `\nService CPU profile (self time):\n\n${profile}` : '',
  ].join('\n');
  process.stdout.write(`${out}\n`);

  const file = join(resultsDir, `${stamp}${quick ? '-quick' : ''}.json`);
  writeFileSync(
    file,
    `${JSON.stringify(
      {
        startedAt: started.toISOString(),
        mode: quick ? 'quick' : 'full',
        only: only ? [...only] : null,
        machine: { ...machine, busyPercentBefore: busyBefore },
        params: p,
        serviceNodeArgs,
        rows,
        cpu: bench?.cpu,
        rssByPhase: bench?.rss,
        heapUsedByPhase: bench?.heapUsed,
        details: bench?.details,
        problems,
        serviceWarnings: service?.warnings.slice(0, 50),
        profile,
      },
      null,
      2,
    )}\n`,
  );
  log(`results written to ${file}`);
  log(`${missed.length} target(s) missed; ${problems.length} problem(s)`);
  // --quick asserts completion and accounting only; a full run reports misses without failing.
  return problems.length > 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
