import { parseArgs } from 'node:util';
import { type ApiKeyRecord, SCOPES } from '../domain/api-key.js';
import { UnknownTenantError, ValidationError } from '../domain/errors.js';
import { parseTenantId, type TenantId } from '../domain/tenant.js';
import type { CreatedApiKey } from '../usecases/key-administration.js';
import { type Cli, CliError, runCli, when } from './common.js';

const USAGE = `npm run keys -- <command>

  create --admin --label <label> [--expires <ISO date>]
      a platform key (no tenant, scope tenants:admin): tenant administration only
  create --tenant <id> --scopes <s1,s2> --label <label> [--expires <ISO date>]
      a key of one (provisioned) tenant; scopes: ${SCOPES.filter((s) => s !== 'tenants:admin').join(', ')}
  revoke <key id>
      refused from its next request (other instances: within API_KEY_CACHE_MS)
  list [--tenant <id> | --platform]
      keys (never the keys themselves: they are shown once, at creation)

Add --json for machine-readable output.`;

function describe(k: ApiKeyRecord): Record<string, unknown> {
  return {
    id: k.id,
    tenantId: k.tenantId,
    scopes: k.scopes,
    label: k.label,
    prefix: k.prefix,
    createdAt: k.createdAt,
    lastUsedAt: k.lastUsedAt,
    expiresAt: k.expiresAt,
    revokedAt: k.revokedAt,
  };
}

function state(k: ApiKeyRecord): string {
  if (k.revokedAt) return `revoked ${when(k.revokedAt)}`;
  if (k.expiresAt && k.expiresAt <= new Date()) return `expired ${when(k.expiresAt)}`;
  return 'active';
}

async function main(cli: Cli, argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      admin: { type: 'boolean' },
      tenant: { type: 'string' },
      platform: { type: 'boolean' },
      scopes: { type: 'string' },
      label: { type: 'string' },
      expires: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command, ...rest] = positionals;
  const out = (json: unknown, text: string) =>
    console.log(values.json ? JSON.stringify(json, null, 2) : text);
  if (values.help || !command) {
    console.log(USAGE);
    return;
  }
  if (command === 'create') {
    if (!values.label) throw new CliError(`--label is required\n\n${USAGE}`, 2);
    if (values.admin === (values.tenant !== undefined)) {
      throw new CliError(`give either --admin or --tenant <id>\n\n${USAGE}`, 2);
    }
    const expiresAt = values.expires ? new Date(values.expires) : null;
    let created: CreatedApiKey;
    try {
      created = await cli.useCases.keys.create(cli.actor, {
        tenantId: values.admin ? null : values.tenant!,
        scopes: values.admin
          ? ['tenants:admin']
          : (values.scopes ?? '')
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean),
        label: values.label,
        expiresAt,
      });
    } catch (err) {
      if (err instanceof ValidationError) {
        throw new CliError(err.issues.map((i) => `${i.field}: ${i.message}`).join('\n'), 2);
      }
      if (err instanceof UnknownTenantError) {
        throw new CliError(
          `unknown tenant "${err.tenantId}": provision it first (npm run tenants -- provision ${err.tenantId})`,
        );
      }
      throw err;
    }
    const { key, secret } = created;
    out(
      { key: secret, apiKey: describe(key) },
      `Created API key ${key.id}\n` +
        `  tenant:  ${key.tenantId ?? '(none: platform key)'}\n` +
        `  scopes:  ${key.scopes.join(', ')}\n` +
        `  label:   ${key.label}\n` +
        `  expires: ${when(key.expiresAt)}\n\n` +
        'This is the key. It is shown once, now: only its hash is stored.\n\n' +
        `${secret}\n`,
    );
    return;
  }
  if (command === 'revoke') {
    const [id] = rest;
    if (!id) throw new CliError(`revoke needs a key id\n\n${USAGE}`, 2);
    const key = await cli.useCases.keys.revoke(cli.actor, id);
    if (!key) throw new CliError(`no API key with id ${id}`);
    out(describe(key), `Revoked API key ${key.id} (${key.label}) at ${when(key.revokedAt)}`);
    return;
  }
  if (command === 'list') {
    let keys: ApiKeyRecord[];
    if (values.platform) keys = await cli.useCases.keys.list(null);
    else if (values.tenant !== undefined) {
      let tenant: TenantId;
      try {
        tenant = parseTenantId(values.tenant);
      } catch (err) {
        throw new CliError((err as Error).message, 2);
      }
      keys = await cli.useCases.keys.list(tenant);
    } else keys = await cli.useCases.keys.listAll();
    const lines = keys.map(
      (k) =>
        `${k.id}  ${k.prefix}…  ${(k.tenantId ?? '(platform)').padEnd(20)}  ` +
        `${k.scopes.join(',').padEnd(36)}  ${state(k).padEnd(28)}  last used ${when(k.lastUsedAt)}  ${k.label}`,
    );
    out(keys.map(describe), lines.length ? lines.join('\n') : 'no API keys');
    return;
  }
  throw new CliError(`unknown command "${command}"\n\n${USAGE}`, 2);
}

await runCli(main);
