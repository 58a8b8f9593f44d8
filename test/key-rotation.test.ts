import { spawnSync } from 'node:child_process';
import { sign } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  keyPeriodStatement,
  signCheckpoint,
  type TrustedKeyJson,
} from '../src/domain/checkpoint.js';
import { verifyExport } from '../src/export/verify-export.js';
import { loadSigningKey, newSigningKeyPem, signingKeyOfPem } from '../src/integrity/signing-key.js';
import { extraDatabase } from './support/file-database.js';
import { CREATE, event, newTenant, startApp, type TestApp } from './support/harness.js';

/**
 * The checkpoint key of a deployment: registered by its first instance, required of every
 * other one at start, and rotated without losing what the retired key signed. Each test here
 * is one deployment: a database of its own and key files of its own.
 */

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'auditgraph-keys-'));

const SIGN = `mutation { signAuditCheckpoints { data { month seq keyId signedAt } } }`;
const VERIFY = `query V($from: DateTime!, $to: DateTime!) {
  verifyAuditChain(from: $from, to: $to) {
    ok
    months { month status checkpoints }
    firstBreak { kind seq message }
  }
}`;
const KEYS = `{ auditChainKeys { keyId publicKeyPem trustedFrom retiredAt endorsedBy endorsement } }`;
const FROM = new Date(Date.now() - 365 * 86_400_000).toISOString();
const TO = new Date(Date.now() + 86_400_000).toISOString();
const MONTH_AGO = new Date(Date.now() - 40 * 86_400_000);

/** Runs `npm run <script>` as an operator would, against the deployment's database. */
function run(cli: string, args: string[], env: Record<string, string>) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', cli, ...args], {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
      ...env,
    },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function write(t: TestApp, tenant: string, n: number, occurredAt = new Date()) {
  const r = await t.gql(tenant, CREATE, {
    input: {
      ack: 'COMMITTED',
      events: Array.from({ length: n }, () => event({ occurredAt: occurredAt.toISOString() })),
    },
  });
  expect(r.createAuditEvents.stored).toBe(n);
}

