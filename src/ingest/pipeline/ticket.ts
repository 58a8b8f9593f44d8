import type { WriteStatus } from '../batch-writer.js';

/** Where an accepted event stands: BUFFERED until it has a final status. */
export type EventStatus = Exclude<WriteStatus, 'REJECTED'> | 'BUFFERED' | 'DEAD_LETTERED';

/** One accepted call: settles when every one of its events has a final status. */
export class Ticket {
  readonly statuses: EventStatus[];
  remaining: number;
  stored = 0;
  duplicates = 0;
  deadLettered = 0;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(size: number) {
    this.statuses = new Array<EventStatus>(size).fill('BUFFERED');
    this.remaining = size;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** How its events ended (once done). */
  outcome(): { stored: number; duplicates: number; deadLettered: number } {
    return { stored: this.stored, duplicates: this.duplicates, deadLettered: this.deadLettered };
  }

  settle(index: number, status: EventStatus): void {
    this.statuses[index] = status;
    if (status === 'STORED') this.stored++;
    else if (status === 'DUPLICATE') this.duplicates++;
    else if (status === 'DEAD_LETTERED') this.deadLettered++;
    if (--this.remaining === 0) this.resolveDone();
  }
}
