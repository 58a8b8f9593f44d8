import type { GraphQLSchema } from 'graphql';
import { builder } from './builder.js';
import './scalars.js';
import './errors.js';
import './audit-event.js';
import './ingest.js';
import './waiting.js';
import './dead-letters.js';
import './subscriptions.js';
import './admin.js';
import './integrity.js';
import './lifecycle.js';

let schema: GraphQLSchema | undefined;

/** The executable schema (built once; type files register themselves on the builder). */
export function buildSchema(): GraphQLSchema {
  schema ??= builder.toSchema({ sortSchema: true });
  return schema;
}
