import { parse as parseCsv } from 'csv-parse/sync';
import * as z from 'zod';
import { NvidiaSmiError } from './nvidia-smi.js';

/**
 * The GPU watchdog: a second nvidia-smi query, run every `intervalMs` for the GPUs in use, that
 * finds GPUs gone bad (lost, needing a reset, uncorrected ECC errors, memory pending retirement or
 * row remapping) and cordons them. One query at a time; a hung one is killed. The stand-in in
 * test/fixtures answers exactly this query (README there: "Failures per GPU").
 */
export const WATCHDOG_FIELDS = [
  'index',
  'uuid',
  'utilization.gpu',
  'memory.used',
  'memory.total',
  'temperature.gpu',
  'power.draw',
  'ecc.errors.uncorrected.volatile.total',
  'retired_pages.pending',
  'remapped_rows.pending',
  // Named clocks_event_reasons.active since R535; nvidia-smi still takes the old name.
  'clocks_throttle_reasons.active',
] as const;

export const WATCHDOG_QUERY_ARGS = [`--query-gpu=${WATCHDOG_FIELDS.join(',')}`, '--format=csv,noheader,nounits'] as const;

/** The bits of clocks_throttle_reasons.active, as NVML defines them (nvmlClocksEventReason*). */
export const THROTTLE_REASONS: ReadonlyArray<readonly [bigint, string]> = [
  [0x1n, 'gpu_idle'],
  [0x2n, 'applications_clocks_setting'],
  [0x4n, 'sw_power_cap'],
  [0x8n, 'hw_slowdown'],
  [0x10n, 'sync_boost'],
  [0x20n, 'sw_thermal_slowdown'],
  [0x40n, 'hw_thermal_slowdown'],
  [0x80n, 'hw_power_brake_slowdown'],
  [0x100n, 'display_clock_setting'],
  // Newer NVML (nvmlClocksEventReasonBoardLimit, ...Reliability).
  [0x200n, 'board_limit'],
  [0x400n, 'reliability'],
];

export interface GpuSample {
  index: number;
  uuid: string;
  /** null when nvidia-smi prints [N/A] or [Not Supported] (GPU utilization is [N/A] in MIG mode). */
  utilizationPct: number | null;
  memoryUsedMiB: number | null;
  memoryTotalMiB: number | null;
  temperatureC: number | null;
  powerW: number | null;
  /** ecc.errors.uncorrected.volatile.total: since the driver loaded; null with ECC off or unsupported. */
  eccUncorrected: number | null;
  /** Memory pages waiting for a reboot to be retired (pre-Ampere; [N/A] on A100 and later). */
  retiredPagesPending: boolean | null;
  /** Rows waiting for a GPU reset to be remapped (A100 and later). */
  remappedRowsPending: boolean | null;
  /** Decoded from the hex mask; a bit NVML does not name yet is `0x<bit>`. Empty for [N/A]. */
  throttleReasons: string[];
}

/** A row of a GPU nvidia-smi could not read. */
export interface GpuError {
  index: number;
  /** null when the UUID itself could not be read (the row is then keyed `index:<n>`). */
  uuid: string | null;
  error: string;
  /** `[GPU is lost]` or `[GPU requires reset]`: the GPU is gone until the machine is rebooted or the GPU reset. */
  lost: boolean;
}

export function isGpuError(entry: GpuSample | GpuError): entry is GpuError {
  return 'error' in entry;
}

/** The key parseWatchdogCsv gives a row whose UUID could not be read. */
export function indexKey(index: number): string {
  return `index:${index}`;
}

// What nvidia-smi prints for a value that does not exist on this GPU, or that it may not read:
// no fault of the GPU. Anything else in brackets is an NVML error (nvmlErrorString in brackets).
const NOT_AVAILABLE = new Set(['[n/a]', 'n/a', '[not supported]', 'not supported', '[insufficient permissions]']);
const LOST_VALUE = /^\[(gpu is lost|gpu requires reset)\]$/i;

