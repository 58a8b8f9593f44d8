/**
 * Hands the messages of every connection to graphql-ws one per macrotask, the connections taking
 * turns. A client's burst (a hundred `subscribe` messages arrive in one socket read) would
 * otherwise be handled back to back — each operation's authorisation, parsing, validation and
 * first steps of execution run before the loop gets back to anyone else's request. A connection's
 * own messages keep their order; what one message's work awaits runs when it is ready, as before.
 */
export class MessageTurns {
  /** Connections with messages waiting, in the order they get their turn. */
  private readonly queue: Lane[] = [];
  private scheduled = false;

  /** `maxWaiting`: messages a lane holds before it asks its socket to stop reading. */
  constructor(private readonly maxWaiting: number) {}

  /**
   * A connection's lane: `handle` gets its messages in order; `waiting(true)` is called when
   * `maxWaiting` wait (stop reading the socket), `waiting(false)` once they are handled.
   */
  lane(handle: (data: string) => Promise<void>, waiting: (full: boolean) => void): Lane {
    const lane: Lane = {
      messages: [],
      queued: false,
      closed: false,
      paused: false,
      push: (data) => {
        if (lane.closed) return;
        lane.messages.push(data);
        if (!lane.paused && lane.messages.length >= this.maxWaiting) {
          lane.paused = true;
          waiting(true);
        }
        if (!lane.queued) {
          lane.queued = true;
          this.queue.push(lane);
          this.schedule();
        }
      },
      close: () => {
        lane.closed = true;
        lane.messages.length = 0;
      },
      take: () => {
        const data = lane.messages.shift();
        if (lane.paused && lane.messages.length < this.maxWaiting / 2) {
          lane.paused = false;
          waiting(false);
        }
        if (data !== undefined) void handle(data);
      },
    };
    return lane;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.turn);
  }

  /** One message of the connection whose turn it is; the connection goes to the back if it has more. */
  private readonly turn = () => {
    this.scheduled = false;
    const lane = this.queue.shift();
    if (lane) {
      if (lane.closed || lane.messages.length <= 1) lane.queued = false;
      else this.queue.push(lane);
      if (!lane.closed) lane.take();
    }
    if (this.queue.length > 0) this.schedule();
  };
}

export interface Lane {
  messages: string[];
  queued: boolean;
  closed: boolean;
  paused: boolean;
  push(data: string): void;
  close(): void;
  take(): void;
}
