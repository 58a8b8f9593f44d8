import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/domain/errors.js';
import { parseTenantId, tenantIdProblem, tenantSchema } from '../../src/domain/tenant.js';

describe('tenantIdProblem', () => {
  it.each([
    'a',
    'acme',
    'acme_prod_2',
    'pg', // only the pg_ prefix is reserved
    'public_x',
    `a${'b'.repeat(39)}`, // 40 characters: the longest allowed
  ])('accepts %j', (id) => {
    expect(tenantIdProblem(id)).toBeNull();
  });

  it.each([
    ['', 'empty'],
    ['A', 'upper case'],
    ['Acme', 'upper case first letter'],
    ['1acme', 'leading digit'],
    ['_acme', 'leading underscore'],
    ['a-b', 'dash'],
    ['a;drop', 'semicolon'],
    ['"x"', 'quotes'],
    ['a b', 'space'],
    [' a', 'leading space'],
    ['a\n', 'trailing newline'],
    ['a.b', 'dot (schema-qualified name)'],
    ['café', 'non-ASCII'],
    ['tenänt', 'non-ASCII'],
    [`a${'b'.repeat(40)}`, '41 characters'],
  ])('rejects %j (%s) as not matching the pattern', (id) => {
    expect(tenantIdProblem(id)).toMatch(/must match/);
  });

  it.each(['public', 'information_schema', 'pg_catalog', 'pg_x', 'pg_', 'auditgraph'])(
    'rejects the reserved name %j',
    (id) => {
      expect(tenantIdProblem(id)).toMatch(/reserved/);
    },
  );

  it('parseTenantId throws a ValidationError for a bad id and brands a good one', () => {
    expect(() => parseTenantId('pg_x')).toThrow(ValidationError);
    expect(() => parseTenantId('A')).toThrow(ValidationError);
    const id = parseTenantId('acme');
    expect(tenantSchema(id)).toBe('t_acme');
  });
});
