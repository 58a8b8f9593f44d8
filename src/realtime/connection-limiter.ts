/**
 * Subscription connections open per tenant on this instance (MAX_CONNECTIONS_PER_TENANT): a
 * WebSocket connection counts from its connection_init to its close, an SSE subscription for
 * as long as its stream is open. 0 switches the limit off.
 */
export class TenantConnectionLimiter {
  private readonly open = new Map<string, number>();

  constructor(readonly max: number) {}

  /** Takes a place for `tenant`; returns its release (idempotent), or null when full. */
  acquire(tenant: string): (() => void) | null {
    const n = this.open.get(tenant) ?? 0;
    if (this.max > 0 && n >= this.max) return null;
    this.open.set(tenant, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(tenant) ?? 1) - 1;
      if (left <= 0) this.open.delete(tenant);
      else this.open.set(tenant, left);
    };
  }

  /** Connections of `tenant` open now. */
  count(tenant: string): number {
    return this.open.get(tenant) ?? 0;
  }
}
