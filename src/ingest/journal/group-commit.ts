/**
 * Groups concurrent requests into one write: requests arriving while a write is in flight (and,
 * with `lingerMs`, for that long after the first of a group) go together into the next one, and
 * each request's promise settles with its group's write. One round trip or one fsync serves
 * every call of a moment, and a lone call waits for nothing but its own write.
 *
 * Written here rather than taken from a batching library: what is needed is exactly "the next
 * group starts when the previous write ends" with per-group failure, in a few lines; DataLoader's
 * per-key results and caching do not fit a write.
 */
export class GroupCommit<T> {
  private next: { items: T[]; waiters: { resolve(): void; reject(err: unknown): void }[] } | null =
    null;
  private writing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    /** Writes one group; throws when none of it was written. */
    private readonly write: (items: T[]) => Promise<void>,
    private readonly lingerMs = 0,
  ) {}

  /** Resolves once `item` is written with its group; rejects with the group's error. */
  add(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (!this.next) {
        this.next = { items: [], waiters: [] };
        if (!this.writing) this.arm();
      }
      this.next.items.push(item);
      this.next.waiters.push({ resolve, reject });
    });
  }

  /** Items waiting for their write, the one in flight excluded. */
  get waiting(): number {
    return this.next?.items.length ?? 0;
  }

  /** Resolves once nothing is waiting or being written. */
  async idle(): Promise<void> {
    while (this.writing || this.next) {
      if (this.writing) await this.writing;
      else await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  private arm(): void {
    if (this.lingerMs <= 0) {
      queueMicrotask(() => this.run());
      return;
    }
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.run();
    }, this.lingerMs);
  }

  private run(): void {
    const group = this.next;
    if (!group || this.writing) return;
    this.next = null;
    this.writing = this.write(group.items).then(
      () => {
        for (const w of group.waiters) w.resolve();
      },
      (err: unknown) => {
        for (const w of group.waiters) w.reject(err);
      },
    );
    void this.writing.finally(() => {
      this.writing = null;
      if (this.next) this.arm();
    });
  }
}
