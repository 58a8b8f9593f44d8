import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import { ShuttingDownError } from '../domain/errors.js';
import type { TenantId } from '../domain/tenant.js';
import type { IngestService } from '../ingest/ingest-service.js';
import type { LegalHold, LegalHoldStore, PlaceHoldInput } from '../lifecycle/legal-holds.js';
import type {
  LifecycleLog,
  LifecycleRecord,
  RecordedEvent,
} from '../lifecycle/lifecycle-events.js';
import type { Actor } from './actor.js';

/** A hold as placed or released, and the tenant's audit event that records the change. */
export interface HoldChange {
  hold: LegalHold;
  event: RecordedEvent;
}

/**
 * Placing and releasing legal holds. Each change is written as an audit event of the tenant
 * (through the ingest path, COMMITTED) and the answer says what became of that event. A change
 * is refused before it is made while the instance stops, since its event could not be accepted.
 */
export class LegalHolds {
  constructor(
    private readonly holds: LegalHoldStore,
    private readonly tenants: TenantProvisioner,
    private readonly ingest: IngestService,
    private readonly lifecycleLog: LifecycleLog,
  ) {}

  async place(
    actor: Actor,
    tenant: TenantId,
    input: Omit<PlaceHoldInput, 'placedBy'>,
  ): Promise<HoldChange> {
    await this.ready(tenant);
    const hold = await this.holds.place(tenant, { ...input, placedBy: actor.lifecycle.by });
    const event = await this.record(actor, tenant, {
      eventType: 'auditgraph.legal_hold.placed',
      action: 'place',
      resource: { type: 'legal_hold', id: hold.id },
      data: { holdId: hold.id, reason: hold.reason, scope: scopeOf(hold) },
    });
    return { hold, event };
  }

  /** Releases an active hold; a hold that does not exist or is released already is refused. */
  async release(actor: Actor, tenant: TenantId, id: string, reason: string): Promise<HoldChange> {
    await this.ready(tenant);
    const hold = await this.holds.release(tenant, id, reason, actor.lifecycle.by);
    const event = await this.record(actor, tenant, {
      eventType: 'auditgraph.legal_hold.released',
      action: 'release',
      resource: { type: 'legal_hold', id: hold.id },
      data: {
        holdId: hold.id,
        reason: hold.releaseReason,
        placedReason: hold.reason,
        scope: scopeOf(hold),
      },
    });
    return { hold, event };
  }

  /** The tenant's holds, newest first; `active` filters by state (null: all). */
  async list(tenant: TenantId, active: boolean | null = null): Promise<LegalHold[]> {
    await this.tenants.ensure(tenant, false);
    return this.holds.list(tenant, active);
  }

  private async ready(tenant: TenantId): Promise<void> {
    await this.tenants.ensure(tenant, false);
    if (this.ingest.isStopping) throw new ShuttingDownError();
  }

  private record(
    actor: Actor,
    tenant: TenantId,
    r: Omit<LifecycleRecord, 'tenant' | 'actor' | 'correlationId'>,
  ): Promise<RecordedEvent> {
    const who = actor.lifecycle;
    return this.lifecycleLog.record({
      ...r,
      tenant,
      actor: who.actor,
      correlationId: who.correlationId,
      data: { ...r.data, ...who.data },
    });
  }
}

/** What a hold covers, as its events record it. */
function scopeOf(hold: LegalHold): Record<string, unknown> {
  return hold.correlationId
    ? { correlationId: hold.correlationId }
    : {
        occurredFrom: hold.occurredFrom?.toISOString(),
        occurredTo: hold.occurredTo?.toISOString(),
      };
}
