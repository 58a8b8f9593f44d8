import { Writable } from 'node:stream';
import { createDatabase } from '../../src/db/client.js';
import { parseTenantId } from '../../src/domain/tenant.js';
import { AuditExporter } from '../../src/export/exporter.js';
import { CheckpointService } from '../../src/integrity/checkpoints.js';
import { CheckpointKeyring } from '../../src/integrity/keyring.js';
import { loadSigningKey } from '../../src/integrity/signing-key.js';
import { createLogger } from '../../src/logger.js';
import { AuditEventReader } from '../../src/query/audit-event-reader.js';

/**
 * Negative control of the export's memory test (test/export.test.ts), run as its own process so
 * that its RSS is sampled exactly like the service's: the exporter's output written to a slow
 * client *without* waiting for it — write()'s answer ignored, as a route without backpressure
 * would do. Prints `reading` when it starts and `done` when everything was read.
 *
 * Usage: node --import tsx test/support/export-without-backpressure.ts <database url> <tenant>
 *        <checkpoint key file> <occurredBefore ISO>
 */
const [url, tenant, keyFile, before] = process.argv.slice(2);
if (!url || !tenant || !keyFile || !before) throw new Error('usage: <url> <tenant> <key> <before>');
const log = createLogger({ logLevel: 'silent' });
const db = createDatabase(
  { kind: 'pg', url, poolSize: 2, applicationName: 'export-negative-control' },
  log,
);
const exporter = new AuditExporter(
  new AuditEventReader(db),
  new CheckpointService(db, loadSigningKey(keyFile), new CheckpointKeyring(db, keyFile), log, 0),
  { hmac: false },
);
const snap = await exporter.snapshot(parseTenantId(tenant), { occurredBefore: new Date(before) });
const slowClient = new Writable({ write: (_chunk, _enc, done) => setTimeout(done, 5) });
process.stdout.write('reading\n');
for await (const chunk of exporter.lines(snap, 'jsonl')) slowClient.write(chunk);
process.stdout.write('done\n');
slowClient.destroy();
await db.close();
