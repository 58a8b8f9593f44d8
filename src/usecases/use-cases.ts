import type { DeadLetterAdmin } from './dead-letter-admin.js';
import type { EventWaits } from './event-waits.js';
import type { KeyAdministration } from './key-administration.js';
import type { LegalHolds } from './legal-holds.js';
import type { TenantProvisioning } from './tenant-provisioning.js';
import type { WriteAdmission } from './write-admission.js';

/** What the command line does that the API does too: one implementation for both doors. */
export interface CliUseCases {
  keys: KeyAdministration;
  provisioning: TenantProvisioning;
}

/** What the doors do, each use case once; built by wiring.ts. */
export interface UseCases extends CliUseCases {
  admission: WriteAdmission;
  /** Waiting for a correlation id's events to be stored (waitForEvents). */
  waits: EventWaits;
  legalHolds: LegalHolds;
  deadLetters: DeadLetterAdmin;
}
