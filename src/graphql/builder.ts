import SchemaBuilder from '@pothos/core';
import ErrorsPlugin from '@pothos/plugin-errors';
import RelayPlugin, { decodeGlobalID } from '@pothos/plugin-relay';
import ScopeAuthPlugin from '@pothos/plugin-scope-auth';
import { ValidationError } from '../domain/errors.js';
import { type AuthScopes, authScopesOf, scopeRefusal } from './auth.js';
import type { GraphQLContext } from './context.js';

/** The Pothos builder; type files register on it, schema.ts turns it into a schema. */
export const builder = new SchemaBuilder<{
  Context: GraphQLContext;
  AuthScopes: AuthScopes;
  DefaultFieldNullability: false;
  DefaultEdgesNullability: { list: false; items: false };
  DefaultNodeNullability: false;
  Scalars: {
    DateTime: { Input: Date; Output: Date };
    JSONObject: { Input: Record<string, unknown>; Output: Record<string, unknown> };
  };
}>({
  // scope-auth first: Pothos wraps resolvers in plugin order, so its checks run before any
  // other plugin's wrapper.
  plugins: [ScopeAuthPlugin, RelayPlugin, ErrorsPlugin],
  defaultFieldNullability: false,
  errors: { directResult: true },
  // Connections, the Node interface, node/nodes and global ids: one PageInfo for every
  // connection, edges and nodes never null.
  relay: {
    clientMutationId: 'omit',
    cursorType: 'String',
    edgesFieldOptions: { nullable: { list: false, items: false } },
    nodeFieldOptions: { nullable: false },
    nodeQueryOptions: {
      description:
        'Any object by its global id (`id`): an event, a dead letter, a legal hold, an API key or ' +
        'a tenant. Null when it does not exist, or is not the caller’s.',
    },
    nodesQueryOptions: {
      description: 'Objects by their global ids, in order (null where one does not exist).',
    },
    // A malformed id is the caller's mistake, answered as BAD_USER_INPUT like other arguments.
    decodeGlobalID: (globalID) => {
      try {
        return decodeGlobalID(globalID);
      } catch {
        throw ValidationError.single('id', 'is not an id of this service');
      }
    },
  },
  scopeAuth: {
    // A subscription is authorised once, when it is opened (its key is then re-checked while
    // it stays open, see http/websocket.ts and subscriptions.ts), not again for every message.
    authorizeOnSubscribe: true,
    authScopes: authScopesOf,
    unauthorizedError: (_parent, ctx, _info, result) => scopeRefusal(ctx, result.failure),
  },
});

builder.queryType({ description: 'Reads of the caller’s tenant, and tenant administration.' });
builder.mutationType({ description: 'Writes to the caller’s tenant, and tenant administration.' });
