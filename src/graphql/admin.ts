import type { TenantInfo, TenantUsage } from '../db/tenant-directory.js';
import type { ApiKeyRecord, Scope } from '../domain/api-key.js';
import { ValidationError } from '../domain/errors.js';
import { parseTenantId, type TenantId } from '../domain/tenant.js';
import { requireScope } from './auth.js';
import { builder } from './builder.js';
import { actorOf, type GraphQLContext } from './context.js';
import { ownIdOf } from './node-ids.js';

/**
 * Tenant administration (scope `tenants:admin`: a platform key, bound to no tenant). These
 * fields act on the tenant they name; every tenant field of the API acts on the caller's own.
 * Key creation, revocation and tenant provisioning are recorded in the affected tenant's log.
 */

/** What an admin mutation answers as its own result besides its payload: its input broke a rule. */
const ADMIN_ERRORS = [ValidationError];

const ScopeEnum = builder.enumType('ApiScope', {
  description: 'What an API key may do.',
  values: {
    EVENTS_WRITE: { value: 'events:write', description: 'createAuditEvents, flushAudit.' },
    EVENTS_READ: {
      value: 'events:read',
      description: 'auditEvents, auditEvent, auditStats, flushCompleted, auditEventsAdded.',
    },
    DEADLETTERS_ADMIN: {
      value: 'deadletters:admin',
      description: 'deadLetters, replayDeadLetters, discardDeadLetter, deadLetterEvents.',
    },
    AUDIT_ADMIN: {
      value: 'audit:admin',
      description:
        'Integrity and lifecycle: signAuditCheckpoints, placeLegalHold, releaseLegalHold, retention settings.',
    },
    TENANTS_ADMIN: {
      value: 'tenants:admin',
      description: 'Tenant administration; platform keys only (no tenant).',
    },
  } as const,
});

const ApiKeyRef = builder.node(builder.objectRef<ApiKeyRecord>('ApiKey'), {
  description: 'An API key, without the key itself: that is shown once, when it is created.',
  id: { resolve: (k) => k.id },
  loadOne: async (id, ctx) => {
    requireScope(ctx, 'tenantsAdmin');
    return ctx.services.apiKeys.get(id);
  },
  fields: (t) => ({
    keyId: t.exposeString('id', { description: 'The key’s own id (a UUID), as the CLI shows it.' }),
    tenantId: t.exposeString('tenantId', {
      nullable: true,
      description: 'Null for a platform key.',
    }),
    scopes: t.field({ type: [ScopeEnum], resolve: (k) => k.scopes }),
    label: t.exposeString('label'),
    prefix: t.exposeString('prefix', {
      description: 'The first characters of the key, to recognise it (not enough to use it).',
    }),
    createdAt: t.expose('createdAt', { type: 'DateTime' }),
    lastUsedAt: t.expose('lastUsedAt', { type: 'DateTime', nullable: true }),
    expiresAt: t.expose('expiresAt', { type: 'DateTime', nullable: true }),
    revokedAt: t.expose('revokedAt', { type: 'DateTime', nullable: true }),
  }),
});

const PartitionRangeRef = builder.objectRef<TenantUsage>('PartitionRange').implement({
  description: 'The monthly partitions of a tenant’s events.',
  fields: (t) => ({
    count: t.exposeInt('partitions'),
    from: t.expose('from', {
      type: 'DateTime',
      nullable: true,
      description: 'First instant of the oldest partition.',
    }),
    until: t.expose('until', {
      type: 'DateTime',
      nullable: true,
      description: 'End (exclusive) of the newest partition.',
    }),
  }),
});

