import { type Caller, TENANT_HEADER } from '../auth/caller.js';
import type { KeyWatcher } from '../auth/key-watcher.js';
import type { TokenVerifier } from '../auth/tokens.js';
import type { Cluster } from '../cluster/cluster.js';
import type { Config } from '../config.js';
import type { ApiKeyStore } from '../db/api-key-store.js';
import type { TenantDirectory } from '../db/tenant-directory.js';
import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import { ForbiddenError, UnauthenticatedError, ValidationError } from '../domain/errors.js';
import { type TenantId, tenantIdProblem } from '../domain/tenant.js';
import type { AccessLog, AccessRecord } from '../ingest/access-log.js';
import type { DeadLetterStore } from '../ingest/dead-letter-queue.js';
import type { IngestService } from '../ingest/ingest-service.js';
import type { ChainAuditor } from '../integrity/chain-auditor.js';
import type { CheckpointService } from '../integrity/checkpoints.js';
import type { LifecycleLog } from '../lifecycle/lifecycle-events.js';
import type { MaintenanceJob } from '../lifecycle/maintenance.js';
import type { TenantRetention } from '../lifecycle/tenant-retention.js';
import type { Logger } from '../logger.js';
import type { AuditEventQueries } from '../query/audit-event-queries.js';
import type { TenantConnectionLimiter } from '../realtime/connection-limiter.js';
import type { RealtimeBus } from '../realtime/pubsub.js';
import type { ActionRecord, Actor } from '../usecases/actor.js';
import type { UseCases } from '../usecases/use-cases.js';
import { requestRefusal } from './error-mapping.js';

/** What resolvers may use; built once by app.ts. */
export interface Services {
  config: Config;
  /** What the doors do: write admission, provisioning, key administration, holds, dead letters. */
  useCases: UseCases;
  ingest: IngestService;
  queries: AuditEventQueries;
  tenants: TenantProvisioner;
  deadLetters: DeadLetterStore;
  /** Every live instance: flushAudit and auditStats span them all. */
  cluster: Cluster;
  /** Tenant-scoped pub/sub behind the subscriptions (Redis fan-out, or in-process). */
  realtime: RealtimeBus;
  /** This process's name in flush reports and stats. */
  instanceId: string;
  /** API keys (AUTH_MODE=keys). */
  apiKeys: ApiKeyStore;
  /** Tenant administration's reads: tenants, event counts, partition ranges. */
  tenantDirectory: TenantDirectory;
  /** Records access (key and tenant administration, dead-letter handling, reads) as events. */
  accessLog: AccessLog;
  /** Open subscription connections per tenant (MAX_CONNECTIONS_PER_TENANT). */
  connections: TenantConnectionLimiter;
  /** Open subscriptions per tenant, over every connection and field (MAX_SUBSCRIPTIONS_PER_TENANT). */
  subscriptions: TenantConnectionLimiter;
  /** Ends what a revoked or expired key holds open. */
  keyWatcher: KeyWatcher;
  /** Verifies people's tokens; null when AUTH_MODE takes none. */
  tokens: TokenVerifier | null;
  /** Signs chain heads as checkpoints, lists them. */
  checkpoints: CheckpointService;
  /** Re-computes a tenant's hash chains (verifyAuditChain). */
  chainAuditor: ChainAuditor;
  /** Per-tenant retention: the write path's oldest accepted occurredAt, and what is dropped. */
  retention: TenantRetention;
  /** Partitions ahead and retention by whole months (leader-elected; runMaintenance). */
  maintenance: MaintenanceJob;
  /** Writes legal-hold and retention changes as audit events of the tenant. */
  lifecycleLog: LifecycleLog;
}

export interface GraphQLContext {
  requestId: string;
  log: Logger;
  services: Services;
  /** Who is calling: fixed for the request (for a WebSocket operation, for its connection). */
  caller: Caller;
  /** `ws` for an operation on a WebSocket connection; `http` for HTTP and SSE. */
  transport: 'http' | 'ws';
  /**
   * Aborted when the HTTP caller goes away before its answer is sent (HTTP and SSE; a WebSocket
   * subscription ends through its iterator's return instead). Long work stops on it.
   */
  signal?: AbortSignal;
}

