import { describe, expect, it } from 'vitest';
import type { ApiKeyStore } from '../../src/db/api-key-store.js';
import type { TenantDirectory } from '../../src/db/tenant-directory.js';
import type { TenantProvisioner } from '../../src/db/tenant-provisioner.js';
import type { ApiKeyRecord } from '../../src/domain/api-key.js';
import {
  BackpressureError,
  RateLimitedError,
  ShuttingDownError,
  UnknownTenantError,
  ValidationError,
} from '../../src/domain/errors.js';
import type { AuditEventInput } from '../../src/domain/event.js';
import type { TenantId } from '../../src/domain/tenant.js';
import type { IngestService } from '../../src/ingest/ingest-service.js';
import type { WriteRateLimiter } from '../../src/ingest/write-rate-limiter.js';
import type { TenantRetention } from '../../src/lifecycle/tenant-retention.js';
import type { ActionRecord, Actor } from '../../src/usecases/actor.js';
import { KeyAdministration } from '../../src/usecases/key-administration.js';
import { WriteAdmission } from '../../src/usecases/write-admission.js';

/*
 * The use cases on fakes of the stores they stand on: what each checks, in which order, and
 * that each writes its access record itself, whichever door calls it. The doors' own tests
 * (admin.test.ts for the CLI and GraphQL, validation, backpressure, retention) run them end to
 * end against PostgreSQL.
 */

const TENANT = 'usecase_t' as TenantId;

function recordingActor(): Actor & { records: ActionRecord[] } {
  const records: ActionRecord[] = [];
  return {
    records,
    async recordAccess(r) {
      records.push(r);
    },
    lifecycle: { actor: { type: 'test', id: 't' }, by: 'test', correlationId: 'c', data: {} },
  };
}

function event(over: Partial<AuditEventInput> = {}): AuditEventInput {
  return {
    eventType: 'user.login',
    category: 'auth',
    occurredAt: new Date(),
    actor: { type: 'user', id: 'u1' },
    action: 'login',
    resource: { type: 'session', id: 's1' },
    outcome: 'SUCCESS',
    correlationId: 'c1',
    ...over,
  } as AuditEventInput;
}

/** A WriteAdmission whose every step appends its name to `steps` and can be made to refuse. */
function admission(
  refuse: Partial<Record<'stopping' | 'tenant' | 'rate' | 'known' | 'full', boolean>> = {},
) {
  const steps: string[] = [];
  const ingest = {
    get isStopping() {
      steps.push('stopping');
      return refuse.stopping ?? false;
    },
    refusal() {
      steps.push('buffer?');
      return refuse.full ? new BackpressureError(500, 'BUFFER_CAPACITY') : null;
    },
    async accept(_t: TenantId, records: readonly unknown[]) {
      steps.push('accept');
      return records.map(() => ({ status: 'STORED' }));
    },
  } as unknown as IngestService;
  const retention = {
    async days() {
      steps.push('retention');
      return 30;
    },
  } as unknown as TenantRetention;
  const tenants = {
    async ensure(t: TenantId) {
      steps.push('tenant');
      if (refuse.tenant) throw new UnknownTenantError(t);
    },
  } as unknown as TenantProvisioner;
  const limiter = {
    refusal() {
      steps.push('rate?');
      return refuse.known ? new RateLimitedError(700) : null;
    },
    async consume() {
      steps.push('rate');
      if (refuse.rate) throw new RateLimitedError(1000);
    },
  } as unknown as WriteRateLimiter;
  const useCase = new WriteAdmission(ingest, retention, tenants, limiter, {
    maxFutureSkewMs: 60_000,
    maxEventsPerCall: 10,
    tenantAutoProvision: false,
  });
  return { useCase, steps };
}

