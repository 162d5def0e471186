/**
 * What an instance's output says, read the way ComfyUI writes it (everything on stderr): the
 * severity of each line, Python tracebacks kept together, which custom nodes loaded, and whether
 * every instance fails at start in the same way (a crash loop). Pure: no I/O, no timers, no
 * logging; ProcessManager feeds it PM2's events and writes what it returns.
 */

export type Level = 'error' | 'warn' | 'info';

/** One entry to log: a line, or a whole traceback (msg: its exception line). */
export interface LogEntry {
  level: Level;
  msg: string;
  fields: Record<string, unknown>;
}

export interface NodeStatus {
  loaded: boolean;
  /** ComfyUI's reason (masked); absent when it gave none or no masker was given. */
  error?: string;
}

export interface ExitRecord {
  code: number | null;
  signal: string | null;
  /** ISO time. */
  at: string;
}

/** What /status reports of one instance; every text in it is masked. */
export interface InstanceRecord {
  /** By the node's folder name (the basename of the path ComfyUI printed). */
  nodes: Map<string, NodeStatus>;
  /** The last LAST_LINES lines it printed, both streams, across restarts. */
  lastOutput: string[];
  /** The last line (or traceback's exception line) it printed at error level. */
  lastError: string | undefined;
  lastExit: ExitRecord | undefined;
  /** Exits seen (each a PM2 restart, or a restart on purpose). */
  exits: number;
  /**
   * What the serving instance's /object_info says: node classes per custom node (`python_module`
   * `custom_nodes.<name>`, which current ComfyUI sends); undefined until read, or where it sends none.
   */
  classes?: Record<string, number>;
}

export interface CrashLoopFinding {
  message: string;
  code: number | null;
  signal: string | null;
  /** ComfyUI's own last line (masked), from the first instance. */
  line: string;
  instances: string[];
  /** Identical failures at start of every instance so far (the smallest count among them). */
  failures: number;
  at: string;
}

/** Lines kept per instance for /status. */
export const LAST_LINES = 20;
/** Longest line kept for /status (the log has it whole). */
export const KEPT_LINE_CHARS = 2048;
/**
 * An exit is "at start" when the run ended before ComfyUI printed `To see the GUI go to:` (the
 * line it prints once its server listens) and within this long of its start.
 */
export const START_WINDOW_MS = 120_000;
/** A traceback logged as one entry keeps at most this many lines (its start and its end)... */
export const TRACEBACK_MAX_LINES = 200;
/** ...and this many characters. */
export const TRACEBACK_MAX_CHARS = 256 * 1024;
const TRACEBACK_HEAD = 20;

const PREFIX = String.raw`^\s*(?:\[[^\]]*\]\s*)?`;
const TRACEBACK_START = /^\s*Traceback \(most recent call last\):\s*$/;
const TRACEBACK_CHAIN = /^(?:During handling of the above exception, another exception occurred:|The above exception was the direct cause of the following exception:)\s*$/;
const CANNOT_IMPORT = new RegExp(`${PREFIX}Cannot import (.+?) module for custom nodes:\\s?(.*)$`);
const IMPORT_TIME = new RegExp(`${PREFIX}(\\d+(?:\\.\\d+)?) seconds( \\(IMPORT FAILED\\))?: (.+?)\\s*$`);
const SERVER_UP = new RegExp(`${PREFIX}To see the GUI go to: `);
const ERROR_LINE = [/\b\w*Error\b/, /\berror:/i, new RegExp(`${PREFIX}(?:ERROR|CRITICAL|FATAL)\\b`), /^\w*Exception\b/, /\(IMPORT FAILED\)/];
const WARN_LINE = [/\b\w*Warning\b/, /\bWARNING\b/, /\bwarning:/i];

/**
 * Every line the patterns above can match holds one of these words: most lines (ComfyUI's import
 * times, thousands at start) are told apart by this one scan instead of eight (~1 vs ~10 us a line).
 */
const MAYBE_NOT_INFO = /error|critical|fatal|exception|import failed|cannot import|warning/i;

/** The severity of one line outside a traceback. */
export function classifyLine(line: string): Level {
  if (!MAYBE_NOT_INFO.test(line)) return 'info';
  if (CANNOT_IMPORT.test(line) || ERROR_LINE.some((re) => re.test(line))) return 'error';
  if (WARN_LINE.some((re) => re.test(line))) return 'warn';
  return 'info';
}

