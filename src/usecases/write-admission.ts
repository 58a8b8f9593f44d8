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
 * checks run cheapest and most final first. A refusal that the number of events decides alone
 * (refusal()) comes before the events are read: the instance is stopping (ShuttingDownError),
 * the tenant is still refused by its write rate (RateLimitedError) or its buffer is full
 * (BackpressureError) — so a flood of refused calls costs little. Then an event breaks a rule or
 * is older than the tenant's retention (ValidationError: an event older than retention could
 * recreate a month retention already dropped), the tenant is unknown and not auto-provisioned
 * (UnknownTenantError), the tenant's write rate (RateLimitedError), and only then the buffer
 * (BackpressureError, or the COMMITTED wait's CommitTimeoutError).
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

  /**
   * The refusal a call of `events` events of the tenant gets now whatever they hold, or null:
   * what the GraphQL door asks before it even coerces the call's input.
   */
  refusal(tenant: TenantId, events: number): Error | null {
    if (this.ingest.isStopping) return new ShuttingDownError();
    return this.rateLimiter.refusal(tenant) ?? this.ingest.refusal(tenant, events);
  }

  async admit(
    tenant: TenantId,
    inputs: readonly AuditEventInput[],
    ack: Ack,
  ): Promise<AcceptedEvent[]> {
    const refused = this.refusal(tenant, inputs.length);
    if (refused) throw refused;
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