describe('write admission', () => {
  const FIRST = ['stopping', 'rate?', 'buffer?'];

  it('checks stopping, a known refusal, retention and validation, the tenant, the rate, then accepts', async () => {
    const { useCase, steps } = admission();
    const accepted = await useCase.admit(TENANT, [event(), event()], 'COMMITTED');
    expect(accepted).toHaveLength(2);
    expect(steps).toEqual([...FIRST, 'retention', 'tenant', 'rate', 'accept']);
  });

  it('answers a refusal the number of events decides before reading the events', async () => {
    const invalid = [event(), event({ occurredAt: new Date(0) })];
    const limited = admission({ known: true });
    await expect(limited.useCase.admit(TENANT, invalid, 'BUFFERED')).rejects.toMatchObject({
      retryAfterMs: 700,
    });
    expect(limited.steps).toEqual(['stopping', 'rate?']);
    const full = admission({ full: true });
    await expect(full.useCase.admit(TENANT, invalid, 'BUFFERED')).rejects.toBeInstanceOf(
      BackpressureError,
    );
    expect(full.steps).toEqual(FIRST);
    // Negative control: without a known refusal the same events are validated, and refused so.
    const open = admission();
    await expect(open.useCase.admit(TENANT, invalid, 'BUFFERED')).rejects.toThrow(ValidationError);
    expect(open.steps).toEqual([...FIRST, 'retention']);
  });

  it('accepts nothing once a check refuses, and runs no later check', async () => {
    const stopping = admission({ stopping: true });
    await expect(stopping.useCase.admit(TENANT, [event()], 'BUFFERED')).rejects.toBeInstanceOf(
      ShuttingDownError,
    );
    expect(stopping.steps).toEqual(['stopping']);

    const invalid = admission();
    const tooOld = event({ occurredAt: new Date(Date.now() - 31 * 86_400_000) });
    await expect(invalid.useCase.admit(TENANT, [event(), tooOld], 'BUFFERED')).rejects.toThrow(
      ValidationError,
    );
    expect(invalid.steps).toEqual([...FIRST, 'retention']);

    const unknown = admission({ tenant: true });
    await expect(unknown.useCase.admit(TENANT, [event()], 'BUFFERED')).rejects.toBeInstanceOf(
      UnknownTenantError,
    );
    expect(unknown.steps).toEqual([...FIRST, 'retention', 'tenant']);

    const limited = admission({ rate: true });
    await expect(limited.useCase.admit(TENANT, [event()], 'BUFFERED')).rejects.toBeInstanceOf(
      RateLimitedError,
    );
    expect(limited.steps).toEqual([...FIRST, 'retention', 'tenant', 'rate']);
  });
});

function keyAdministration(known: boolean) {
  const created: unknown[] = [];
  const key = (tenantId: TenantId | null): ApiKeyRecord =>
    ({
      id: '7b0f4a3e-0000-4000-8000-000000000001',
      tenantId,
      scopes: tenantId ? ['events:read'] : ['tenants:admin'],
      label: 'ci',
      prefix: 'ag_abcd',
      expiresAt: null,
      revokedAt: null,
    }) as unknown as ApiKeyRecord;
  const apiKeys = {
    async create(spec: { tenantId: TenantId | null }) {
      created.push(spec);
      return { key: key(spec.tenantId), secret: 'ag_secret' };
    },
    async revoke(id: string) {
      return id === 'missing' ? null : key(TENANT);
    },
  } as unknown as ApiKeyStore;
  const directory = { exists: async () => known } as unknown as TenantDirectory;
  return { useCase: new KeyAdministration(apiKeys, directory), created };
}

describe('key administration', () => {
  it('records a tenant key’s creation and revocation in that tenant’s log, through the actor', async () => {
    const { useCase } = keyAdministration(true);
    const actor = recordingActor();
    const made = await useCase.create(actor, {
      tenantId: TENANT,
      scopes: ['events:read'],
      label: 'ci',
      expiresAt: null,
    });
    expect(made.secret).toBe('ag_secret');
    await useCase.revoke(actor, made.key.id);
    expect(actor.records.map((r) => [r.tenant, r.eventType, r.resource.id])).toEqual([
      [TENANT, 'auditgraph.apikey.created', made.key.id],
      [TENANT, 'auditgraph.apikey.revoked', made.key.id],
    ]);
  });

  it('records nothing for a platform key or a key that does not exist', async () => {
    const { useCase } = keyAdministration(true);
    const actor = recordingActor();
    await useCase.create(actor, {
      tenantId: null,
      scopes: ['tenants:admin'],
      label: 'ops',
      expiresAt: null,
    });
    expect(await useCase.revoke(actor, 'missing')).toBeNull();
    expect(actor.records).toEqual([]);
  });

  it('refuses a key for an unknown tenant, or one that breaks a rule, before creating it', async () => {
    const unknown = keyAdministration(false);
    const actor = recordingActor();
    await expect(
      unknown.useCase.create(actor, {
        tenantId: TENANT,
        scopes: ['events:read'],
        label: 'ci',
        expiresAt: null,
      }),
    ).rejects.toBeInstanceOf(UnknownTenantError);
    const known = keyAdministration(true);
    await expect(
      known.useCase.create(actor, {
        tenantId: TENANT,
        scopes: ['tenants:admin'],
        label: 'ci',
        expiresAt: null,
      }),
    ).rejects.toBeInstanceOf(ValidationError);
    expect([unknown.created, known.created, actor.records]).toEqual([[], [], []]);
  });
});