const Int = z.string().regex(/^\d+$/).transform(Number);
const SignedInt = z.string().regex(/^-?\d+$/).transform(Number);
const Decimal = z.string().regex(/^\d+(\.\d+)?$/).transform(Number);
const Percent = Int.pipe(z.number().max(100));
const Uuid = z.string().regex(/^GPU-[0-9a-z-]+$/i);
const YesNo = z.string().transform((text, ctx): boolean => {
  const value = text.toLowerCase();
  if (value === 'yes' || value === '1') return true;
  if (value === 'no' || value === '0') return false;
  ctx.addIssue({ code: 'custom', message: 'not Yes or No' });
  return z.NEVER;
});
const Mask = z
  .string()
  .regex(/^0x[0-9a-f]{1,16}$/i)
  .transform((text) => decodeThrottleReasons(BigInt(text)));

/** The names of the bits set in a clocks_throttle_reasons.active mask. */
export function decodeThrottleReasons(mask: bigint): string[] {
  const names: string[] = [];
  let rest = mask;
  for (const [bit, name] of THROTTLE_REASONS) {
    if (mask & bit) names.push(name);
    rest &= ~bit;
  }
  for (let bit = 1n; rest; bit <<= 1n) {
    if (rest & bit) {
      names.push(`0x${bit.toString(16)}`);
      rest &= ~bit;
    }
  }
  return names;
}

type Cell<T> = { ok: true; value: T | null } | { ok: false; text: string };

function cell<T>(raw: string, schema: z.ZodType<T, string>): Cell<T> {
  const text = raw.trim();
  if (NOT_AVAILABLE.has(text.toLowerCase())) return { ok: true, value: null };
  const parsed = schema.safeParse(text);
  return parsed.success ? { ok: true, value: parsed.data } : { ok: false, text: text === '' ? '(empty)' : text };
}

/**
 * The watchdog query's answer, by GPU UUID as printed (`index:<n>` when the UUID could not be read):
 * a sample, or the error of a GPU whose values nvidia-smi could not read. Lines that are not a GPU's
 * row (another width, no index: an error message on stdout) are left out; output that is not CSV throws.
 */
export function parseWatchdogCsv(text: string): Map<string, GpuSample | GpuError> {
  let rows: string[][];
  try {
    rows = parseCsv(text, { trim: true, skip_empty_lines: true, relax_quotes: true, relax_column_count: true }) as string[][];
  } catch (error) {
    throw new NvidiaSmiError(`nvidia-smi printed output that is not CSV (${(error as Error).message.split('\n')[0]})`);
  }
  const byGpu = new Map<string, GpuSample | GpuError>();
  for (const row of rows) {
    if (row.length !== WATCHDOG_FIELDS.length) continue;
    const index = Int.safeParse(row[0]);
    if (!index.success) continue;
    const uuidText = (row[1] ?? '').trim();
    const uuid = Uuid.safeParse(uuidText).success ? uuidText : null;
    if (uuid === null && !/^\[.+\]$/.test(uuidText)) continue;

    const cells = {
      utilizationPct: cell(row[2] ?? '', Percent),
      memoryUsedMiB: cell(row[3] ?? '', Int),
      memoryTotalMiB: cell(row[4] ?? '', Int),
      temperatureC: cell(row[5] ?? '', SignedInt),
      powerW: cell(row[6] ?? '', Decimal),
      eccUncorrected: cell(row[7] ?? '', Int),
      retiredPagesPending: cell(row[8] ?? '', YesNo),
      remappedRowsPending: cell(row[9] ?? '', YesNo),
      throttleReasons: cell(row[10] ?? '', Mask),
    };
    const bad: Array<{ field: string; text: string }> = [];
    if (uuid === null) bad.push({ field: 'uuid', text: uuidText });
    Object.values(cells).forEach((c, i) => {
      if (!c.ok) bad.push({ field: WATCHDOG_FIELDS[i + 2]!, text: c.text });
    });
    // One measurement nvidia-smi could not read (`[Unknown Error]` in power.draw on some consumer and
    // WSL drivers) is no GPU fault: that value is missing. A lost GPU, no UUID, or every field is.
    const valueFields = WATCHDOG_FIELDS.length - 2;
    const fatal = uuid === null || bad.some((b) => LOST_VALUE.test(b.text)) || bad.length >= valueFields || bad.some((b) => !/^\[.+\]$/.test(b.text));
    if (bad.length && fatal) {
      byGpu.set(uuid ?? indexKey(index.data), {
        index: index.data,
        uuid,
        error: describeBad(bad),
        lost: bad.some((b) => LOST_VALUE.test(b.text)),
      });
      continue;
    }
    const value = <T>(c: Cell<T>): T | null => (c.ok ? c.value : null);
    byGpu.set(uuid!, {
      index: index.data,
      uuid: uuid!,
      utilizationPct: value(cells.utilizationPct),
      memoryUsedMiB: value(cells.memoryUsedMiB),
      memoryTotalMiB: value(cells.memoryTotalMiB),
      temperatureC: value(cells.temperatureC),
      powerW: value(cells.powerW),
      eccUncorrected: value(cells.eccUncorrected),
      retiredPagesPending: value(cells.retiredPagesPending),
      remappedRowsPending: value(cells.remappedRowsPending),
      throttleReasons: value(cells.throttleReasons) ?? [],
    });
  }
  return byGpu;
}

