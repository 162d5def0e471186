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
  private byPrefix = new Map<string, Array<[string, string]>>();
  /** Indexed on the next mask(), not on every add(): 500 nodes x 5 keys would re-index 2,500 times. */
  private dirty = false;

  add(variable: string, value: string): void {
    if (value.length < SecretMasker.minLength) return;
    const marker = `[masked:${variable}]`;
    // The first name a form was known by stays its marker. Every form is registered even when the value itself
    // is already known (as a line of a longer value, say): its JSON-escaped form may not be.
    const forms = [value, JSON.stringify(value).slice(1, -1)];
    // Output is relayed line by line, so each line of a multi-line value (a PEM key) is masked on its own too.
    for (const line of value.split(/\r?\n/)) if (line.trim().length >= SecretMasker.minLength) forms.push(line);
    for (const form of forms) {
      if (form.length < SecretMasker.minLength || this.patterns.has(form)) continue;
      this.patterns.set(form, marker);
      this.dirty = true;
    }
  }

  /** Patterns by their first 4 characters, each list longest first: one pass over a line finds every candidate. */
  private index(): Map<string, Array<[string, string]>> {
    if (this.dirty) {
      this.byPrefix = new Map();
      for (const entry of this.patterns.entries()) {
        const key = entry[0].slice(0, SecretMasker.minLength);
        const list = this.byPrefix.get(key) ?? [];
        list.push(entry);
        this.byPrefix.set(key, list);
      }
      for (const list of this.byPrefix.values()) list.sort((x, y) => y[0].length - x[0].length);
      this.dirty = false;
    }
    return this.byPrefix;
  }

  /**
   * Replace every known value. Scans the line once, looking up each 4-character window,
   * so the cost follows the line's length, not the number of secrets times the length.
   * At each position the longest value wins, so a value that contains another is masked whole.
   */
  mask(text: string): string {
    if (this.patterns.size === 0) return text;
    const index = this.index();
    let out = '';
    let last = 0;
    for (let i = 0; i + SecretMasker.minLength <= text.length; ) {
      const candidates = index.get(text.slice(i, i + SecretMasker.minLength));
      const hit = candidates?.find(([value]) => text.startsWith(value, i));
      if (hit) {
        out += text.slice(last, i) + hit[1];
        i += hit[0].length;
        last = i;
      } else {
        i += 1;
      }
    }
    return last === 0 ? text : out + text.slice(last);
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
