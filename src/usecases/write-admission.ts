import type { Config } from '../config.js';
import type { TenantProvisioner } from '../db/tenant-provisioner.js';
import { ShuttingDownError } from '../domain/errors.js';
import { type AuditEventInput, validateEvents } from '../domain/event.js';
import type { TenantId } from '../domain/tenant.js';
import type { AcceptedEvent, Ack, IngestService } from '../ingest/ingest-service.js';
import type { WriteRateLimiter } from '../ingest/write-rate-limiter.js';
import type { TenantRetention } from '../lifecycle/tenant-retention.js';

/**
 * Whether a call's events are accepted, and accepting them: every event of the call or none. The
 * checks run cheapest and most final first — the instance is stopping (ShuttingDownError), an
 * event breaks a rule or is older than the tenant's retention (ValidationError: an event older
 * than retention could recreate a month retention already dropped), the tenant is unknown and
 * not auto-provisioned (UnknownTenantError), the tenant's write rate (RateLimitedError) — and
 * only then the buffer (BackpressureError, or the COMMITTED wait's CommitTimeoutError).
 */
export class WriteAdmission {
  constructor(
    private readonly ingest: IngestService,
    private readonly retention: TenantRetention,
    private readonly tenants: TenantProvisioner,
    private readonly rateLimiter: WriteRateLimiter,
    private readonly opts: Pick<
      Config,
      'maxFutureSkewMs' | 'maxEventsPerCall' | 'tenantAutoProvision'
    >,
  ) {}

  async admit(
    tenant: TenantId,
    inputs: readonly AuditEventInput[],
    ack: Ack,
  ): Promise<AcceptedEvent[]> {
    if (this.ingest.isStopping) throw new ShuttingDownError();
    const retentionDays = await this.retention.days(tenant);
    const records = validateEvents(inputs, {
      now: new Date(),
      retentionDays,
      maxFutureSkewMs: this.opts.maxFutureSkewMs,
      maxEvents: this.opts.maxEventsPerCall,
    });
    await this.tenants.ensure(tenant, this.opts.tenantAutoProvision);
    await this.rateLimiter.consume(tenant, records.length);
    return this.ingest.accept(tenant, records, ack);
  }
}
