import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fingerprintOf, SharedSettings } from '../cluster/shared-settings.js';
import { ServiceSecretStore } from '../db/service-secret-store.js';
import { type TrustedKey, trustedKeyToJson } from '../domain/checkpoint.js';
import { CheckpointKeyring } from '../integrity/keyring.js';
import { newSigningKeyPem, type SigningKey, signingKeyOfPem } from '../integrity/signing-key.js';
import { Refusal } from '../refusal.js';
import { type Cli, CliError, runCli, when } from './common.js';

const USAGE = `npm run deployment -- <command>

  status
      the deployment's checkpoint keys (current and retired, with their periods), and whether
      this environment's CHECKPOINT_KEY_FILE, CHAIN_HMAC_SECRET and CURSOR_SECRET are the
      deployment's: what an instance started here would do
  keys
      the checkpoint keys as JSON, for npm run verify-export -- <file> --keys <that file>
  rotate-checkpoint-key [--key-file <file>]
      makes a new Ed25519 key the deployment's checkpoint key and retires the current one, now.
      Without --key-file, a new key replaces CHECKPOINT_KEY_FILE; with it, the key in that file
      (created when the file does not exist). Checkpoints signed before stay verifiable with the
      retired key. Instances still holding it stop signing: restart each with the new file.
  adopt-cursor-key
      makes this environment's CURSOR_SECRET (unset: the deployment's own key) the cursor key
      every instance must hold; cursors issued with the old one are refused from then on

Add --json for machine-readable output.`;

function keyLine(k: TrustedKey): string {
  const period = `trusted from ${when(k.trustedFrom)}${k.retiredAt ? ` to ${when(k.retiredAt)}` : ''}`;
  return `${k.keyId}  ${k.retiredAt ? 'retired' : 'current'}  ${period}`;
}

/** Reads the private key in `file`, or makes one there when there is no file. */
function keyAt(file: string): { key: SigningKey; created: boolean } {
  if (!existsSync(file)) {
    const pem = newSigningKeyPem();
    writeFileSync(file, pem, { mode: 0o600, flag: 'wx' });
    return { key: signingKeyOfPem(pem), created: true };
  }
  try {
    return { key: signingKeyOfPem(readFileSync(file, 'utf8')), created: false };
  } catch (err) {
    throw new CliError(
      `${file}: not an Ed25519 private key (PKCS#8 PEM): ${(err as Error).message}`,
      2,
    );
  }
}

/** The cursor key an instance started here would use: CURSOR_SECRET, else the deployment's own. */
function cursorKeyOf(cli: Cli): Promise<string> {
  return cli.config.cursorSecret
    ? Promise.resolve(cli.config.cursorSecret)
    : new ServiceSecretStore(cli.db).getOrCreate('cursor');
}

/** The key in CHECKPOINT_KEY_FILE, or undefined when there is none to read. */
function configuredKey(cli: Cli): SigningKey | undefined {
  if (!existsSync(cli.config.checkpointKeyFile)) return undefined;
  return keyAt(cli.config.checkpointKeyFile).key;
}

