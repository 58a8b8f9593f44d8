import { createPublicKey, type KeyObject } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { ConfigError, loadConfig } from '../config.js';
import { type TrustedKeyJson, trustedKeyFromJson } from '../domain/checkpoint.js';
import { describeProblem, type ExportVerification, verifyExport } from '../export/verify-export.js';

/**
 * `npm run verify-export -- <file[.gz] | -> [--keys keys.json | --public-key key.pem …] [--json]`
 *
 * Checks an export offline, with no database: every event's hash, the links between them, the
 * trailer's figures and the signed checkpoints (see src/export/verify-export.ts). The file is
 * streamed, gzip or not, so any size verifies in constant memory. A keyed chain needs the
 * deployment's CHAIN_HMAC_SECRET in the environment.
 *
 * Exit status: 0 verified, 1 the export does not verify, 2 usage or setup error.
 */

const USAGE = `usage: npm run verify-export -- <export.jsonl|export.csv[.gz] | -> [--keys keys.json | --public-key key.pem …] [--json]

  <file>              an export from GET /export (JSON Lines or CSV, plain or gzip); - reads stdin
  --keys FILE         the deployment's checkpoint keys with their periods, as JSON
                      (npm run deployment -- keys, or GraphQL auditChainKeys): a checkpoint
                      verifies when its key was trusted at the time it was signed
  --public-key FILE   a trusted checkpoint public key (SPKI PEM; GraphQL auditChainKey), for any
                      time; may be repeated, and a file may hold several keys.
                      Without --keys or --public-key the keys written in the export are used,
                      which proves consistency but not origin.
  --json              print the full result as JSON instead of the summary
  environment         CHAIN_HMAC_SECRET when the deployment keys its chain`;

class UsageError extends Error {}

interface Args {
  file: string;
  publicKeys: KeyObject[];
  keys: TrustedKeyJson[] | undefined;
  json: boolean;
}

/** Every public key in a PEM file (one or several blocks); each must be Ed25519. */
function publicKeysIn(path: string): KeyObject[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`--public-key ${path}: ${(err as Error).message}`);
  }
  const blocks = text.match(/-----BEGIN PUBLIC KEY-----[\s\S]*?-----END PUBLIC KEY-----/g) ?? [];
  if (blocks.length === 0) throw new UsageError(`--public-key ${path}: no PUBLIC KEY in it`);
  return blocks.map((pem) => {
    let key: KeyObject;
    try {
      key = createPublicKey(pem);
    } catch (err) {
      throw new UsageError(`--public-key ${path}: ${(err as Error).message}`);
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new UsageError(`--public-key ${path}: not an Ed25519 public key`);
    }
    return key;
  });
}

/** The keys with periods in a JSON file (a list of { keyId, publicKeyPem, trustedFrom, retiredAt }). */
function keysIn(path: string): TrustedKeyJson[] {
  let list: unknown;
  try {
    list = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--keys ${path}: ${(err as Error).message}`);
  }
  // The JSON of a GraphQL answer is taken as it comes, too.
  const data = (list as { data?: { auditChainKeys?: unknown } })?.data?.auditChainKeys;
  const keys = Array.isArray(list) ? list : data;
  if (!Array.isArray(keys) || keys.length === 0) {
    throw new UsageError(`--keys ${path}: expected a non-empty list of keys`);
  }
  for (const [i, k] of keys.entries()) {
    try {
      trustedKeyFromJson(k as TrustedKeyJson);
    } catch (err) {
      throw new UsageError(`--keys ${path}: key ${i}: ${(err as Error).message}`);
    }
  }
  return keys as TrustedKeyJson[];
}

function parseArgs(argv: string[]): Args {
  let file: string | undefined;
  const publicKeys: KeyObject[] = [];
  let keys: TrustedKeyJson[] | undefined;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') throw new UsageError('');
    if (a === '--json') json = true;
    else if (a === '--public-key') {
      const path = argv[++i];
      if (!path) throw new UsageError('--public-key needs a file');
      publicKeys.push(...publicKeysIn(path));
    } else if (a === '--keys') {
      const path = argv[++i];
      if (!path) throw new UsageError('--keys needs a file');
      if (keys) throw new UsageError('one --keys file');
      keys = keysIn(path);
    } else if (a.startsWith('--')) throw new UsageError(`unknown option ${a}`);
    else if (file === undefined) file = a;
    else throw new UsageError(`one file at a time (got ${file} and ${a})`);
  }
  if (file === undefined) throw new UsageError('which file?');
  return { file, publicKeys, keys, json };
}

function summary(file: string, r: ExportVerification): string {
  const lines = [
    `${file}: ${r.format ?? 'unknown format'}${r.gzip ? ', gzip' : ''}` +
      (r.tenant ? `, tenant ${r.tenant}` : '') +
      (r.complete === null ? '' : r.complete ? ', complete export' : ', filtered export'),
  ];
  for (const m of r.months) {
    const seqs = m.count ? `positions ${m.firstSeq}..${m.lastSeq}` : 'no events';
    const cp = m.checkpointSeq === null ? 'no checkpoint' : `checkpoint at ${m.checkpointSeq}`;
    lines.push(`  ${m.month.slice(0, 7)}  ${String(m.count).padStart(9)} events  ${seqs}  ${cp}`);
  }
  if (r.keyIds.length > 0) {
    const keys = r.keyIds.map((k) => `${k.slice(0, 16)}…`).join(', ');
    lines.push(
      `checkpoints: ${r.checkpointsVerified} verified with key${r.keyIds.length > 1 ? 's' : ''} ${keys} ` +
        `(${r.keySource === 'given' ? 'given on the command line' : 'from the export itself'})`,
    );
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  if (r.ok) {
    lines.push(`OK: ${r.rows} events in ${r.months.length} month(s) verified`);
  } else {
    lines.push(`FAILED after ${r.rows} events: ${describeProblem(r.problem!)}`);
  }
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  let args: Args;
  let hmacSecret: string | undefined;
  try {
    args = parseArgs(argv);
    hmacSecret = loadConfig().chainHmacSecret;
  } catch (err) {
    if (err instanceof UsageError) {
      if (err.message) console.error(err.message);
      console.error(USAGE);
      return 2;
    }
    if (err instanceof ConfigError) {
      console.error(err.message);
      return 2;
    }
    throw err;
  }
  const source =
    args.file === '-' ? process.stdin : createReadStream(args.file, { highWaterMark: 1024 * 1024 });
  let result: ExportVerification;
  try {
    result = await verifyExport(source, {
      publicKey: args.publicKeys.length ? args.publicKeys : undefined,
      keys: args.keys,
      hmacSecret,
      // Progress only for a person watching; never in a pipe or a log.
      onProgress: process.stderr.isTTY
        ? (rows) => process.stderr.write(`\r${rows} events verified…`)
        : undefined,
    });
  } catch (err) {
    console.error(`cannot read ${args.file}: ${(err as Error).message}`);
    return 2;
  }
  if (process.stderr.isTTY && result.rows >= 100_000) process.stderr.write('\n');
  console.log(args.json ? JSON.stringify(result, null, 2) : summary(args.file, result));
  return result.ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 2;
  },
);