const TenantRef = builder.node(builder.objectRef<TenantInfo>('Tenant'), {
  id: { resolve: (x) => x.tenantId },
  loadOne: async (id, ctx) => {
    requireScope(ctx, 'tenantsAdmin');
    let tenant: TenantId;
    try {
      tenant = parseTenantId(id);
    } catch {
      return null;
    }
    return ctx.services.tenantDirectory.get(tenant);
  },
  fields: (t) => ({
    tenantId: t.exposeString('tenantId', { description: 'The tenant’s name.' }),
    schemaName: t.exposeString('schemaName'),
    createdAt: t.expose('createdAt', { type: 'DateTime' }),
    migration: t.exposeString('migration', {
      nullable: true,
      description: 'The last migration applied to the tenant’s schema.',
    }),
    eventCount: t.int({
      description:
        'Stored events: exact up to 10,000, above that the planner’s estimate (see eventCountExact).',
      resolve: async (x, _args, ctx) => (await usageOf(ctx, x.tenantId)).events,
    }),
    eventCountExact: t.boolean({
      resolve: async (x, _args, ctx) => (await usageOf(ctx, x.tenantId)).eventsExact,
    }),
    partitions: t.field({
      type: PartitionRangeRef,
      resolve: (x, _args, ctx) => usageOf(ctx, x.tenantId),
    }),
  }),
});

/** One usage query per tenant per request, however many of its fields are selected. */
const usageCache = new WeakMap<GraphQLContext, Map<string, Promise<TenantUsage>>>();
function usageOf(ctx: GraphQLContext, tenant: TenantId): Promise<TenantUsage> {
  let perRequest = usageCache.get(ctx);
  if (!perRequest) {
    perRequest = new Map();
    usageCache.set(ctx, perRequest);
  }
  let usage = perRequest.get(tenant);
  if (!usage) {
    usage = ctx.services.tenantDirectory.usage(tenant);
    perRequest.set(tenant, usage);
  }
  return usage;
}

const TENANTS_PAGE_MAX = 100;

/** Tenant ids in cursors are base64url: opaque to clients, and checked like any tenant id. */
const cursorOf = (tenant: string) => Buffer.from(tenant, 'utf8').toString('base64url');
function tenantFromCursor(cursor: string): TenantId {
  const id = cursor.length <= 64 ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  try {
    return parseTenantId(id);
  } catch {
    throw ValidationError.single('after', 'not a cursor of this connection');
  }
}

function checkTenantArg(field: string, raw: string): TenantId {
  try {
    return parseTenantId(raw);
  } catch (err) {
    if (err instanceof ValidationError) {
      throw new ValidationError(err.issues.map((i) => ({ ...i, field })));
    }
    throw err;
  }
}

builder.queryField('tenants', (t) =>
  t.connection(
    {
      type: TenantRef,
      description: `Every tenant, in id order (scope tenants:admin), forward only (first/after): 50 per page by default, at most ${TENANTS_PAGE_MAX}.`,
      authScopes: { tenantsAdmin: true },
      resolve: async (_root, args, ctx) => {
        const first = args.first ?? 50;
        if (first < 1 || first > TENANTS_PAGE_MAX) {
          throw ValidationError.single('first', `must be between 1 and ${TENANTS_PAGE_MAX}`);
        }
        if (args.last != null || args.before != null) {
          throw ValidationError.single('last', 'tenants page forward only (first/after)');
        }
        const after = args.after ? tenantFromCursor(args.after) : null;
        const rows = await ctx.services.tenantDirectory.list(first, after);
        const page = rows.slice(0, first);
        return {
          edges: page.map((node) => ({ cursor: cursorOf(node.tenantId), node })),
          pageInfo: {
            hasNextPage: rows.length > first,
            hasPreviousPage: after !== null,
            startCursor: page.length ? cursorOf(page[0]!.tenantId) : null,
            endCursor: page.length ? cursorOf(page.at(-1)!.tenantId) : null,
          },
        };
      },
    },
    { name: 'TenantConnection' },
    { name: 'TenantEdge' },
  ),
);

const ProvisionTenantInput = builder.inputType('ProvisionTenantInput', {
  fields: (t) => ({
    tenantId: t.string({ required: true, description: 'Matches ^[a-z][a-z0-9_]{0,39}$.' }),
  }),
});

const ProvisionTenantPayload = builder
  .objectRef<{ tenant: TenantInfo; created: boolean }>('ProvisionTenantPayload')
  .implement({
    fields: (t) => ({
      tenant: t.field({ type: TenantRef, resolve: (p) => p.tenant }),
      created: t.exposeBoolean('created', {
        description: 'False when the tenant existed already (provisioning is idempotent).',
      }),
    }),
  });