const verifyOf = async (t: TestApp, tenant: string) =>
  (await t.gql(tenant, VERIFY, { from: FROM, to: TO })).verifyAuditChain;

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('rotating the checkpoint key', () => {
  const apps: TestApp[] = [];
  let url: string;
  const keyFile = join(dir, 'rotated.pem');
  const oldCopy = join(dir, 'rotated-old.pem');
  const tenant = newTenant('rot');
  const env = () => ({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: keyFile });
  const start = async (extra: Record<string, string> = {}) => {
    const t = await startApp({ ...env(), ...extra });
    apps.push(t);
    return t;
  };
  let first: TestApp;
  let second: TestApp;
  let oldKeyId: string;
  let newKeyId: string;

  beforeAll(async () => {
    url = await extraDatabase('rotation');
  });
  afterAll(async () => {
    for (const t of apps) await t.stop();
  });

  it('signs with the first key, rotates, signs with the next, and verifies what both signed', async () => {
    first = await start();
    await write(first, tenant, 8, MONTH_AGO);
    await write(first, tenant, 5);
    const before = (await first.gql(tenant, SIGN)).signAuditCheckpoints.data;
    expect(before).toHaveLength(2);
    oldKeyId = before[0].keyId;
    expect(new Set(before.map((c: { keyId: string }) => c.keyId))).toEqual(new Set([oldKeyId]));
    copyFileSync(keyFile, oldCopy);

    // The operator rotates: a new key replaces the instance's file, the old one is retired.
    const rotated = run('src/cli/deployment.ts', ['rotate-checkpoint-key', '--json'], env());
    expect(rotated.stderr).toBe('');
    expect(rotated.status).toBe(0);
    const out = JSON.parse(rotated.stdout);
    newKeyId = out.current;
    expect(newKeyId).not.toBe(oldKeyId);
    expect(out.retired.keyId).toBe(oldKeyId);
    expect(loadSigningKey(keyFile).keyId).toBe(newKeyId);

    // The instance still holding the retired key signs nothing now, and says why.
    await write(first, tenant, 2);
    const refused = await first.refused(tenant, SIGN);
    expect(refused.extensions).toMatchObject({ code: 'CHECKPOINT_KEY_RETIRED', retryable: true });

    // Restarted with the new file, it signs again, with the new key.
    second = await start();
    const after = (await second.gql(tenant, SIGN)).signAuditCheckpoints.data;
    expect(after.map((c: { keyId: string }) => c.keyId)).toEqual([newKeyId]);

    // Both months verify: the older one against the retired key's checkpoint, the current one
    // against a checkpoint of each key.
    const v = await verifyOf(second, tenant);
    expect(v.firstBreak).toBeNull();
    expect(v.ok).toBe(true);
    expect(
      v.months.map((m: { status: string; checkpoints: number }) => [m.status, m.checkpoints]),
    ).toEqual([
      ['OK', 1],
      ['OK', 2],
    ]);

    const keys: TrustedKeyJson[] = (await second.gql(tenant, KEYS)).auditChainKeys;
    expect(keys.map((k) => k.keyId)).toEqual([oldKeyId, newKeyId]);
    expect(keys[0]!.retiredAt).toBe(keys[1]!.trustedFrom);
    expect(keys[1]!.retiredAt).toBeNull();
    expect(keys[0]!.endorsedBy).toBe(newKeyId);
  });

  it('refuses to start an instance with the retired key, or with a key the deployment never had', async () => {
    await expect(start({ CHECKPOINT_KEY_FILE: oldCopy })).rejects.toThrow(
      /holds checkpoint key .* which this deployment retired at/,
    );
    const stranger = join(dir, 'stranger.pem');
    writeFileSync(stranger, newSigningKeyPem(), { mode: 0o600 });
    await expect(start({ CHECKPOINT_KEY_FILE: stranger })).rejects.toThrow(
      /but this deployment signs its checkpoints with .*: give every instance the same key file/,
    );
    // As a process: the one line that says so, exit status 1, no stack trace.
    const proc = spawnSync(process.execPath, ['dist/main.js'], {
      cwd: root,
      env: {
        PATH: process.env.PATH,
        DATABASE_URL: url,
        AUTH_MODE: 'dev',
        PORT: '0',
        CHECKPOINT_KEY_FILE: stranger,
        CURSOR_SECRET: 'test-secret-test-secret-test-secret-0123',
        DLQ_DIR: join(dir, 'dlq-stranger'),
        LOG_LEVEL: 'silent',
      },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(proc.status).toBe(1);
    expect(proc.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(/^CHECKPOINT_KEY_FILE \(.*stranger\.pem\) holds checkpoint key /),
    ]);
    // The status command tells the operator the same before anything is started.
    const status = run('src/cli/deployment.ts', ['status'], {
      ...env(),
      CHECKPOINT_KEY_FILE: oldCopy,
    });
    expect(status.status).toBe(0);
    expect(status.stdout).toMatch(/RETIRED: an instance started here refuses to start/);
  });

  it('does not trust a checkpoint signed by a key it never had, nor one the retired key signed after its retirement', async () => {
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    try {
      const forge = async (forTenant: string, pem: string, signedAt: Date) => {
        await write(second, forTenant, 3);
        const [head] = (
          await db.query(`select month, seq, hash from "t_${forTenant}".chain_heads where seq > 0`)
        ).rows;
        const c = signCheckpoint(
          {
            tenant: forTenant,
            month: head.month,
            seq: Number(head.seq),
            hash: head.hash,
            signedAt,
          },
          signingKeyOfPem(pem).privateKey,
        );
        await db.query(
          `insert into "t_${forTenant}".chain_checkpoints (month, seq, hash, signed_at, key_id, signature)
           values ($1, $2, $3, $4, $5, $6)`,
          [c.month, c.seq, c.hash, c.signedAt, c.keyId, c.signature],
        );
        return verifyOf(second, forTenant);
      };
      const never = await forge(newTenant('rotx'), newSigningKeyPem(), new Date());
      expect(never.ok).toBe(false);
      expect(never.firstBreak).toMatchObject({ kind: 'BAD_SIGNATURE' });
      expect(never.firstBreak.message).toMatch(/not one of the deployment's vouched-for keys/);

      // A key slipped into the list by someone who can write the database, claiming to be a
      // retired key endorsed by the current one, vouches for nothing: its endorsement does not
      // hold. The deployment's own history still verifies beside it.
      const slipped = newSigningKeyPem();
      const slippedKey = signingKeyOfPem(slipped);
      await db.query(
        `insert into auditgraph.checkpoint_keys
           (key_id, public_key, trusted_from, retired_at, endorsed_by, endorsement)
         values ($1, $2, '2020-01-01', now() + interval '1 day', $3, $4)`,
        [slippedKey.keyId, slippedKey.publicKeyPem, newKeyId, Buffer.alloc(64, 7)],
      );
      try {
        const bySlipped = await forge(newTenant('rotw'), slipped, new Date());
        expect(bySlipped.firstBreak).toMatchObject({ kind: 'BAD_SIGNATURE' });
        expect(bySlipped.firstBreak.message).toMatch(
          /not one of the deployment's vouched-for keys/,
        );
        expect((await verifyOf(second, tenant)).ok).toBe(true);
      } finally {
        await db.query(`delete from auditgraph.checkpoint_keys where key_id = $1`, [
          slippedKey.keyId,
        ]);
      }

      // The retired key's period widened in the table no longer matches what its successor
      // signed: the key is not vouched for, and what it signed shows so.
      await db.query(
        `update auditgraph.checkpoint_keys set retired_at = retired_at + interval '1 year'
          where key_id = $1`,
        [oldKeyId],
      );
      try {
        const widened = await verifyOf(second, tenant);
        expect(widened.firstBreak).toMatchObject({ kind: 'BAD_SIGNATURE' });
      } finally {
        await db.query(
          `update auditgraph.checkpoint_keys set retired_at = retired_at - interval '1 year'
            where key_id = $1`,
          [oldKeyId],
        );
      }
      expect((await verifyOf(second, tenant)).ok).toBe(true);

      // The retired key, still in the hands of whoever had it, cannot vouch for later history.
      const retiredAt = new Date(
        (
          await db.query(`select retired_at from auditgraph.checkpoint_keys where key_id = $1`, [
            oldKeyId,
          ])
        ).rows[0].retired_at,
      );
      const late = await forge(
        newTenant('roty'),
        readFileSync(oldCopy, 'utf8'),
        new Date(retiredAt.getTime() + 5 * 60_000),
      );
      expect(late.firstBreak).toMatchObject({ kind: 'BAD_SIGNATURE' });
      expect(late.firstBreak.message).toMatch(/after its key .* was retired/);
      // Negative control of the period: the same key inside its period is trusted.
      const inPeriod = await forge(
        newTenant('rotz'),
        readFileSync(oldCopy, 'utf8'),
        new Date(retiredAt.getTime() - 60_000),
      );
      expect(inPeriod.firstBreak).toBeNull();
      expect(inPeriod.ok).toBe(true);
    } finally {
      await db.end();
    }
  });

  it('exports name the key of each covering checkpoint; the offline verifier takes the deployment’s keys', async () => {
    const base = second.url.replace(/\/graphql$/, '');
    const res = await fetch(`${base}/export`, { headers: { 'x-tenant-id': tenant } });
    expect(res.status).toBe(200);
    const text = await res.text();
    const { trailer } = JSON.parse(text.trimEnd().split('\n').at(-1)!);
    expect(trailer.checkpoints.map((c: { keyId: string }) => c.keyId)).toEqual([
      oldKeyId,
      newKeyId,
    ]);
    expect(trailer.keys.map((k: TrustedKeyJson) => k.keyId)).toEqual([oldKeyId, newKeyId]);

    const keys = run('src/cli/deployment.ts', ['keys'], env());
    expect(keys.status).toBe(0);
    const keysFile = join(dir, 'keys.json');
    writeFileSync(keysFile, keys.stdout);
    const r = await verifyExport(Readable.from([Buffer.from(text)]), {
      keys: JSON.parse(keys.stdout),
    });
    expect(r.problem).toBeNull();
    expect(r.keyIds).toEqual([oldKeyId, newKeyId]);
    expect(r.keySource).toBe('given');

    // With the current key alone, the older month's checkpoint is not vouched for.
    const current = await verifyExport(Readable.from([Buffer.from(text)]), {
      publicKey: signingKeyOfPem(readFileSync(keyFile, 'utf8')).publicKeyPem,
    });
    expect(current.problem).toMatchObject({ kind: 'BAD_SIGNATURE' });

    const exportFile = join(dir, 'export.jsonl');
    writeFileSync(exportFile, text);
    const cli = run('src/cli/verify-export.ts', [exportFile, '--keys', keysFile], {});
    expect(cli.stderr).toBe('');
    expect(cli.status).toBe(0);
    expect(cli.stdout).toMatch(/verified with keys .*, .* \(given on the command line\)/);
  });

  it('refuses to start an instance whose CHAIN_HMAC_SECRET is not the deployment’s', async () => {
    await expect(
      start({ CHAIN_HMAC_SECRET: 'another-chain-secret-another-chain-secret' }),
    ).rejects.toThrow(
      /CHAIN_HMAC_SECRET \(set here\) is not the one this deployment's chains are hashed with/,
    );
  });
});

describe('the key list changed by someone who can only write the database', () => {
  it('does not stop the deployment’s signing, nor its verifications', async () => {
    const url = await extraDatabase('tamper');
    const keyFile = join(dir, 'tamper.pem');
    const t = await startApp({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: keyFile });
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    try {
      const tenant = newTenant('tamp');
      await write(t, tenant, 3);
      const own = loadSigningKey(keyFile).keyId;
      // The current key retired in the table, and a key of the writer's made current, with an
      // endorsement of the real key's period that the writer's key signed.
      const fake = signingKeyOfPem(newSigningKeyPem());
      const [row] = (
        await db.query(`select trusted_from from auditgraph.checkpoint_keys where key_id = $1`, [
          own,
        ])
      ).rows;
      const retiredAt = new Date(Date.now() - 3_600_000);
      const endorsement = sign(
        null,
        keyPeriodStatement(
          {
            keyId: own,
            publicKeyPem: loadSigningKey(keyFile).publicKeyPem,
            trustedFrom: new Date(row.trusted_from),
            retiredAt,
          },
          fake.keyId,
        ),
        fake.privateKey,
      );
      await db.query(
        `update auditgraph.checkpoint_keys set retired_at = $2, endorsed_by = $3, endorsement = $4
          where key_id = $1`,
        [own, retiredAt, fake.keyId, endorsement],
      );
      await db.query(
        `insert into auditgraph.checkpoint_keys (key_id, public_key, trusted_from)
         values ($1, $2, '1970-01-01')`,
        [fake.keyId, fake.publicKeyPem],
      );
      // The instance signs on (its key's retirement is not signed by its key), and what it signs
      // verifies.
      const signed = (await t.gql(tenant, SIGN)).signAuditCheckpoints.data;
      expect(signed.map((c: { keyId: string }) => c.keyId)).toEqual([own]);
      const v = await verifyOf(t, tenant);
      expect(v.firstBreak).toBeNull();
      expect(v.ok).toBe(true);
      // The writer's key vouches for nothing here.
      const keys: TrustedKeyJson[] = (await t.gql(tenant, KEYS)).auditChainKeys;
      expect(keys.map((k) => k.keyId)).toEqual([own]);
      // Nor in what `npm run deployment -- keys` gives an auditor: it is vouched for by the key file.
      const listed = run('src/cli/deployment.ts', ['keys'], {
        DATABASE_URL: url,
        CHECKPOINT_KEY_FILE: keyFile,
      });
      expect(listed.status).toBe(0);
      expect(JSON.parse(listed.stdout).map((k: TrustedKeyJson) => k.keyId)).toEqual([own]);
      // A start with the deployment's key after such a change is refused, saying which it may be.
      await expect(startApp({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: keyFile })).rejects.toThrow(
        /but the key did not sign that retirement: .* someone without the keys changed auditgraph\.checkpoint_keys/,
      );
    } finally {
      await db.end();
      await t.stop();
    }
  });
});

describe('a deployment’s first instance', () => {
  it('registers its key, so a second instance started with its own new key file is refused', async () => {
    const url = await extraDatabase('firstkey');
    const a = await startApp({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: join(dir, 'a.pem') });
    try {
      // Each instance making its own key file (no shared volume) used to sign with a key of its
      // own; now the second is told to use the deployment's.
      await expect(
        startApp({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: join(dir, 'b.pem') }),
      ).rejects.toThrow(
        /\(.*b\.pem\) does not exist, and this deployment signs its checkpoints with .*: copy the deployment's key file there/,
      );
      // What it made is taken back: no stray key is left to be mistaken for the deployment's.
      expect(existsSync(join(dir, 'b.pem'))).toBe(false);
      // Negative control: the same file starts.
      const b = await startApp({ DATABASE_URL: url, CHECKPOINT_KEY_FILE: join(dir, 'a.pem') });
      await b.stop();
    } finally {
      await a.stop();
    }
  });
});