/** `nvidia-smi reports [GPU is lost] for every field`, or the fields by value. */
function describeBad(bad: Array<{ field: string; text: string }>): string {
  const byText = new Map<string, string[]>();
  for (const { field, text } of bad) byText.set(text, [...(byText.get(text) ?? []), field]);
  const valueFields = WATCHDOG_FIELDS.length - 2;
  const parts = [...byText].map(([text, fields]) => {
    const which = fields.filter((f) => f !== 'uuid').length === valueFields ? 'every field' : fields.join(', ');
    return /^\[.+\]$/.test(text) ? `${text} for ${which}` : `an unreadable value "${text.slice(0, 40)}" for ${which}`;
  });
  return `nvidia-smi reports ${parts.join('; ')}`;
}

// `Unable to determine the device handle for GPU0000:65:00.0: GPU is lost.  Reboot the system to
// recover this GPU` (some drivers print a space after GPU, some a longer PCI domain).
const HANDLE_LINE = /Unable to determine the device handle for GPU\s*([0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f])\s*:\s*(.+)$/i;
const FATAL_REASON = /GPU is lost|requires reset|fallen off the bus/i;

export interface WatchdogGpu {
  index: number;
  uuid: string;
}

export interface WatchdogRunResult {
  stdout: string;
  stderr: string;
  /** null when it was killed, or never ran. */
  exitCode: number | null;
  timedOut: boolean;
  /** Why it did not run at all (not found, not executable). */
  error?: string;
}

/** Runs nvidia-smi with `args`; must kill it when `signal` aborts (after `timeoutMs`) and then settle. */
export type WatchdogRun = (args: readonly string[], options: { timeoutMs: number; signal: AbortSignal }) => Promise<WatchdogRunResult>;

export type FindingKind =
  | 'gpu-lost'
  | 'gpu-error'
  | 'missing-row'
  | 'ecc-increased'
  | 'pages-pending'
  | 'query-failed'
  | 'query-timeout';

/** A problem one check found: for one GPU, or (gpu null) for the whole query. */
export interface Finding {
  at: number;
  kind: FindingKind;
  gpu: WatchdogGpu | null;
  message: string;
}

