import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { SecretMasker, TurnBatch } from '../src/log.js';

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

describe('TurnBatch', () => {
  it('writes the lines of one turn of the event loop in one write, in order, masked, and nothing before the turn ends', async () => {
    const writes: string[] = [];
    const batch = new TurnBatch({ write: (text: string) => writes.push(text) });
    const masker = new SecretMasker();
    masker.add('HF_TOKEN', 'canary-turn-batch-0001');
    const logger = pino({ base: null, timestamp: false, hooks: { streamWrite: (line: string) => masker.mask(line) } }, batch);
    logger.info('one');
    logger.info('two canary-turn-batch-0001');
    logger.warn('three');
    expect(writes).toEqual([]);
    await nextTurn();
    expect(writes).toHaveLength(1);
    expect(writes[0]!.split('\n').map((l) => (l ? (JSON.parse(l) as { msg: string }).msg : l))).toEqual(['one', 'two [masked:HF_TOKEN]', 'three', '']);
    expect(writes[0]).not.toContain('canary');
    // A later turn is a write of its own; an idle turn writes nothing.
    logger.info('four');
    await nextTurn();
    await nextTurn();
    expect(writes).toHaveLength(2);
    expect(JSON.parse(writes[1]!) as { msg: string }).toMatchObject({ msg: 'four' });
    // end() writes what is pending at once (as the exit does) and stops listening for the exit.
    const listeners = process.listenerCount('exit');
    logger.info('five');
    batch.end();
    expect(writes).toHaveLength(3);
    expect(process.listenerCount('exit')).toBe(listeners - 1);
  });
});
