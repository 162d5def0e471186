import { describe, expect, it } from 'vitest';
import { StopRequested, StopRequests } from '../src/stop-requests.js';
import { captureLogger } from './helpers/logger.js';

describe('StopRequests', () => {
  it('keeps the first reason, logs and ignores later ones, and makes check() and orStop() stop the boot', async () => {
    const { logger, lines } = captureLogger();
    const stops = new StopRequests(logger, 'stop');
    try {
      expect(() => stops.check()).not.toThrow();
      expect(await stops.orStop(Promise.resolve(7))).toBe(7);
      const pending = stops.orStop(new Promise<number>(() => undefined));
      process.emit('SIGTERM', 'SIGTERM');
      await expect(pending).rejects.toBeInstanceOf(StopRequested);
      expect(await stops.requested).toBe('SIGTERM');
      stops.request('PM2 gone');
      expect(stops.reason).toBe('SIGTERM');
      expect(lines.some((l) => l.includes('PM2 gone received during shutdown; finishing the shutdown (the wipe still runs)'))).toBe(true);
      expect(() => stops.check()).toThrow(StopRequested);
      expect(stops.fatal).toBe(false);
    } finally {
      stops.dispose();
    }
  });

  it('turns an unhandled rejection into a logged fatal stop, and SIGHUP into the given action; dispose removes every handler', async () => {
    const before = ['SIGTERM', 'SIGINT', 'SIGHUP', 'uncaughtException', 'unhandledRejection'].map((e) => process.listenerCount(e));
    const { logger, lines } = captureLogger();
    let hangups = 0;
    const stops = new StopRequests(logger, () => {
      hangups += 1;
    });
    try {
      process.emit('SIGHUP', 'SIGHUP');
      expect(hangups).toBe(1);
      expect(stops.reason).toBeUndefined();
      process.emit('unhandledRejection', new Error('a bug'), Promise.resolve());
      expect(await stops.requested).toBe('fatal error');
      expect(stops.fatal).toBe(true);
      expect(lines.some((l) => l.includes('"level":60') && l.includes('unexpected error: shutting down') && l.includes('a bug'))).toBe(true);
    } finally {
      stops.dispose();
    }
    expect(['SIGTERM', 'SIGINT', 'SIGHUP', 'uncaughtException', 'unhandledRejection'].map((e) => process.listenerCount(e))).toEqual(before);
  });
});