/**
 * The caller's tenant, from the request and only from it: the API key's tenant, or in
 * AUTH_MODE=dev the tenant the request names. Missing or malformed refuses the request (a
 * GraphQL error, whatever the field); there is no default tenant to fall back to.
 */
export function requireTenant(ctx: GraphQLContext): TenantId {
  const caller = ctx.caller;
  if (caller.kind === 'refused') throw caller.error;
  if (caller.kind === 'key') {
    if (caller.key.tenantId === null) {
      throw new ForbiddenError('a platform key acts on no tenant; use a key of the tenant');
    }
    return caller.key.tenantId;
  }
  if (caller.kind === 'token') return caller.tenantId as TenantId;
  const claim = caller.tenantClaim;
  if (claim === null || claim === '') {
    throw new UnauthenticatedError(`the ${TENANT_HEADER} header is required (AUTH_MODE=dev)`);
  }
  const problem = tenantIdProblem(claim);
  if (problem) {
    throw requestRefusal(ValidationError.single(TENANT_HEADER, `tenant id ${problem}`), 'dev');
  }
  return claim as TenantId;
}

/**
 * The caller's tenant (requireTenant), known to this service: a tenant that was never
 * provisioned is refused as UNKNOWN_TENANT (each instance asks the database once per tenant).
 */
export async function knownTenant(ctx: GraphQLContext): Promise<TenantId> {
  const tenant = requireTenant(ctx);
  await ctx.services.tenants.ensure(tenant, false);
  return tenant;
}

/**
 * The caller as the actor of an administrative action (src/usecases/). Its access record goes to
 * the affected tenant's log (AccessLog) naming the key's label as the actor; nothing is
 * recorded in AUTH_MODE=dev, where nobody is authenticated, so there is no one to name. A
 * lifecycle change is recorded either way, by an anonymous actor in AUTH_MODE=dev.
 */
export function actorOf(ctx: GraphQLContext): Actor {
  return {
    async recordAccess(record) {
      const full = accessRecordOf(ctx, record);
      if (full) await ctx.services.accessLog.record(full);
    },
    lifecycle: lifecycleActorOf(ctx),
  };
}

function lifecycleActorOf(ctx: GraphQLContext): Actor['lifecycle'] {
  const caller = ctx.caller;
  if (caller.kind === 'key') {
    return {
      actor: { type: 'api_key', id: caller.key.label },
      by: `api_key:${caller.key.label}`,
      correlationId: ctx.requestId,
      data: { keyId: caller.key.id, requestId: ctx.requestId },
    };
  }
  if (caller.kind === 'token') {
    return {
      actor: { type: 'user', id: caller.subject },
      by: `user:${caller.subject}`,
      correlationId: ctx.requestId,
      data: { requestId: ctx.requestId },
    };
  }
  return {
    actor: { type: 'anonymous', id: 'anonymous' },
    by: 'anonymous',
    correlationId: ctx.requestId,
    data: { requestId: ctx.requestId },
  };
}

/**
 * The access record of what a key or a person did; null when nobody is authenticated
 * (AUTH_MODE=dev). A person is the token's subject.
 */
function accessRecordOf(ctx: GraphQLContext, record: ActionRecord): AccessRecord | null {
  const caller = ctx.caller;
  if (caller.kind === 'token') {
    return {
      ...record,
      actor: { type: 'user', id: caller.subject },
      correlationId: ctx.requestId,
      data: { ...record.data, requestId: ctx.requestId },
    };
  }
  if (caller.kind !== 'key') return null;
  return {
    ...record,
    actor: { type: 'api_key', id: caller.key.label },
    correlationId: ctx.requestId,
    data: { ...record.data, keyId: caller.key.id, requestId: ctx.requestId },
  };
}

/**
 * Records a read of the tenant's audit log (AUDIT_READS), before the read is answered. Throws
 * (LimitExceededError, ShuttingDownError) when the record cannot be accepted: the read is then
 * refused, never served unrecorded.
 */
export async function recordRead(
  ctx: GraphQLContext,
  tenant: TenantId,
  field: string,
  data: Record<string, unknown>,
): Promise<void> {
  if (!ctx.services.accessLog.auditsReads) return;
  const record = accessRecordOf(ctx, {
    tenant,
    eventType: 'auditgraph.access.read',
    action: 'read',
    resource: { type: 'audit_log', id: field },
    data,
  });
  if (record) await ctx.services.accessLog.recordRead(record);
}
