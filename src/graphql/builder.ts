import SchemaBuilder from '@pothos/core';
import ErrorsPlugin from '@pothos/plugin-errors';
import ScopeAuthPlugin from '@pothos/plugin-scope-auth';
import { type AuthScopes, authScopesOf, scopeRefusal } from './auth.js';
import type { GraphQLContext } from './context.js';

/** The Pothos builder; type files register on it, schema.ts turns it into a schema. */
export const builder = new SchemaBuilder<{
  Context: GraphQLContext;
  AuthScopes: AuthScopes;
  DefaultFieldNullability: false;
  Scalars: {
    DateTime: { Input: Date; Output: Date };
    JSONObject: { Input: Record<string, unknown>; Output: Record<string, unknown> };
  };
}>({
  // scope-auth first: Pothos wraps resolvers in plugin order, so its checks run before any
  // other plugin's wrapper.
  plugins: [ScopeAuthPlugin, ErrorsPlugin],
  defaultFieldNullability: false,
  errors: { directResult: true },
  scopeAuth: {
    // A subscription is authorised once, when it is opened (its key is then re-checked while
    // it stays open, see ws.ts and subscriptions.ts), not again for every message.
    authorizeOnSubscribe: true,
    authScopes: authScopesOf,
    unauthorizedError: (_parent, ctx, _info, result) => scopeRefusal(ctx, result.failure),
  },
});

builder.queryType({ description: 'Reads of the caller’s tenant, and tenant administration.' });
builder.mutationType({ description: 'Writes to the caller’s tenant, and tenant administration.' });
