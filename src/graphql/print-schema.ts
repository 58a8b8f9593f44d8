import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { printSchema } from 'graphql';
import { buildSchema } from './schema.js';

/** `npm run schema:print` writes schema/schema.graphql; `--check` fails if it is out of date. */
const target = fileURLToPath(new URL('../../schema/schema.graphql', import.meta.url));

export function printedSchema(): string {
  return `${printSchema(buildSchema())}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const sdl = printedSchema();
  if (process.argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(target, 'utf8');
    } catch {}
    if (current !== sdl) {
      console.error(
        'schema/schema.graphql is out of date: run `npm run schema:print` and commit it',
      );
      process.exit(1);
    }
    console.log('schema/schema.graphql is up to date');
  } else {
    writeFileSync(target, sdl);
    console.log(`wrote ${target}`);
  }
}