export interface GpuWatchdogOptions {
  nvidiaSmiPath: string;
  timeoutMs: number;
  intervalMs: number;
  /** Consecutive failed checks that cordon a GPU (a lost GPU is cordoned at once). */
  failuresToCordon: number;
  gpus: WatchdogGpu[];
  run?: WatchdogRun;
  now?: () => number;
  /** Called once per GPU, when it is cordoned (final). */
  onCordon: (gpu: WatchdogGpu, reason: string) => void;
  /** Each problem found; none for a GPU already cordoned. */
  onFinding?: (finding: Finding) => void;
}

export type GpuHealthState = 'healthy' | 'failing' | 'cordoned' | 'unknown';

export interface WatchdogGpuStatus {
  index: number;
  uuid: string;
  state: GpuHealthState;
  consecutiveFailures: number;
  /** Why it is failing or cordoned; null when healthy or unknown. */
  reason: string | null;
  cordonedAt: number | null;
  /** The latest sample nvidia-smi gave for it. */
  sample: GpuSample | null;
}

export interface WatchdogSnapshot {
  intervalMs: number;
  running: boolean;
  /** Checks done (a query answered, failed or killed; or a tick while a killed query had still not exited). */
  checks: number;
  /** Checks in which any GPU failed. */
  failedChecks: number;
  /** Interval ticks skipped because a query was still running. */
  skippedTicks: number;
  lastCheckAt: number | null;
  lastDurationMs: number | null;
  /** The first problem of the latest check; null when it found none. */
  lastError: string | null;
  gpus: WatchdogGpuStatus[];
}

export function healthyGpuCount(snapshot: WatchdogSnapshot): number {
  return snapshot.gpus.filter((g) => g.state === 'healthy').length;
}

/** execa as detect.ts runs nvidia-smi: C locale, no stdin, SIGKILL on timeout (a hung driver ignores SIGTERM). */
export function defaultWatchdogRun(nvidiaSmiPath: string): WatchdogRun {
  return async (args, { timeoutMs, signal }) => {
    const { execa } = await import('execa');
    const result = await execa(nvidiaSmiPath, [...args], {
      timeout: timeoutMs,
      cancelSignal: signal,
      reject: false,
      stdin: 'ignore',
      killSignal: 'SIGKILL',
      env: { LC_ALL: 'C' },
    });
    const code = (result as { code?: string }).code;
    return {
      stdout: typeof result.stdout === 'string' ? result.stdout : '',
      stderr: typeof result.stderr === 'string' ? result.stderr : '',
      exitCode: result.exitCode ?? null,
      timedOut: result.timedOut || result.isCanceled,
      ...(code === 'ENOENT' ? { error: 'not found' } : result.failed && result.exitCode === undefined && !result.signal ? { error: result.shortMessage } : {}),
    };
  };
}

interface GpuRecord {
  gpu: WatchdogGpu;
  state: GpuHealthState;
  consecutiveFailures: number;
  reason: string | null;
  cordonedAt: number | null;
  sample: GpuSample | null;
  eccBaseline: number | null;
}

interface Problem {
  kind: FindingKind;
  message: string;
  /** Cordon at once (lost, requires reset). */
  fatal: boolean;
}

/** How long a killed query may take to exit before its check ends without it (at most timeoutMs). */
const KILL_GRACE_MS = 1000;

type QueryOutcome = { result: WatchdogRunResult } | { error: string };

export class GpuWatchdog {
  private readonly options: GpuWatchdogOptions;
  private readonly run: WatchdogRun;
  private readonly now: () => number;
  private readonly records: GpuRecord[];
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  /** The check under way (a query, its parsing, the bookkeeping). */
  private checking: Promise<void> | null = null;
  /** The query's process, until it has exited: outlives its check when killed and slow to die. */
  private query: Promise<QueryOutcome> | null = null;
  private killedAt: number | null = null;
  private checks = 0;
  private failedChecks = 0;
  private skippedTicks = 0;
  private lastCheckAt: number | null = null;
  private lastDurationMs: number | null = null;
  private lastError: string | null = null;
  /** Exceptions thrown by onCordon / onFinding (the watchdog goes on regardless). */
  callbackErrors = 0;
  lastCallbackError: string | null = null;

