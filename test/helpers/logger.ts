import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { SecretMasker } from '../../src/log.js';

/** A real pino logger whose lines (after masking) are kept for assertions. */
export function captureLogger(masker = new SecretMasker()): { logger: Logger; lines: string[]; masker: SecretMasker } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  const logger = pino({ level: 'debug', hooks: { streamWrite: (s: string) => masker.mask(s) } }, stream);
  return { logger, lines, masker };
}
