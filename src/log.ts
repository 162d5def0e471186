import { pino, type Logger, type DestinationStream } from 'pino';

/**
 * Knows every resolved secret value and replaces it, wherever it appears in a
 * line about to be written, by a marker naming the variable. Values are also
 * matched in their JSON-escaped form, since log lines are JSON.
 */
export class SecretMasker {
  /** Shorter values would mask ordinary words; `start` and `check` refuse them unless ALLOW_SHORT_SECRETS. */
  static readonly minLength = 4;
  private readonly patterns = new Map<string, string>();
  private ordered: Array<[string, string]> = [];

  add(variable: string, value: string): void {
    if (value.length < SecretMasker.minLength) return;
    // The first name a value was known by stays its marker.
    if (this.patterns.has(value)) return;
    const marker = `[masked:${variable}]`;
    this.patterns.set(value, marker);
    const escaped = JSON.stringify(value).slice(1, -1);
    if (escaped !== value && !this.patterns.has(escaped)) this.patterns.set(escaped, marker);
    // Output is relayed line by line, so each line of a multi-line value (a PEM key) is masked on its own too.
    for (const line of value.split(/\r?\n/)) {
      if (line !== value && line.trim().length >= SecretMasker.minLength && !this.patterns.has(line)) this.patterns.set(line, marker);
    }
    // Longest first, so a value that contains another is masked whole.
    this.ordered = [...this.patterns.entries()].sort((a, b) => b[0].length - a[0].length);
  }

  get size(): number {
    return this.ordered.length;
  }

  mask(text: string): string {
    let out = text;
    for (const [value, marker] of this.ordered) {
      if (out.includes(value)) out = out.split(value).join(marker);
    }
    return out;
  }
}

export interface LoggerOptions {
  level: string;
  masker: SecretMasker;
  /** 1 for stdout (the default), 2 for stderr (`detect --json` keeps stdout for its JSON). */
  fd?: 1 | 2;
  /** Readable lines for a person at a terminal; JSON lines otherwise. */
  pretty?: boolean;
  /** Tests pass a stream to read what was logged. */
  destination?: DestinationStream;
}

export async function createLogger(options: LoggerOptions): Promise<Logger> {
  const fd = options.fd ?? 1;
  const pretty = options.pretty ?? (fd === 1 ? process.stdout.isTTY : process.stderr.isTTY) === true;
  let destination = options.destination;
  if (!destination) {
    if (pretty) {
      const { default: pinoPretty } = await import('pino-pretty');
      destination = pinoPretty({ destination: fd, colorize: true, sync: true, singleLine: true, ignore: 'pid,hostname' });
    } else {
      destination = pino.destination({ fd, sync: true });
    }
  }
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      hooks: { streamWrite: (line: string) => options.masker.mask(line) },
    },
    destination,
  );
}

/** A logger that writes nothing: for code paths that may run before logging is set up. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
