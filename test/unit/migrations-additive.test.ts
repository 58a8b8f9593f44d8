import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/*
 * Start-up migrates the schemas while instances of the previous version still serve (a rolling
 * upgrade), so every migration must leave a schema that the previous version's code still works
 * against: it may add (tables, nullable columns, columns with a default, indexes on new tables),
 * never remove, rename, retype or tighten what an older instance reads or writes. A release that
 * must remove something does it in two: one that stops using it, a later one that drops it.
 *
 * The checker below reads each migration's statements and names every one an older instance
 * may not survive. Migrations that did such a thing before the rule existed are listed, each
 * with the rule they break and why that was safe when they ran.
 */

const DRIZZLE = new URL('../../drizzle/', import.meta.url).pathname;

interface UnsafeStatement {
  rule: Rule;
  statement: string;
}

type Rule =
  | 'drop'
  | 'rename'
  | 'column-type'
  | 'set-not-null'
  | 'add-column-not-null-without-default'
  | 'add-column-rewrite'
  | 'constraint-on-existing-table'
  | 'index-on-existing-table'
  | 'trigger-on-existing-table'
  | 'data-change'
  | 'lock'
  | 'do-block';

const WHY: Record<Rule, string> = {
  drop: 'removes something an older instance may still read or write',
  rename: 'an older instance still uses the old name',
  'column-type': 'an older instance binds and reads the old type; the rewrite locks the table',
  'set-not-null': 'an older instance may insert rows without the column',
  'add-column-not-null-without-default':
    'an older instance inserts rows without the column: they would be refused',
  'add-column-rewrite':
    'a volatile default or a stored generated column rewrites the table under ACCESS EXCLUSIVE',
  'constraint-on-existing-table': 'may refuse rows an older instance writes',
  'index-on-existing-table':
    'builds under a SHARE lock: every write to the table waits until it is built',
  'trigger-on-existing-table': 'may refuse or change what an older instance does',
  'data-change': 'changes rows an older instance reads or relies on',
  lock: 'blocks older instances for as long as the migration runs',
  'do-block': 'runs code whose effect this check cannot see',
};

/**
 * Migrations written before this rule that break it, by folder name: the rules each breaks
 * and why that was safe when it ran. A new migration never goes here.
 */
const ALLOWED: Record<string, { rules: Rule[]; reason: string }> = {
  '20261126085017_immutable_events': {
    rules: ['trigger-on-existing-table'],
    reason:
      'the triggers refuse UPDATE and DELETE of events and ledger rows, which no version ever ran',
  },
  '20261126091748_hash_chain_and_holds': {
    rules: ['index-on-existing-table'],
    reason:
      'audit_events_chain_idx is an index on the new chain_seq column: it blocked writes while it was built, on 2026-11-26, the day audit_events itself was created',
  },
  '20261126104557_refuse_truncate': {
    rules: ['trigger-on-existing-table', 'do-block'],
    reason:
      'the triggers (and the DO block adding them to each partition) refuse TRUNCATE, which no version ever ran',
  },
};

/** Splits SQL into statements at `;` and statement breakpoints, outside quotes and comments. */
function statements(sql: string): string[] {
  const out: string[] = [];
  let current = '';
  let i = 0;
  while (i < sql.length) {
    const rest = sql.slice(i);
    if (rest.startsWith('--')) {
      const end = sql.indexOf('\n', i);
      i = end === -1 ? sql.length : end + 1;
      current += ' ';
      continue;
    }
    if (rest.startsWith('/*')) {
      const end = sql.indexOf('*/', i + 2);
      i = end === -1 ? sql.length : end + 2;
      current += ' ';
      continue;
    }
    const dollar = /^\$[A-Za-z_]*\$/.exec(rest);
    if (dollar) {
      const end = sql.indexOf(dollar[0], i + dollar[0].length);
      const stop = end === -1 ? sql.length : end + dollar[0].length;
      // A dollar-quoted body (a function's, a DO block's) is kept as an opaque literal.
      current += ' $body$ ';
      i = stop;
      continue;
    }
    const ch = sql[i]!;
    if (ch === "'") {
      let j = i + 1;
      while (j < sql.length) {
        if (sql[j] === "'" && sql[j + 1] === "'") j += 2;
        else if (sql[j] === "'") break;
        else j++;
      }
      current += " '' ";
      i = j + 1;
      continue;
    }
    if (ch === ';') {
      out.push(current);
      current = '';
      i++;
      continue;
    }
    current += ch;
    i++;
  }
  out.push(current);
  return out.map((s) => s.replace(/\s+/g, ' ').trim()).filter((s) => s.length > 0);
}