builder.mutationField('provisionTenant', (t) =>
  t.field({
    type: ProvisionTenantPayload,
    description:
      'Creates a tenant — its schema, tables and partitions — or brings an existing one up to date.',
    errors: { types: ADMIN_ERRORS, union: { name: 'ProvisionTenantResult' } },
    authScopes: { tenantsAdmin: true },
    args: { input: t.arg({ type: ProvisionTenantInput, required: true }) },
    resolve: (_root, { input }, ctx) =>
      ctx.services.useCases.provisioning.provision(
        actorOf(ctx),
        checkTenantArg('input.tenantId', input.tenantId),
      ),
  }),
);

const CreateApiKeyInput = builder.inputType('CreateApiKeyInput', {
  fields: (t) => ({
    tenantId: t.string({
      description: 'The key’s tenant; omit for a platform key (scopes: [TENANTS_ADMIN] only).',
    }),
    scopes: t.field({ type: [ScopeEnum], required: true }),
    label: t.string({
      required: true,
      description: 'Who or what holds the key (1–100 characters); the actor of its access records.',
    }),
    expiresAt: t.field({ type: 'DateTime', description: 'When the key stops working; optional.' }),
  }),
});

const CreateApiKeyPayload = builder
  .objectRef<{ key: ApiKeyRecord; secret: string }>('CreateApiKeyPayload')
  .implement({
    fields: (t) => ({
      key: t.exposeString('secret', {
        description:
          'The API key. Shown here once and never again (only its hash is stored): keep it now.',
      }),
      apiKey: t.field({ type: ApiKeyRef, resolve: (p) => p.key }),
    }),
  });

builder.mutationField('createApiKey', (t) =>
  t.field({
    type: CreateApiKeyPayload,
    description:
      'Creates an API key for a tenant (or a platform key); the key is in the answer only.',
    errors: { types: ADMIN_ERRORS, union: { name: 'CreateApiKeyResult' } },
    authScopes: { tenantsAdmin: true },
    args: { input: t.arg({ type: CreateApiKeyInput, required: true }) },
    resolve: (_root, { input }, ctx) =>
      ctx.services.useCases.keys.create(actorOf(ctx), {
        tenantId: input.tenantId ?? null,
        scopes: input.scopes as Scope[],
        label: input.label,
        expiresAt: input.expiresAt ?? null,
      }),
  }),
);

const RevokeApiKeyInput = builder.inputType('RevokeApiKeyInput', {
  fields: (t) => ({
    id: t.id({ required: true, description: 'The key’s `id` or `keyId`.' }),
  }),
});

builder.mutationField('revokeApiKey', (t) =>
  t.field({
    type: ApiKeyRef,
    description:
      'Revokes a key: refused from its next request or WebSocket operation on every instance ' +
      '(with Redis, confirmed by each before this returns), and its open subscriptions are ' +
      'closed. Idempotent.',
    errors: { types: ADMIN_ERRORS, union: { name: 'RevokeApiKeyResult' } },
    authScopes: { tenantsAdmin: true },
    args: { input: t.arg({ type: RevokeApiKeyInput, required: true }) },
    resolve: async (_root, { input }, ctx) => {
      const id = ownIdOf(String(input.id), 'ApiKey', 'input.id');
      const key = await ctx.services.useCases.keys.revoke(actorOf(ctx), id);
      if (!key) throw ValidationError.single('input.id', 'no API key with this id');
      return key;
    },
  }),
);

const ApiKeysPayload = builder.objectRef<{ keys: ApiKeyRecord[] }>('ApiKeyList').implement({
  fields: (t) => ({ keys: t.field({ type: [ApiKeyRef], resolve: (p) => p.keys }) }),
});

builder.queryField('apiKeys', (t) =>
  t.field({
    type: ApiKeysPayload,
    description:
      'The keys of a tenant, newest first (revoked and expired ones included); without ' +
      'tenantId, the platform keys.',
    authScopes: { tenantsAdmin: true },
    args: { tenantId: t.arg.string() },
    resolve: async (_root, args, ctx) => {
      const tenant = args.tenantId == null ? null : checkTenantArg('tenantId', args.tenantId);
      return { keys: await ctx.services.useCases.keys.list(tenant) };
    },
  }),
);
