import type { Config } from '../config.js';
import type { TenantRegistry } from '../db/tenant-registry.js';
import { UnauthenticatedError, ValidationError } from '../domain/errors.js';
import { type TenantId, tenantIdProblem } from '../domain/tenant.js';
import type { DeadLetterStore } from '../ingest/dead-letter-queue.js';
import type { IngestEvents } from '../ingest/events.js';
import type { IngestService } from '../ingest/ingest-service.js';
import type { RetryWorker } from '../ingest/retry-worker.js';
import type { Logger } from '../logger.js';
import type { AuditEventQueries } from '../query/audit-event-queries.js';
import type { Cluster } from '../realtime/cluster.js';
import type { RealtimeBus } from '../realtime/pubsub.js';

/** What resolvers may use; built once by app.ts. */
export interface Services {
  config: Config;
  ingest: IngestService;
  /** What the write path reports: settled batches, dead-letter steps. */
  events: IngestEvents;
  queries: AuditEventQueries;
  tenants: TenantRegistry;
  deadLetters: DeadLetterStore;
  /** Every live instance: flushAudit and auditStats span them all. */
  cluster: Cluster;
  retryWorker: RetryWorker;
  /** Tenant-scoped pub/sub behind the subscriptions (Redis fan-out, or in-process). */
  realtime: RealtimeBus;
  /** This process's name in flush reports and stats. */
  instanceId: string;
}

export interface GraphQLContext {
  requestId: string;
  log: Logger;
  services: Services;
  /** The tenant named by the request (`x-tenant-id` in AUTH_MODE=dev), unchecked; null if absent. */
  tenantClaim: string | null;
}

export const TENANT_HEADER = 'x-tenant-id';

/**
 * The caller's tenant, from the request and only from it. Missing or malformed is a typed
 * error; there is no default tenant to fall back to.
 */
export function requireTenant(ctx: GraphQLContext): TenantId {
  const claim = ctx.tenantClaim;
  if (claim === null || claim === '') {
    throw new UnauthenticatedError(`the ${TENANT_HEADER} header is required (AUTH_MODE=dev)`);
  }
  const problem = tenantIdProblem(claim);
  if (problem) throw ValidationError.single(TENANT_HEADER, `tenant id ${problem}`);
  return claim as TenantId;
}
