import { pino, type Logger, type DestinationStream } from 'pino';

/**
 * Knows every resolved secret value and replaces it, wherever it appears in a
 * line about to be written, by a marker naming the variable. Values are also
 * matched in their JSON-escaped form, since log lines are JSON.
 */
export class SecretMasker {
  /** Shorter values would mask ordinary words; `start` and `check` refuse them unless ALLOW_SHORT_SECRETS. */
  static readonly minLength = 4;
  /** Values this long or longer are indexed by their first LONG_KEY characters, shorter ones by their first minLength. */
  private static readonly LONG_KEY = 16;
  private readonly patterns = new Map<string, string>();
  private short = new Map<string, Array<[string, string]>>();
  private long = new Map<string, Array<[string, string]>>();
  /** A bit for each pair of first two characters some value starts with (hashed into 64 Ki): most positions stop at it. */
  private pairs = new Uint8Array(1 << 16);
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

  private static pair(text: string, at: number): number {
    return (text.charCodeAt(at) * 31 + text.charCodeAt(at + 1)) & 0xffff;
  }

  /**
   * Patterns by their first 16 characters (or 4, when shorter), each list longest first. Values
   * of one provider share their first characters (`sk-proj-`, `hf_`, `bench-secret-`): keyed by
   * 4 alone, a line with such a prefix was compared with every one of 2,500 values (2.2 s of
   * CPU while 16 instances printed their start, bench/RESULTS.md).
   */
  private index(): void {
    if (!this.dirty) return;
    this.short = new Map();
    this.long = new Map();
    this.pairs = new Uint8Array(1 << 16);
    for (const entry of this.patterns.entries()) {
      const [form] = entry;
      const byKey = form.length >= SecretMasker.LONG_KEY ? this.long : this.short;
      const key = form.slice(0, form.length >= SecretMasker.LONG_KEY ? SecretMasker.LONG_KEY : SecretMasker.minLength);
      const list = byKey.get(key) ?? [];
      list.push(entry);
      byKey.set(key, list);
      this.pairs[SecretMasker.pair(form, 0)] = 1;
    }
    for (const list of [...this.short.values(), ...this.long.values()]) list.sort((x, y) => y[0].length - x[0].length);
    this.dirty = false;
  }

  /**
   * Replace every known value. Scans the line once: at each position a bit for its first two
   * characters, then one lookup of the window, so the cost follows the line's length, not the
   * number of secrets times the length. At each position the longest value wins, so a value that
   * contains another is masked whole.
   */
  mask(text: string): string {
    if (this.patterns.size === 0) return text;
    this.index();
    const { pairs, short, long } = this;
    const { minLength, LONG_KEY } = SecretMasker;
    const found = (list: Array<[string, string]> | undefined, at: number) => list?.find(([value]) => text.startsWith(value, at));
    let out = '';
    let last = 0;
    for (let i = 0; i + minLength <= text.length; ) {
      const hit =
        pairs[SecretMasker.pair(text, i)] === 1
          ? ((i + LONG_KEY <= text.length ? found(long.get(text.slice(i, i + LONG_KEY)), i) : undefined) ?? found(short.get(text.slice(i, i + minLength)), i))
          : undefined;
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
  /** The lines of one turn of the event loop in one write (see TurnBatch): for `start`, whose instances print thousands. */
  batched?: boolean;
}

/**
 * The lines logged in one turn of the event loop, written together at its end (setImmediate) by one
 * synchronous write of `sink` (sonic-boom, which retries EAGAIN), and at once on process exit:
 * nothing waits longer than the turn, nothing is lost to process.exit(). 8,000 start-up lines at
 * 16 x 500 were as many write(2) calls (~30 us each on 2 busy cores: bench/RESULTS.md).
 */
export class TurnBatch implements DestinationStream {
  /** The turn's lines; a flush is scheduled whenever there are any. */
  private pending: string[] = [];
  private readonly flushNow = (): void => this.flush();

  constructor(private readonly sink: { write(text: string): unknown }) {
    process.on('exit', this.flushNow);
  }

  write(line: string): void {
    if (this.pending.push(line) === 1) setImmediate(this.flushNow);
  }

  flush(): void {
    if (!this.pending.length) return;
    const text = this.pending.length === 1 ? this.pending[0]! : this.pending.join('');
    this.pending = [];
    this.sink.write(text);
  }

  /** Write what is pending and stop listening for the exit. */
  end(): void {
    this.flush();
    process.off('exit', this.flushNow);
  }
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
      const sink = pino.destination({ fd, sync: true });
      destination = options.batched ? new TurnBatch(sink) : sink;
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