  constructor(options: GpuWatchdogOptions) {
    for (const key of ['timeoutMs', 'intervalMs', 'failuresToCordon'] as const) {
      if (!Number.isInteger(options[key]) || options[key] < 1) throw new RangeError(`GpuWatchdog: ${key} must be a positive integer, not ${options[key]}`);
    }
    this.options = options;
    this.run = options.run ?? defaultWatchdogRun(options.nvidiaSmiPath);
    this.now = options.now ?? Date.now;
    this.records = options.gpus.map((gpu) => ({
      gpu: { index: gpu.index, uuid: gpu.uuid },
      state: 'unknown',
      consecutiveFailures: 0,
      reason: null,
      cordonedAt: null,
      sample: null,
      eccBaseline: null,
    }));
  }

  /** A check now, then one every intervalMs; the timer never keeps the process alive. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.timer = setInterval(() => this.tick(), this.options.intervalMs);
    this.timer.unref();
    this.tick();
  }

  /** No more checks; resolves once the check under way (if any) is done, at most about timeoutMs. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.checking;
  }

  /** One check, unless one is under way: then that one. Never a second query while one runs. */
  checkOnce(): Promise<void> {
    if (this.checking) return this.checking;
    if (this.query) {
      this.checkLingering();
      return Promise.resolve();
    }
    return this.begin();
  }

  snapshot(): WatchdogSnapshot {
    return {
      intervalMs: this.options.intervalMs,
      running: this.running,
      checks: this.checks,
      failedChecks: this.failedChecks,
      skippedTicks: this.skippedTicks,
      lastCheckAt: this.lastCheckAt,
      lastDurationMs: this.lastDurationMs,
      lastError: this.lastError,
      gpus: this.records.map((r) => ({
        index: r.gpu.index,
        uuid: r.gpu.uuid,
        state: r.state,
        consecutiveFailures: r.consecutiveFailures,
        reason: r.reason,
        cordonedAt: r.cordonedAt,
        sample: r.sample ? { ...r.sample, throttleReasons: [...r.sample.throttleReasons] } : null,
      })),
    };
  }

  private tick(): void {
    if (this.checking || this.query) {
      this.skippedTicks++;
      if (!this.checking) this.checkLingering();
      return;
    }
    void this.begin();
  }

  private begin(): Promise<void> {
    const check = this.check()
      .catch((error: unknown) => {
        // Only a bug in a callback gets here: the check itself never throws.
        this.lastError = `watchdog check failed: ${error instanceof Error ? error.message : String(error)}`;
      })
      .finally(() => {
        if (this.checking === check) this.checking = null;
      });
    this.checking = check;
    return check;
  }

