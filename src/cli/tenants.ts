import { parseArgs } from 'node:util';
import { parseTenantId, type TenantId } from '../domain/tenant.js';
import { type Cli, CliError, runCli, when } from './common.js';

const USAGE = `npm run tenants -- <command>

  provision <tenant id>
      creates the tenant's schema, tables and partitions (idempotent)
  list
      every tenant with its event count and partition range

Add --json for machine-readable output.`;

async function main(cli: Cli, argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
  });
  const [command, ...rest] = positionals;
  const out = (json: unknown, text: string) =>
    console.log(values.json ? JSON.stringify(json, null, 2) : text);
  if (values.help || !command) {
    console.log(USAGE);
    return;
  }
  if (command === 'provision') {
    const [raw] = rest;
    if (!raw) throw new CliError(`provision needs a tenant id\n\n${USAGE}`, 2);
    let tenant: TenantId;
    try {
      tenant = parseTenantId(raw);
    } catch (err) {
      throw new CliError((err as Error).message, 2);
    }
    const { created } = await cli.useCases.provisioning.provision(cli.actor, tenant);
    const existed = !created;
    out(
      { tenantId: tenant, created: !existed },
      existed ? `Tenant ${tenant} exists; brought up to date` : `Provisioned tenant ${tenant}`,
    );
    return;
  }
  if (command === 'list') {
    const all = [];
    let after: string | null = null;
    for (;;) {
      const page = await cli.directory.list(500, after);
      all.push(...page.slice(0, 500));
      if (page.length <= 500) break;
      after = page[499]!.tenantId;
    }
    const rows = [];
    for (const t of all) rows.push({ ...t, usage: await cli.directory.usage(t.tenantId) });
    out(
      rows,
      rows.length === 0
        ? 'no tenants'
        : rows
            .map(
              (r) =>
                `${r.tenantId.padEnd(40)}  ${`${r.usage.eventsExact ? '' : '~'}${r.usage.events}`.padStart(12)} events  ` +
                `${r.usage.partitions} partitions ${when(r.usage.from)} … ${when(r.usage.until)}  created ${when(r.createdAt)}`,
            )
            .join('\n'),
    );
    return;
  }
  throw new CliError(`unknown command "${command}"\n\n${USAGE}`, 2);
}

await runCli(main);
