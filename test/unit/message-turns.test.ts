import { describe, expect, it } from 'vitest';
import { MessageTurns } from '../../src/http/message-turns.js';

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('MessageTurns', () => {
  it('hands one message per macrotask, connections in turn, each in its own order', async () => {
    const turns = new MessageTurns(1_000);
    const seen: string[] = [];
    const handle = async (m: string) => {
      seen.push(m);
    };
    const a = turns.lane(handle, () => {});
    const b = turns.lane(handle, () => {});
    for (let i = 0; i < 3; i++) a.push(`a${i}`);
    b.push('b0');
    b.push('b1');
    expect(seen).toEqual([]); // nothing runs in the read that brought the messages
    const perTurn: number[] = [];
    for (let i = 0; i < 6; i++) {
      const before = seen.length;
      await turn();
      perTurn.push(seen.length - before);
    }
    expect(seen).toEqual(['a0', 'b0', 'a1', 'b1', 'a2']);
    expect(perTurn.slice(0, 5)).toEqual([1, 1, 1, 1, 1]);
  });

  it('does not wait for a message’s work before the next (a subscription runs for long)', async () => {
    const turns = new MessageTurns(1_000);
    const seen: string[] = [];
    const lane = turns.lane(
      (m) => {
        seen.push(m);
        return new Promise(() => {}); // never settles, as an open subscription
      },
      () => {},
    );
    lane.push('subscribe 1');
    lane.push('subscribe 2');
    await turn();
    await turn();
    expect(seen).toEqual(['subscribe 1', 'subscribe 2']);
  });

  it('stops reading a connection with too many messages waiting, and reads again once handled', async () => {
    const turns = new MessageTurns(4);
    const waiting: boolean[] = [];
    const lane = turns.lane(
      async () => {},
      (full) => waiting.push(full),
    );
    for (let i = 0; i < 6; i++) lane.push(String(i));
    expect(waiting).toEqual([true]);
    for (let i = 0; i < 6; i++) await turn();
    expect(waiting).toEqual([true, false]);
  });

  it('drops what a closed connection still had waiting', async () => {
    const turns = new MessageTurns(1_000);
    const seen: string[] = [];
    const lane = turns.lane(
      async (m) => {
        seen.push(m);
      },
      () => {},
    );
    lane.push('1');
    lane.push('2');
    await turn();
    lane.close();
    lane.push('3');
    await turn();
    await turn();
    expect(seen).toEqual(['1']);
  });
});
