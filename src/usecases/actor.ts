import type { AccessRecord } from '../ingest/access-log.js';
import type { LifecycleRecord } from '../lifecycle/lifecycle-events.js';

/** An administrative action as its use case describes it; the actor adds who did it and when. */
export type ActionRecord = Omit<AccessRecord, 'actor' | 'correlationId' | 'data'> & {
  data?: Record<string, unknown>;
};

/**
 * Who performs an administrative action, as each door knows them: an API key's holder or a
 * GraphQL caller in AUTH_MODE=dev (graphql/context.ts), an operator at the command line
 * (cli/common.ts). A use case does the action, then hands its record to `recordAccess`, which
 * is the door's way of writing it: the service accepts it into the tenant's log, the CLI
 * commits it before the command returns.
 */
export interface Actor {
  /** Writes the access record of what this actor just did (nothing when nobody is named). */
  recordAccess(record: ActionRecord): Promise<void>;
  /**
   * This actor as a lifecycle event's actor, as the `placed_by` / `released_by` of a legal hold,
   * and what the event's data adds about the request.
   */
  readonly lifecycle: {
    actor: LifecycleRecord['actor'];
    by: string;
    /** The request (or command run) the change belongs to. */
    correlationId: string;
    data: Record<string, unknown>;
  };
}