/** The node's name: the last component of the path ComfyUI printed (a folder, or a single-file `x.py`). */
export function nodeName(nodePath: string): string {
  const parts = nodePath.trim().split(/[/\\]+/).filter(Boolean);
  return parts[parts.length - 1] ?? nodePath.trim();
}

/** What a line says about a custom node, if anything. */
export function parseNodeLine(line: string): { node: string; loaded: boolean; error?: string } | undefined {
  const cannot = CANNOT_IMPORT.exec(line);
  if (cannot) return { node: nodeName(cannot[1] ?? ''), loaded: false, error: (cannot[2] ?? '').trim() };
  const time = IMPORT_TIME.exec(line);
  if (time) return { node: nodeName(time[3] ?? ''), loaded: !time[2] };
  return undefined;
}

/** ComfyUI's server listens: this run started. */
export function isServerUpLine(line: string): boolean {
  return SERVER_UP.test(line);
}

/** A failure's line without what differs between instances (ports, GPU numbers, pids, times). */
export function normalizeFailure(line: string): string {
  return line.replace(/\d+/g, '#').replace(/\s+/g, ' ').trim();
}

/** The custom node a traceback's frames lead into (the last frame under custom_nodes/), if any. */
function tracebackNode(lines: string[]): string | undefined {
  let node: string | undefined;
  for (const line of lines) {
    const match = /custom_nodes[/\\]([^/\\"]+)/.exec(line);
    if (match?.[1]) node = match[1];
  }
  return node;
}

/**
 * Groups a stream's lines into log entries: a Python traceback, from `Traceback (most recent call
 * last):` (or a chained exception's "During handling of the above exception...") to its exception
 * line (the first line that is not indented), is held and returned as ONE error entry; any other
 * line is returned at once with its severity.
 */
export class TracebackGrouper {
  private block: string[] | undefined;
  private chars = 0;
  private omitted = 0;

  get pending(): boolean {
    return this.block !== undefined;
  }

  push(line: string): LogEntry[] {
    if (this.block) {
      if (line.trim() === '') return [];
      if (/^\s/.test(line) || TRACEBACK_START.test(line)) {
        this.add(line);
        return [];
      }
      return [this.finish(line)];
    }
    if (TRACEBACK_START.test(line) || TRACEBACK_CHAIN.test(line)) {
      this.block = [];
      this.chars = 0;
      this.omitted = 0;
      this.add(line);
      return [];
    }
    return [{ level: classifyLine(line), msg: line, fields: {} }];
  }

  /** A traceback cut short (the process died, or the stream ended): logged as it is. */
  flush(): LogEntry[] {
    if (!this.block) return [];
    const last = this.block[this.block.length - 1] ?? 'Traceback';
    return [this.finish(`${last.trim()} (traceback cut short)`, false)];
  }

  private add(line: string): void {
    const block = this.block;
    if (!block) return;
    block.push(line);
    this.chars += line.length;
    // A huge traceback keeps its start (where it came from) and its end (what failed).
    while ((block.length > TRACEBACK_MAX_LINES || this.chars > TRACEBACK_MAX_CHARS) && block.length > TRACEBACK_HEAD + 1) {
      const [dropped] = block.splice(TRACEBACK_HEAD, 1);
      this.chars -= dropped?.length ?? 0;
      this.omitted += 1;
    }
  }

  private finish(exceptionLine: string, complete = true): LogEntry {
    const lines = this.block ?? [];
    this.block = undefined;
    const traceback = this.omitted > 0 ? [...lines.slice(0, TRACEBACK_HEAD), `... ${this.omitted} line(s) omitted ...`, ...lines.slice(TRACEBACK_HEAD)] : lines;
    const node = tracebackNode(lines);
    const fields: Record<string, unknown> = { traceback };
    if (node) fields.node = node;
    if (!complete) fields.incomplete = true;
    return { level: 'error', msg: exceptionLine, fields };
  }
}

export interface MonitorOptions {
  /** Masks a text kept for /status. Without one, no text is kept (only node names, flags and exit codes). */
  mask?: (text: string) => string;
  /** Nodes that declare env: a failed import of one is logged once more at error level, naming it. */
  envNodes?: () => readonly string[];
  /** Every instance the boot runs; no crash loop is judged while it is empty. */
  instances?: () => readonly string[];
  now?: () => number;
  startWindowMs?: number;
}

interface Run {
  startedAt: number | undefined;
  running: boolean;
  serverUp: boolean;
  /** Last non-blank line of this run, per stream (masked when a masker is given). */
  lastLine: { stdout?: string; stderr?: string };
  /** The records' nodes are from the previous run until this run prints about a node. */
  nodesStale: boolean;
  reported: Set<string>;
  pendingExit: (ExitRecord & { atMs: number; onPurpose: boolean }) | undefined;
  /** Consecutive identical failures at start. */
  streak: { signature: string; count: number; line: string; code: number | null; signal: string | null } | undefined;
  groupers: { stdout: TracebackGrouper; stderr: TracebackGrouper };
}

export interface SettleResult {
  logs: LogEntry[];
  /** Set when every instance now fails at start in the same way and this is new (log it once). */
  finding?: CrashLoopFinding;
  /** The current crash loop, if every instance is in one (failures counts the rounds). */
  crashLoop?: CrashLoopFinding;
}

/**
 * Per-instance records from the instances' output and exits: node statuses, last lines, last
 * exit, and crash loops. `records` is the map /status reads (BootState.instanceRecords).
 */
export class InstanceMonitor {
  private readonly runs = new Map<string, Run>();
  private lastFinding: string | undefined;
  private readonly now: () => number;
  private readonly startWindowMs: number;

  constructor(
    readonly records: Map<string, InstanceRecord>,
    private readonly options: MonitorOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.startWindowMs = options.startWindowMs ?? START_WINDOW_MS;
  }

  private mask(text: string): string | undefined {
    return this.options.mask ? this.options.mask(text) : undefined;
  }

  record(instance: string): InstanceRecord {
    let record = this.records.get(instance);
    if (!record) {
      record = { nodes: new Map(), lastOutput: [], lastError: undefined, lastExit: undefined, exits: 0 };
      this.records.set(instance, record);
    }
    return record;
  }

  private run(instance: string): Run {
    let run = this.runs.get(instance);
    if (!run) {
      run = {
        startedAt: undefined,
        running: true,
        serverUp: false,
        lastLine: {},
        nodesStale: false,
        reported: new Set(),
        pendingExit: undefined,
        streak: undefined,
        groupers: { stdout: new TracebackGrouper(), stderr: new TracebackGrouper() },
      };
      this.runs.set(instance, run);
    }
    return run;
  }

  /** PM2 (re)started the instance (`online`); `startedAt` is its pm_uptime when known. */
  started(instance: string, startedAt = this.now()): void {
    const run = this.run(instance);
    this.record(instance);
    run.startedAt = startedAt;
    run.running = true;
    run.serverUp = false;
    run.lastLine = {};
  }

  /** The instance served its port (readiness saw it): it came up, whatever it printed. */
  serving(instance: string): void {
    const run = this.run(instance);
    run.serverUp = true;
    run.streak = undefined;
  }

  /** One complete, non-blank line of output. Returns what to log. */
  line(instance: string, stream: 'stdout' | 'stderr', text: string): LogEntry[] {
    const run = this.run(instance);
    const record = this.record(instance);
    run.startedAt ??= this.now();
    const masked = this.mask(text);
    if (masked !== undefined) {
      record.lastOutput.push(masked.length > KEPT_LINE_CHARS ? `${masked.slice(0, KEPT_LINE_CHARS)}...` : masked);
      if (record.lastOutput.length > LAST_LINES) record.lastOutput.splice(0, record.lastOutput.length - LAST_LINES);
    }
    run.lastLine[stream] = masked ?? text;
    if (isServerUpLine(text)) {
      run.serverUp = true;
      run.streak = undefined;
    }
    const logs = run.groupers[stream].push(text);
    for (const entry of logs) if (entry.level === 'error') record.lastError = this.mask(entry.msg);
    const node = parseNodeLine(text);
    if (node) logs.push(...this.nodeEvent(instance, run, record, node));
    return logs;
  }

  private nodeEvent(instance: string, run: Run, record: InstanceRecord, event: { node: string; loaded: boolean; error?: string }): LogEntry[] {
    if (run.nodesStale) {
      record.nodes.clear();
      run.reported.clear();
      run.nodesStale = false;
    }
    const known = record.nodes.get(event.node);
    if (event.loaded) {
      record.nodes.set(event.node, { loaded: true });
      return [];
    }
    const error = event.error ? this.mask(event.error) : known?.error;
    record.nodes.set(event.node, error ? { loaded: false, error } : { loaded: false });
    const declaresEnv = this.options.envNodes?.().some((n) => n === event.node || `${n}.py` === event.node) ?? false;
    if (!declaresEnv || run.reported.has(event.node)) return [];
    run.reported.add(event.node);
    const reason = event.error || 'IMPORT FAILED';
    return [{
      level: 'error',
      msg: `custom node ${event.node} failed to import in ${instance}: ${reason}; it declares env, and its .env is written but unused`,
      fields: { instance, node: event.node, declaresEnv: true },
    }];
  }

  /** PM2 reports the instance exited; settle() judges it once its last output is in. */
  exited(instance: string, exit: { code: number | null; signal: string | null; onPurpose?: boolean }): void {
    const run = this.run(instance);
    const record = this.record(instance);
    const atMs = this.now();
    const at = new Date(atMs).toISOString();
    record.lastExit = { code: exit.code, signal: exit.signal, at };
    record.exits += 1;
    run.running = false;
    run.pendingExit = { code: exit.code, signal: exit.signal, at, atMs, onPurpose: exit.onPurpose ?? false };
  }

  /** True when an exit awaits settle(). */
  pending(instance: string): boolean {
    return this.runs.get(instance)?.pendingExit !== undefined;
  }

  /** Flush what the exited run left (a cut traceback) and judge its exit. */
  settle(instance: string): SettleResult {
    const run = this.run(instance);
    const logs = [...run.groupers.stderr.flush(), ...run.groupers.stdout.flush()];
    const record = this.record(instance);
    for (const entry of logs) record.lastError = this.mask(entry.msg);
    const exit = run.pendingExit;
    run.pendingExit = undefined;
    if (!exit) return { logs };
    run.nodesStale = true;
    const started = run.startedAt;
    run.startedAt = undefined;
    if (exit.onPurpose) return { logs };
    const atStart = !run.serverUp && (started === undefined || exit.atMs - started < this.startWindowMs);
    if (!atStart) {
      run.streak = undefined;
      return { logs };
    }
    const line = run.lastLine.stderr ?? run.lastLine.stdout ?? '';
    const signature = `${exit.code}|${exit.signal}|${normalizeFailure(line)}`;
    run.streak = run.streak?.signature === signature ? { ...run.streak, count: run.streak.count + 1 } : { signature, count: 1, line, code: exit.code, signal: exit.signal };
    const crashLoop = this.crashLoop();
    if (!crashLoop) {
      this.lastFinding = undefined;
      return { logs };
    }
    const key = `${crashLoop.code}|${crashLoop.signal}|${normalizeFailure(crashLoop.line)}`;
    const isNew = this.lastFinding !== key;
    this.lastFinding = key;
    return isNew ? { logs, finding: crashLoop, crashLoop } : { logs, crashLoop };
  }

  /** Every instance's last run failed at start, identically (and none has come up since). */
  crashLoop(): CrashLoopFinding | undefined {
    const instances = this.options.instances?.() ?? [];
    if (instances.length === 0) return undefined;
    let signature: string | undefined;
    let failures = Infinity;
    let first: Run['streak'];
    for (const name of instances) {
      const run = this.runs.get(name);
      const streak = run?.streak;
      if (!run || !streak) return undefined;
      // Running again and past the start (its server listens, or the window has passed): not failing.
      if (run.running && run.startedAt !== undefined && (run.serverUp || this.now() - run.startedAt >= this.startWindowMs)) return undefined;
      if (signature === undefined) {
        signature = streak.signature;
        first = streak;
      } else if (streak.signature !== signature) return undefined;
      failures = Math.min(failures, streak.count);
    }
    if (!first) return undefined;
    return {
      message: describeCrashLoop(instances.length, first.code, first.signal, first.line, this.options.mask !== undefined),
      code: first.code,
      signal: first.signal,
      line: this.options.mask ? first.line : '',
      instances: [...instances],
      failures,
      at: new Date(this.now()).toISOString(),
    };
  }
}

/** The one line that says what every instance does; quotes ComfyUI's own (masked) message. */
export function describeCrashLoop(count: number, code: number | null, signal: string | null, line: string, quote = true): string {
  const how = signal && (code === 0 || code === null) ? `killed by ${signal}` : `with exit code ${code ?? 'unknown'}`;
  const said = quote && line ? `: ComfyUI says "${line}"` : '';
  const hint = code === 2 ? '; exit code 2 is argparse refusing its arguments: check COMFY_ARGS' : '';
  return `every instance (${count}) exits at start ${how}${said}${hint}`;
}