  private async check(): Promise<void> {
    const { timeoutMs, nvidiaSmiPath } = this.options;
    const started = this.now();
    const controller = new AbortController();
    const query: Promise<QueryOutcome> = this.run(WATCHDOG_QUERY_ARGS, { timeoutMs, signal: controller.signal }).then(
      (result) => ({ result }),
      (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
    );
    this.query = query;
    void query.then(() => {
      if (this.query === query) {
        this.query = null;
        this.killedAt = null;
      }
    });

    // At timeoutMs the runner is told to kill the query; it then has a grace period to reap it. One
    // that still has not exited (a process stuck in the driver ignores even SIGKILL) is left behind:
    // the check ends, and no new query starts until it has exited (see checkLingering).
    const abortTimer = setTimeout(() => controller.abort(), timeoutMs);
    abortTimer.unref();
    let graceTimer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'deadline'>((resolve) => {
      graceTimer = setTimeout(() => resolve('deadline'), timeoutMs + Math.min(timeoutMs, KILL_GRACE_MS));
      graceTimer.unref();
    });
    const outcome = await Promise.race([query, deadline]);
    clearTimeout(abortTimer);
    clearTimeout(graceTimer);
    const finished = this.now();
    this.lastDurationMs = finished - started;

    const timedOut = `${nvidiaSmiPath} did not answer within ${timeoutMs} ms (killed)`;
    if (outcome === 'deadline') {
      this.killedAt = finished;
      this.recordWhole(finished, 'query-timeout', `${timedOut}; it has not exited yet`);
    } else if (controller.signal.aborted && !('error' in outcome)) {
      this.recordWhole(finished, 'query-timeout', timedOut);
    } else if ('error' in outcome) {
      this.recordWhole(finished, 'query-failed', `${nvidiaSmiPath} could not be run: ${outcome.error}`);
    } else if (outcome.result.timedOut) {
      this.recordWhole(finished, 'query-timeout', timedOut);
    } else {
      this.recordAnswer(finished, outcome.result);
    }
  }

  /** A tick while a killed query has not exited: once it has had timeoutMs more to die, a failed check. */
  private checkLingering(): void {
    if (this.killedAt === null) return;
    const at = this.now();
    const since = at - this.killedAt;
    if (since < this.options.timeoutMs) return;
    this.recordWhole(at, 'query-timeout', `${this.options.nvidiaSmiPath} was killed ${since} ms ago and has not exited (a hung driver?); no new query is started`);
  }

  private recordWhole(at: number, kind: FindingKind, message: string): void {
    this.emit({ at, kind, gpu: null, message });
    this.finish(at, new Map(this.records.map((r) => [r, [{ kind, message, fatal: false }]])), message);
  }

  private recordAnswer(at: number, result: WatchdogRunResult): void {
    const { nvidiaSmiPath } = this.options;
    let rows = new Map<string, GpuSample | GpuError>();
    let notCsv: string | null = null;
    try {
      rows = parseWatchdogCsv(result.stdout);
    } catch (error) {
      notCsv = error instanceof Error ? error.message : String(error);
    }
    const lower = new Map([...rows].map(([key, entry]) => [key.toLowerCase(), entry]));
    const lines = `${result.stdout}\n${result.stderr}`
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    const handleLines = lines.filter((l) => HANDLE_LINE.test(l));
    const firstLine = lines[0]?.slice(0, 200) ?? '';
    const failedText =
      result.error !== undefined
        ? `${nvidiaSmiPath} could not be run: ${result.error}`
        : result.exitCode !== 0
          ? `${nvidiaSmiPath} failed (exit ${result.exitCode ?? 'unknown'})${firstLine ? `: ${firstLine}` : ''}`
          : notCsv;

    const entries = this.records.map((r) => lower.get(r.gpu.uuid.toLowerCase()) ?? lower.get(indexKey(r.gpu.index)));
    const missing = this.records.filter((_, i) => entries[i] === undefined);
    // Lines naming a GPU nvidia-smi cannot reach, beyond those whose rows already say it is lost.
    const lostRows = [...rows.values()].filter((e) => isGpuError(e) && e.lost).length;
    const unexplained = handleLines.length - lostRows;
    const missingAreLost =
      missing.length > 0 && unexplained === missing.length && handleLines.every((l) => FATAL_REASON.test(HANDLE_LINE.exec(l)?.[2] ?? ''));

    // Exit 2 is nvidia-smi refusing the query itself (`Field "..." is not a valid field to query.` from a
    // driver that renamed a field): no GPU's fault, so no GPU is failed or cordoned for it.
    if (result.exitCode === 2 && rows.size === 0) {
      const message = `${nvidiaSmiPath} refused the watchdog's query (exit 2)${firstLine ? `: ${firstLine}` : ''}; GPUs are not judged by it`;
      this.emit({ at, kind: 'query-failed', gpu: null, message });
      this.checks++;
      this.lastCheckAt = at;
      this.lastError = message;
      return;
    }
    if (missing.length === this.records.length && failedText !== null && !missingAreLost) {
      this.recordWhole(at, 'query-failed', failedText);
      return;
    }

    const problems = new Map<GpuRecord, Problem[]>();
    this.records.forEach((record, i) => {
      const entry = entries[i];
      const list: Problem[] = [];
      if (entry === undefined) {
        if (missingAreLost) {
          const said = handleLines.length === 1 ? handleLines[0]! : handleLines.join(' | ');
          list.push({ kind: 'gpu-lost', message: `nvidia-smi cannot reach it: ${said}`, fatal: true });
        } else {
          const why = handleLines[0] ?? failedText ?? (missing.length === this.records.length && firstLine ? `it printed: ${firstLine}` : '');
          list.push({ kind: 'missing-row', message: `nvidia-smi printed no row for it${why ? ` (${why})` : ''}`, fatal: false });
        }
      } else if (isGpuError(entry)) {
        list.push({ kind: entry.lost ? 'gpu-lost' : 'gpu-error', message: entry.error, fatal: entry.lost });
      } else {
        record.sample = entry;
        if (record.eccBaseline === null && entry.eccUncorrected !== null) record.eccBaseline = entry.eccUncorrected;
        if (record.eccBaseline !== null && entry.eccUncorrected !== null && entry.eccUncorrected > record.eccBaseline) {
          list.push({
            kind: 'ecc-increased',
            message: `uncorrected ECC errors rose from ${record.eccBaseline} to ${entry.eccUncorrected} since the first sample`,
            fatal: false,
          });
        }
        if (entry.retiredPagesPending) {
          list.push({ kind: 'pages-pending', message: 'memory pages are pending retirement (retired_pages.pending=Yes): needs a reboot', fatal: false });
        }
        if (entry.remappedRowsPending) {
          list.push({ kind: 'pages-pending', message: 'memory rows are pending remapping (remapped_rows.pending=Yes): needs a GPU reset', fatal: false });
        }
      }
      if (list.length) problems.set(record, list);
      for (const p of list) {
        if (record.state !== 'cordoned') this.emit({ at, kind: p.kind, gpu: { ...record.gpu }, message: p.message });
      }
    });
    this.finish(at, problems, null);
  }

  /** Apply one check's problems (by GPU) to every GPU; those without are healthy. */
  private finish(at: number, problems: Map<GpuRecord, Problem[]>, wholeError: string | null): void {
    this.checks++;
    this.lastCheckAt = at;
    if (problems.size) this.failedChecks++;
    this.lastError = wholeError;
    const cordoned: GpuRecord[] = [];
    for (const record of this.records) {
      const list = problems.get(record);
      if (!list) {
        if (record.state !== 'cordoned') {
          record.state = 'healthy';
          record.consecutiveFailures = 0;
          record.reason = null;
        }
        continue;
      }
      const reason = list.map((p) => p.message).join('; ');
      this.lastError ??= `GPU ${record.gpu.index} (${record.gpu.uuid}): ${reason}`;
      record.consecutiveFailures++;
      if (record.state === 'cordoned') continue;
      const fatal = list.some((p) => p.fatal);
      const { failuresToCordon } = this.options;
      if (fatal || record.consecutiveFailures >= failuresToCordon) {
        record.state = 'cordoned';
        record.cordonedAt = at;
        record.reason = fatal || failuresToCordon === 1 ? reason : `${record.consecutiveFailures} consecutive failed checks; the last: ${reason}`;
        cordoned.push(record);
      } else {
        record.state = 'failing';
        record.reason = reason;
      }
    }
    // Callbacks after the bookkeeping: a caller's exception cannot leave a GPU half updated.
    for (const record of cordoned) this.callback(() => this.options.onCordon({ ...record.gpu }, record.reason!));
  }

  private emit(finding: Finding): void {
    const onFinding = this.options.onFinding;
    if (onFinding) this.callback(() => onFinding(finding));
  }

  private callback(call: () => void): void {
    try {
      call();
    } catch (error) {
      this.callbackErrors++;
      this.lastCallbackError = error instanceof Error ? error.message : String(error);
    }
  }
}