async function rotate(cli: Cli, keyring: CheckpointKeyring, keyFile: string | undefined) {
  const target = keyFile ?? cli.config.checkpointKeyFile;
  // The current key, when it is at hand, signs its own retirement (see CheckpointKeyring.rotate).
  const held = configuredKey(cli);
  // Without --key-file the new key is written beside the current file and renamed over it only
  // once the deployment has taken it: a failed rotation leaves the instance's file as it was.
  const aside = keyFile ? undefined : `${target}.${process.pid}.new`;
  const { key, created } = aside
    ? { key: signingKeyOfPem(newSigningKeyPem()), created: true }
    : keyAt(target);
  if (aside)
    writeFileSync(aside, key.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  let retired: TrustedKey | null;
  let noticed: boolean;
  try {
    ({ retired, noticed } = await keyring.rotate(key, held));
  } catch (err) {
    if (aside) rmSync(aside, { force: true });
    if (err instanceof Refusal) throw new CliError(err.message);
    throw err;
  }
  if (aside) renameSync(aside, target);
  return { key, retired, target, created, noticed };
}

/** What `status` shows: the keys, and what an instance started with this environment would do. */
async function status(
  cli: Cli,
  keyring: CheckpointKeyring,
  shared: SharedSettings,
): Promise<[json: unknown, text: string]> {
  const keys = await keyring.list();
  const current = keys.find((k) => k.retiredAt === null);
  let mine = '(none yet: the first instance started here creates it)';
  let mineId: string | null = null;
  if (existsSync(cli.config.checkpointKeyFile)) {
    mineId = keyAt(cli.config.checkpointKeyFile).key.keyId;
    mine = !current
      ? `${mineId} (becomes the deployment's at the first start)`
      : mineId === current.keyId
        ? `${mineId} (the current key)`
        : keys.some((k) => k.keyId === mineId)
          ? `${mineId} (RETIRED: an instance started here refuses to start)`
          : `${mineId} (NOT the deployment's: an instance started here refuses to start)`;
  }
  const cursorKey = await cursorKeyOf(cli);
  const settings = await shared.recordedFingerprints();
  const match = (name: 'chain-hmac' | 'cursor', value: string) => {
    const recorded = settings.get(name);
    if (recorded === undefined) return 'not recorded yet (the first start records it)';
    return recorded === fingerprintOf(name, value)
      ? 'the deployment’s'
      : 'DIFFERENT: refused at start';
  };
  const chain = match('chain-hmac', cli.config.chainHmacSecret ?? '');
  const cursor = match('cursor', cursorKey);
  return [
    {
      keys: keys.map(trustedKeyToJson),
      keyFile: { path: cli.config.checkpointKeyFile, keyId: mineId },
      chainHmacSecret: chain,
      cursorKey: cursor,
    },
    [
      'checkpoint keys:',
      ...(keys.length ? keys.map((k) => `  ${keyLine(k)}`) : ['  none yet']),
      `CHECKPOINT_KEY_FILE ${cli.config.checkpointKeyFile}: ${mine}`,
      `CHAIN_HMAC_SECRET (${cli.config.chainHmacSecret === undefined ? 'unset' : 'set'}): ${chain}`,
      `cursor key (CURSOR_SECRET ${cli.config.cursorSecret ? 'set' : 'unset'}): ${cursor}`,
    ].join('\n'),
  ];
}

async function main(cli: Cli, argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'key-file': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command] = positionals;
  const out = (json: unknown, text: string) =>
    console.log(values.json ? JSON.stringify(json, null, 2) : text);
  if (values.help || !command) {
    console.log(USAGE);
    return;
  }
  const keyring = new CheckpointKeyring(cli.db, cli.config.checkpointKeyFile);
  const shared = new SharedSettings(cli.db);
  if (command === 'keys') {
    // Vouched for by the deployment's key in CHECKPOINT_KEY_FILE, not taken from the table as
    // it stands: a row added by someone who can write the database must not reach an auditor.
    const own = configuredKey(cli);
    if (!own) {
      throw new CliError(
        `keys needs the deployment's current key in CHECKPOINT_KEY_FILE (${cli.config.checkpointKeyFile}) ` +
          'to vouch for the list; or take auditChainKeys from a running instance',
        2,
      );
    }
    const { keys, broken } = await keyring.vouchedBy(own.keyId);
    if (broken) console.error(`warning: ${broken}: left out`);
    console.log(JSON.stringify(keys.map(trustedKeyToJson), null, 2));
    return;
  }
  if (command === 'status') {
    out(...(await status(cli, keyring, shared)));
    return;
  }
  if (command === 'rotate-checkpoint-key') {
    const r = await rotate(cli, keyring, values['key-file']);
    cli.log.warn(
      { keyId: r.key.keyId, retired: r.retired?.keyId ?? null },
      'checkpoint key rotated',
    );
    out(
      {
        current: r.key.keyId,
        retired: r.retired ? trustedKeyToJson(r.retired) : null,
        keyFile: r.target,
        retirementSigned: r.noticed,
      },
      `The deployment's checkpoint key is now ${r.key.keyId}\n` +
        `  key file: ${r.target}${r.created ? ' (new key, mode 0600: back it up, apart from the database)' : ''}\n` +
        (r.retired ? `  retired:  ${r.retired.keyId} (its checkpoints stay verifiable)\n` : '') +
        (r.noticed || !r.retired
          ? '\nRestart every instance with this key file: until then, instances holding the ' +
            'retired key sign no checkpoints (and say so in their log).'
          : '\nThe retired key was not at hand (CHECKPOINT_KEY_FILE), so it could not sign its ' +
            'retirement: instances still holding it go on signing, and what they sign from now ' +
            'on is BAD_SIGNATURE. Restart every instance with this key file now.'),
    );
    return;
  }
  if (command === 'adopt-cursor-key') {
    const cursorKey = await cursorKeyOf(cli);
    await shared.adopt('cursor', cursorKey);
    out(
      { adopted: 'cursor' },
      `The deployment's cursor key is now ${cli.config.cursorSecret ? 'this CURSOR_SECRET' : 'its own (CURSOR_SECRET unset)'}: restart every instance with it`,
    );
    return;
  }
  throw new CliError(`unknown command "${command}"\n\n${USAGE}`, 2);
}

await runCli(main);