/** `"t"."audit_events"` → `audit_events`: the table a statement names, unqualified. */
function tableName(raw: string): string {
  return raw.split('.').at(-1)!.replaceAll('"', '').toLowerCase();
}

/** Every statement of one migration that an older instance still running may not live with. */
function unsafeStatements(sql: string): UnsafeStatement[] {
  const found: UnsafeStatement[] = [];
  // Tables this migration creates: nothing older uses them, so anything on them is safe.
  const created = new Set<string>();
  for (const statement of statements(sql)) {
    const s = statement.toUpperCase();
    const flag = (rule: Rule) => found.push({ rule, statement });
    const createTable = /^CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?(\S+)/.exec(s);
    if (createTable) {
      created.add(tableName(createTable[1]!));
      continue;
    }
    const existing = (raw: string | undefined) => raw !== undefined && !created.has(tableName(raw));
    if (/^DO\b/.test(s)) flag('do-block');
    if (/^(UPDATE|DELETE|TRUNCATE|MERGE)\b/.test(s)) flag('data-change');
    if (/^LOCK\b/.test(s)) flag('lock');
    if (/\bDROP\b(?! NOT NULL)/.test(s)) flag('drop');
    if (/\bRENAME\b/.test(s)) flag('rename');
    if (/\bALTER (?:COLUMN )?\S+ (?:SET DATA )?TYPE\b/.test(s)) flag('column-type');
    if (/\bSET NOT NULL\b/.test(s)) flag('set-not-null');
    const alter = /^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?(\S+)/.exec(s);
    if (alter && existing(alter[1])) {
      for (const clause of s.split(/\bADD\b/).slice(1)) {
        const column = clause.split(/,\s*(?:ALTER|DROP)\b/)[0]!.trim();
        if (/^(?:CONSTRAINT|CHECK|UNIQUE|PRIMARY KEY|FOREIGN KEY|EXCLUDE)\b/.test(column)) {
          flag('constraint-on-existing-table');
        } else {
          if (/\bNOT NULL\b/.test(column) && !/\bDEFAULT\b/.test(column)) {
            flag('add-column-not-null-without-default');
          }
          if (
            /\bGENERATED ALWAYS AS\b.*\bSTORED\b/.test(column) ||
            /\bDEFAULT .*\b(?:GEN_RANDOM_UUID|RANDOM|CLOCK_TIMESTAMP|TIMEOFDAY|NEXTVAL|UUID_GENERATE_\w+) ?\(/.test(
              column,
            )
          ) {
            flag('add-column-rewrite');
          }
        }
      }
    }
    const index = /^CREATE (?:UNIQUE )?INDEX .*?\bON (?:ONLY )?(\S+)/.exec(s);
    if (index && existing(index[1])) flag('index-on-existing-table');
    const trigger = /^CREATE (?:OR REPLACE )?(?:CONSTRAINT )?TRIGGER .*?\bON (\S+)/.exec(s);
    if (trigger && existing(trigger[1])) flag('trigger-on-existing-table');
  }
  return found;
}

/** Every migration of both sets: folder name and SQL. */
function migrations(): { set: string; name: string; sql: string }[] {
  return ['control', 'tenant'].flatMap((set) =>
    readdirSync(join(DRIZZLE, set), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => ({
        set,
        name: d.name,
        sql: readFileSync(join(DRIZZLE, set, d.name, 'migration.sql'), 'utf8'),
      })),
  );
}

describe('migrations are additive: an older instance still running can live with each', () => {
  it.each(migrations().map((m) => [`${m.set}/${m.name}`, m] as const))('%s', (_, m) => {
    const allowed = ALLOWED[m.name];
    const broken = unsafeStatements(m.sql).filter((u) => !allowed?.rules.includes(u.rule));
    expect(
      broken.map((u) => `${u.rule} (${WHY[u.rule]}): ${u.statement}`),
      'a migration may only add; remove in a later release, once nothing uses it',
    ).toEqual([]);
  });

  it('lists only migrations that exist and rules each of them really breaks', () => {
    const byName = new Map(migrations().map((m) => [m.name, m.sql]));
    for (const [name, { rules, reason }] of Object.entries(ALLOWED)) {
      const sql = byName.get(name);
      expect(sql, `${name} is allow-listed but does not exist`).toBeDefined();
      expect(reason.length).toBeGreaterThan(0);
      const seen = new Set(unsafeStatements(sql!).map((u) => u.rule));
      expect([...rules].sort(), `${name}: allow-listed rules it does not break`).toEqual(
        rules.filter((r) => seen.has(r)).sort(),
      );
    }
  });

  it('flags what an older instance cannot live with (negative controls)', () => {
    const rulesOf = (sql: string) => unsafeStatements(sql).map((u) => u.rule);
    expect(rulesOf('ALTER TABLE x DROP COLUMN y')).toEqual(['drop']);
    expect(rulesOf('ALTER TABLE "audit_events" DROP COLUMN "severity";')).toEqual(['drop']);
    expect(rulesOf('DROP TABLE "batch_ledger";')).toEqual(['drop']);
    expect(rulesOf('ALTER TABLE "t" RENAME COLUMN "a" TO "b";')).toEqual(['rename']);
    expect(rulesOf('ALTER TABLE "t" ALTER COLUMN "a" SET DATA TYPE bigint;')).toEqual([
      'column-type',
    ]);
    expect(rulesOf('ALTER TABLE t ALTER COLUMN a TYPE text')).toEqual(['column-type']);
    expect(rulesOf('ALTER TABLE "t" ALTER COLUMN "a" SET NOT NULL;')).toEqual(['set-not-null']);
    expect(rulesOf('ALTER TABLE "t" ALTER COLUMN "a" DROP DEFAULT;')).toEqual(['drop']);
    expect(rulesOf('ALTER TABLE "t" ADD COLUMN "c" integer NOT NULL;')).toEqual([
      'add-column-not-null-without-default',
    ]);
    expect(
      rulesOf('ALTER TABLE "t" ADD COLUMN "u" uuid DEFAULT gen_random_uuid() NOT NULL;'),
    ).toEqual(['add-column-rewrite']);
    expect(rulesOf('ALTER TABLE "t" ADD CONSTRAINT "c" CHECK ("a" > 0);')).toEqual([
      'constraint-on-existing-table',
    ]);
    expect(rulesOf('CREATE UNIQUE INDEX "i" ON "audit_events" ("trace_id");')).toEqual([
      'index-on-existing-table',
    ]);
    expect(rulesOf('UPDATE "audit_events" SET "severity" = \'low\';')).toEqual(['data-change']);
    expect(rulesOf('DO $$ BEGIN PERFORM 1; END $$;')).toEqual(['do-block']);
  });

  it('lets through what only adds (positive controls)', () => {
    expect(
      unsafeStatements(`
        CREATE TABLE "n" ("id" uuid PRIMARY KEY, "a" integer NOT NULL);
        --> statement-breakpoint
        CREATE INDEX "n_a_idx" ON "n" ("a");--> statement-breakpoint
        ALTER TABLE "n" ADD CONSTRAINT "n_a_check" CHECK ("a" > 0);
        ALTER TABLE "t" ADD COLUMN "c" integer;
        ALTER TABLE "t" ADD COLUMN "at" timestamp(3) with time zone DEFAULT now() NOT NULL;
        ALTER TABLE "t" ADD COLUMN "d" integer[] DEFAULT '{}'::integer[] NOT NULL;
        ALTER TABLE "t" ALTER COLUMN "e" DROP NOT NULL;
        -- a comment that says DROP TABLE t is not a statement
        CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN DELETE FROM x; RAISE EXCEPTION 'DROP TABLE refused'; END $$;
        INSERT INTO "n" ("id", "a") SELECT gen_random_uuid(), 1;
      `),
    ).toEqual([]);
  });
});
