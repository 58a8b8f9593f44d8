/**
 * A dashboard's use of the generated types (test/clients-codegen.test.ts type-checks it next to
 * types generated from a schema; `./types.js` exists only there): it reads the first event's
 * type straight off the result, with no `__typename` check on the way.
 */
import type { DashboardQuery } from './types.js';

export function firstEventType(data: DashboardQuery): string | undefined {
  return data.auditEvents.edges[0]?.node.eventType;
}
