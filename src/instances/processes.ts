import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { InstanceMonitor, isServerUpLine, type LogEntry } from './instance-output.js';
import { readRegularFile } from '../files/owned.js';
import { APP_PREFIX } from './plan.js';
import { daemonAnswers, Pm2Host, pm2HomeOf, type Pm2App } from './pm2-host.js';
import { BootState } from '../health/state.js';

/**
 * The one place processes are started, watched and stopped, through PM2's API.
 * PM2 is imported lazily, after PM2_HOME is final (it reads it at load time).
 */

interface BusPacket {
  process?: { name?: string; restart_time?: number; exit_code?: number; pm_id?: number; pm_uptime?: number };
  event?: string;
  data?: string;
}

interface Pm2Bus {
  on(event: string, listener: (packet: BusPacket) => void): void;
  close?: () => void;
}

type Callback<T> = (error: Error | null | undefined, value: T) => void;

interface Pm2Api {
  connect(callback: Callback<{ new_pm2_instance?: boolean }>): void;
  start(configFile: string, callback: Callback<unknown>): void;
  start(configFile: string, options: { only: string }, callback: Callback<unknown>): void;
  list(callback: Callback<Pm2App[]>): void;
  delete(name: string, callback: Callback<unknown>): void;
  stop(name: string, callback: Callback<unknown>): void;
  launchBus(callback: Callback<Pm2Bus>): void;
  disconnect(callback?: () => void): void;
}

/** The longest line relayed from an instance: a longer one is dropped (64 KiB). */
export const MAX_LINE = 64 * 1024;

/**
 * How long after PM2 reports an exit its last output may still arrive (a child's pipes can be read
 * after its exit is seen): the exit is judged then, or at the instance's next start if sooner.
 */
export const EXIT_SETTLE_MS = 250;

/** Masks secret values in a text (SecretMasker). */
export interface Masker {
  mask(text: string): string;
}

/** State and parent pid from /proc/<pid>/stat: the fields after the command name, which may hold spaces and parentheses. */
export function procStat(pid: number): { state: string; ppid: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const parent = Number.parseInt(ppid ?? '', 10);
  return state && Number.isInteger(parent) ? { state, ppid: parent } : undefined;
}

/**
 * Running: the pid exists (EPERM: another user's, it still exists) and is not a zombie, an exited
 * process that a parent or a PID 1 has not reaped (yet, or ever) and that runs nothing.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return procStat(pid)?.state !== 'Z';
}

/** A pid file's pid; undefined when it is missing or holds no positive integer. */
export async function readPidFile(file: string): Promise<number | undefined> {
  let text = '';
  try {
    // A FIFO or a huge file planted in PM2_HOME must not hang or flood the shutdown.
    text = readRegularFile(file, 64).toString('utf8');
  } catch {
    // missing or not a pid file
  }
  const pid = Number.parseInt(text, 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** PM2's pid files of our apps, `PM2_HOME/pids/<app>-<pm_id>.pid`. */
export async function appPidFiles(pm2Home: string): Promise<Array<{ app: string; file: string }>> {
  const dir = path.join(pm2Home, 'pids');
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .filter((n) => n.startsWith(APP_PREFIX) && n.endsWith('.pid'))
    .map((n) => ({ app: n.replace(/-\d+\.pid$/, ''), file: path.join(dir, n) }));
}

/** How long one list request to PM2 may be shared by later callers (see ProcessManager.list). */
const LIST_SHARE_MS = 2000;

/** PM2's API, as this process uses it, done by the daemon it serves (Pm2Host): no client, no RPC. */
function hostedApi(host: Pm2Host): Pm2Api {
  // Answered on setImmediate, as an answer over rpc.sock arrives after PM2's events: the events a
  // stop or delete raised (PM2 reports a stopped app's exit twice, once when the process ends and once
  // when the stop completes) reach the watch (Pm2Host.events) before its caller hears it is done.
  const settle = <T>(work: Promise<T>, callback: Callback<T | undefined>) => {
    work.then(
      (value) => void setImmediate(() => callback(null, value)),
      (error: Error) => void setImmediate(() => callback(error, undefined)),
    );
  };
  return {
    connect: (callback) => callback(null, { new_pm2_instance: false }),
    start: (file: string, optionsOrCallback: { only: string } | Callback<unknown>, maybeCallback?: Callback<unknown>) => {
      const [options, callback] = typeof optionsOrCallback === 'function' ? [undefined, optionsOrCallback] : [optionsOrCallback, maybeCallback!];
      settle(host.startApps(file, options?.only), callback);
    },
    list: (callback) => callback(null, host.apps() ?? []),
    delete: (name, callback) => settle(host.deleteApps(name), callback),
    stop: (name, callback) => settle(host.stopApps(name), callback),
    launchBus: (callback) => {
      const events = host.events();
      if (events) callback(null, events as unknown as Pm2Bus);
      else callback(new Error('PM2 is not served by this process'), undefined as unknown as Pm2Bus);
    },
    disconnect: (callback) => callback?.(),
  };
}

function call<T>(fn: (cb: Callback<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    fn((error, value) => (error ? reject(error) : resolve(value)));
  });
}

export interface InstanceState {
  name: string;
  pid: number;
  status: string;
  restarts: number;
  /** When PM2 last started it (ms since the epoch). */
  startedAt: number | undefined;
}

export class ProcessManager {
  private api: Pm2Api | undefined;
  private bus: Pm2Bus | undefined;
  /** The relay's loggers, by instance and stream (see write). */
  private readonly lineLoggers = new Map<string, Logger>();
  /** Instances whose run PM2 reported ended, until it reports the next one online. */
  private readonly exitedRuns = new Set<string>();
  private loading: Promise<Pm2Host> | undefined;
  /** When load() was first called (performance.now()): the boot reports PM2's load from there. */
  loadStartedAt: number | undefined;
  private connecting: Promise<void> | undefined;
  /** The list request in flight, shared while `generation` is unchanged (see list). */
  private listing: { generation: number; sentAt: number; result: Promise<Pm2App[]> } | undefined;
  private generation = 0;
  /** Set by close: a connect still under way stops at its next step instead of serving a closed host. */
  private closing = false;
  /** PM2's daemon code, loaded in this process; it serves PM2_HOME unless another daemon already did. */
  private host: Pm2Host | undefined;
  private serving = false;
  /** Set by `pm2 kill`, even before anyone watches for it. */
  private killReason: string | undefined;
  private killedBy: ((reason: string) => void) | undefined;
  private stopping = false;
  private readonly serverUpListeners = new Map<string, Set<() => void>>();
  private readonly partialLines = new Map<string, string>();
  /** Characters of an over-long line dropped so far, per instance and stream. */
  private readonly droppedChars = new Map<string, number>();
  /** Instances being restarted on purpose: their exit is not a crash. */
  private readonly restarting = new Set<string>();
  /** Reads the instances' output and exits into state.instanceRecords. */
  private readonly monitor: InstanceMonitor;
  /** The instances this run started (from startFromEcosystem). */
  private started: string[] = [];
  private readonly settleTimers = new Map<string, NodeJS.Timeout>();
  private crashLoopWatch: { limit: number; callback: (message: string) => void; fired: boolean } | undefined;

  /**
   * `masker` masks what is kept for /status (the log is masked by the logger itself): without one,
   * no output text is kept, only node names, flags and exit codes. `state` is where the records
   * go (BootState.instanceRecords, crashLoop) and where envNodes is read.
   */
  constructor(
    private readonly logger: Logger,
    private readonly ecosystemFile: string,
    masker?: Masker,
    readonly state: BootState = new BootState(),
  ) {
    this.monitor = new InstanceMonitor(state.instanceRecords, {
      ...(masker ? { mask: (text: string) => masker.mask(text) } : {}),
      envNodes: () => this.state.envNodes,
      instances: () => this.started,
    });
  }

  get pm2Home(): string {
    return pm2HomeOf(process.env);
  }

  /** True when PM2 runs inside this process (the usual case). */
  get hostsPm2(): boolean {
    return this.serving;
  }

  /**
   * Load PM2's daemon code (~75 ms, most of it compiling), serving nothing: the boot starts this
   * early, beside its other phases. PM2's API and client load only to use a daemon that was already
   * running (connect). Idempotent.
   */
  load(): Promise<Pm2Host> {
    this.loadStartedAt ??= performance.now();
    this.loading ??= (async () => {
      // PM2 prints banners on stdout unless told not to; our stdout is JSON log lines. No version
      // check: a container has no business calling home.
      process.env.PM2_SILENT = 'true';
      process.env.PM2_DISABLE_VERSION_CHECK = 'true';
      // What PM2's module entry sets before anything of PM2 loads (its constants read it once): its
      // API, should a daemon that was already running need it, never ends this process then.
      process.env.PM2_PROGRAMMATIC = 'true';
      // After the caller's turn, as a module import would be: the boot goes on to its next phase first.
      await new Promise((resolve) => setImmediate(resolve));
      this.host = Pm2Host.load(this.logger);
      return this.host;
    })();
    return this.loading;
  }

  /**
   * Serve PM2 from this process, then connect to it as a client. When a daemon already answers
   * on PM2_HOME (someone's `pm2 start` before gpu-boot), use that one and leave it running.
   * Serving exposes this process's environment to PM2's RPC (`pm2 report`): call it only once
   * the secrets are out of `process.env`.
   */
  connect(): Promise<void> {
    this.connecting ??= (async () => {
      const stopIfClosing = () => {
        if (this.closing) throw new Error('PM2 was closed while it came up');
      };
      const host = await this.load();
      stopIfClosing();
      if (!(await daemonAnswers(host.rpcSocket))) {
        stopIfClosing();
        await host.serve(() => {
          this.killReason ??= 'pm2 kill';
          this.killedBy?.(this.killReason);
        });
        this.serving = true;
        // Served here: starts, stops and deletes go to the daemon in this process, not through PM2's API.
        this.api = hostedApi(host);
        return;
      }
      const api = ((await import('pm2')) as unknown as { default: Pm2Api }).default;
      stopIfClosing();
      await call<{ new_pm2_instance?: boolean }>((cb) => api.connect(cb));
      this.api = api;
    })();
    return this.connecting;
  }

  /** A start, stop or delete through PM2: a list sent before it (or while it runs) is not shared after it. */
  private async change<T>(fn: (cb: Callback<T>) => void): Promise<T> {
    this.generation += 1;
    try {
      return await call(fn);
    } finally {
      this.generation += 1;
    }
  }

  private get pm2(): Pm2Api {
    if (!this.api) throw new Error('PM2 is not connected');
    return this.api;
  }

  /**
   * PM2's apps. Where this process serves PM2, read from its table here (Pm2Host.apps). Else PM2's
   * list, with its per-process CPU and memory reading (/proc for each): callers at the same moment
   * (each instance's readiness, the supervisor) share one request, as long as no start, stop or
   * delete began or ended since it was sent.
   */
  async list(): Promise<InstanceState[]> {
    const hosted = this.serving ? this.host?.apps() : undefined;
    if (hosted) return this.instancesOf(hosted);
    // A request PM2 never answers is shared for LIST_SHARE_MS at most: later callers then ask anew.
    if (this.listing?.generation !== this.generation || performance.now() - this.listing.sentAt > LIST_SHARE_MS) {
      const request = { generation: this.generation, sentAt: performance.now(), result: call<Pm2App[]>((cb) => this.pm2.list(cb)) };
      this.listing = request;
      void request.result.finally(() => {
        if (this.listing === request) this.listing = undefined;
      }).catch(() => undefined);
    }
    return this.instancesOf(await this.listing!.result);
  }

  private instancesOf(all: Pm2App[]): InstanceState[] {
    return all
      .filter((p) => p.name?.startsWith(APP_PREFIX))
      .map((p) => ({
        name: p.name ?? '',
        pid: p.pid ?? 0,
        status: p.pm2_env?.status ?? 'unknown',
        restarts: p.pm2_env?.restart_time ?? 0,
        startedAt: p.pm2_env?.pm_uptime,
      }));
  }

  /** The instances answer: PM2's periodic worker, held back while they started, may run (where this process serves PM2). */
  releasePm2Worker(): void {
    if (this.serving) this.host?.releaseWorker();
  }

  /** Remove apps of ours left by an earlier run in the same PM2_HOME (a crash, a restart of the container). */
  async removeStaleApps(): Promise<string[]> {
    const stale = await this.list();
    await Promise.all(stale.map((app) => this.change((cb) => this.pm2.delete(app.name, cb))));
    return stale.map((a) => a.name);
  }

  /** True once this run asked PM2 to start the instances. */
  startedInstances = false;

  async startFromEcosystem(stateDir: string, planFile?: string): Promise<InstanceState[]> {
    this.startedInstances = true;
    // ecosystem.config.cjs finds plan.json here, as it does for a person running pm2 by hand.
    process.env.GPU_BOOT_STATE_DIR = stateDir;
    // This process reads it through the state folder's handle: a folder renamed into the path's place changes nothing.
    if (planFile) process.env.GPU_BOOT_PLAN_FILE = planFile;
    await this.change((cb) => this.pm2.start(this.ecosystemFile, cb));
    const list = await this.list();
    this.started = list.map((i) => i.name);
    return list;
  }

  /**
   * Call `callback` once, with a message naming the failure (and COMFY_ARGS for argparse's exit 2),
   * when every instance has failed at start `limit` times in a row in the same way (the same exit
   * code and last line, numbers aside). 0 never calls it. Returns the function that stops watching.
   */
  onCrashLoop(limit: number, callback: (message: string) => void): () => void {
    const watch = { limit, callback, fired: false };
    this.crashLoopWatch = watch;
    return () => {
      if (this.crashLoopWatch === watch) this.crashLoopWatch = undefined;
    };
  }

  get connected(): boolean {
    return this.api !== undefined;
  }

  /**
   * Restart one instance with a fresh environment: delete it and start it again from the
   * ecosystem file (PM2's restart keeps the old environment, even with --update-env).
   */
  async restartFresh(name: string): Promise<InstanceState | undefined> {
    this.restarting.add(name);
    try {
      await this.change((cb) => this.pm2.delete(name, cb));
      // A stop began meanwhile: starting it again now would outlive the stop.
      if (this.stopping) return undefined;
      await this.change((cb) => this.pm2.start(this.ecosystemFile, { only: name }, cb));
    } finally {
      this.restarting.delete(name);
    }
    return (await this.list()).find((i) => i.name === name);
  }

  /**
   * Stop one instance and leave it stopped (a failed or cordoned one): PM2 sends SIGINT, then SIGKILL
   * after kill_timeout, and restarts it no more. Its exit is on purpose, not a crash.
   */
  async stopOne(name: string): Promise<void> {
    this.restarting.add(name);
    try {
      await this.change((cb) => this.pm2.stop(name, cb));
    } finally {
      this.restarting.delete(name);
    }
  }

  /** Relay each instance's output (line by line, through the masking logger) and report crashes. */
  async watch(): Promise<void> {
    // Served here: PM2's own event bus, in process; else a bus client on its pub socket.
    const bus: Pm2Bus = (this.serving ? this.host?.events() : undefined) ?? (await call<Pm2Bus>((cb) => this.pm2.launchBus(cb)));
    this.bus = bus;
    const relay = (stream: 'stdout' | 'stderr') => (packet: BusPacket) => {
      const name = packet.process?.name;
      if (!name?.startsWith(APP_PREFIX) || typeof packet.data !== 'string') return;
      const key = `${name}:${stream}`;
      let data = packet.data;
      // A line longer than MAX_LINE is dropped whole, up to its newline: cutting it would log part of
      // a value the masker can then no longer recognise, and keeping it would cost memory and time.
      const dropped = this.droppedChars.get(key) ?? 0;
      if (dropped > 0) {
        const end = data.indexOf('\n');
        if (end === -1) {
          this.droppedChars.set(key, dropped + data.length);
          return;
        }
        this.droppedChars.delete(key);
        this.logger.warn({ instance: name, stream, droppedChars: dropped + end }, `${name} printed a line of ${dropped + end} characters without a newline; dropped (longer than ${MAX_LINE})`);
        data = data.slice(end + 1);
      }
      const held = this.partialLines.get(key) ?? '';
      if (!data.includes('\n')) {
        const text = held + data;
        if (text.length > MAX_LINE) {
          this.partialLines.delete(key);
          this.droppedChars.set(key, text.length);
        } else this.partialLines.set(key, text);
        return;
      }
      const lines = (held + data).split('\n');
      const rest = lines.pop() ?? '';
      if (rest.length > MAX_LINE) {
        this.partialLines.delete(key);
        this.droppedChars.set(key, rest.length);
      } else this.partialLines.set(key, rest);
      for (const line of lines) {
        if (line.length > MAX_LINE) this.logger.warn({ instance: name, stream, droppedChars: line.length }, `${name} printed a line of ${line.length} characters; dropped (longer than ${MAX_LINE})`);
        else if (line.trim()) this.relayLine(name, stream, line);
      }
    };
    bus.on('log:out', relay('stdout'));
    bus.on('log:err', relay('stderr'));
    bus.on('process:event', (packet) => {
      const name = packet.process?.name;
      if (!name?.startsWith(APP_PREFIX) || this.stopping) return;
      if (packet.event === 'online') {
        this.exitedRuns.delete(name);
        // A new run: the previous one's exit is judged now, before this run's output comes in.
        if (this.monitor.pending(name)) this.settle(name);
        const uptime = packet.process?.pm_uptime;
        this.monitor.started(name, typeof uptime === 'number' && uptime > 0 ? uptime : Date.now());
        return;
      }
      if (packet.event === 'exit') {
        // PM2 reports a stopped run's exit twice: when its process ends, and again when the stop
        // completes (by then the caller may have heard that it did). A run ends once: the second is dropped.
        if (this.exitedRuns.has(name)) return;
        this.exitedRuns.add(name);
        const signal = this.exitSignal(packet.process?.pm_id);
        // PM2 reports a process ended by a signal as code 0; like Node, say null.
        const code = !signal && typeof packet.process?.exit_code === 'number' ? packet.process.exit_code : null;
        const onPurpose = this.restarting.has(name);
        this.monitor.exited(name, { code, signal, onPurpose });
        this.scheduleSettle(name);
        if (onPurpose) return;
        this.logger.warn(
          { instance: name, exitCode: code, ...(signal ? { signal } : {}), restarts: packet.process?.restart_time },
          `instance ${name} exited${signal ? ` (${signal})` : ''}; PM2 restarts it with backoff`,
        );
      } else if (packet.event === 'restart overlimit') {
        if (this.restarting.has(name)) return;
        this.logger.error({ instance: name }, `instance ${name} crashed too often; PM2 stopped restarting it`);
      }
    });
  }

  private write(instance: string, stream: 'stdout' | 'stderr' | undefined, entry: LogEntry): void {
    // One child logger per instance and stream: pino serializes their fields once, not on each of
    // the thousands of lines 16 instances print as they start (the same JSON, field for field).
    const key = `${instance}:${stream ?? ''}`;
    let logger = this.lineLoggers.get(key);
    if (!logger) this.lineLoggers.set(key, (logger = this.logger.child({ instance, ...(stream ? { stream } : {}) })));
    // The child's fields are not repeated (a JSON line with a key twice).
    const { instance: _instance, stream: _stream, ...fields } = entry.fields;
    if (Object.keys(fields).length === 0) logger[entry.level](entry.msg);
    else logger[entry.level](fields, entry.msg);
  }

  /**
   * Call `listener` each time `instance` prints ComfyUI's `To see the GUI go to:` (its server
   * listens): readiness asks its port then, instead of waiting for its next poll. Returns the
   * function that stops listening.
   */
  onServerUp(instance: string, listener: () => void): () => void {
    let listeners = this.serverUpListeners.get(instance);
    if (!listeners) this.serverUpListeners.set(instance, (listeners = new Set()));
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
    };
  }

  private relayLine(instance: string, stream: 'stdout' | 'stderr', line: string): void {
    for (const entry of this.monitor.line(instance, stream, line)) this.write(instance, stream, entry);
    if (isServerUpLine(line)) for (const listener of this.serverUpListeners.get(instance) ?? []) listener();
    // An instance came up: whatever loop there was is over.
    if (this.state.crashLoop && !this.monitor.crashLoop()) this.state.crashLoop = undefined;
  }

  private scheduleSettle(instance: string): void {
    clearTimeout(this.settleTimers.get(instance));
    const timer = setTimeout(() => this.settle(instance), EXIT_SETTLE_MS);
    timer.unref();
    this.settleTimers.set(instance, timer);
  }

  /** The exited run's last words: its unfinished line and traceback, then the judgement of its exit. */
  private settle(instance: string): void {
    clearTimeout(this.settleTimers.get(instance));
    this.settleTimers.delete(instance);
    for (const stream of ['stdout', 'stderr'] as const) {
      const key = `${instance}:${stream}`;
      const rest = this.partialLines.get(key);
      this.partialLines.delete(key);
      if (rest?.trim()) this.relayLine(instance, stream, rest);
    }
    const result = this.monitor.settle(instance);
    for (const entry of result.logs) this.write(instance, undefined, entry);
    if (this.stopping) return;
    this.state.crashLoop = result.crashLoop;
    const loop = result.crashLoop;
    if (!loop) return;
    if (result.finding) {
      this.logger.error(
        { instances: loop.instances, exitCode: loop.code, ...(loop.signal ? { signal: loop.signal } : {}), line: loop.line, failures: loop.failures },
        loop.message,
      );
    }
    const watch = this.crashLoopWatch;
    if (watch && !watch.fired && watch.limit > 0 && loop.failures >= watch.limit) {
      watch.fired = true;
      watch.callback(`${loop.message} (${loop.failures} identical failures of every instance, CRASH_LOOP_LIMIT=${watch.limit})`);
    }
  }

  /**
   * The signal that ended an instance, when PM2 runs in this process (its exit event carries none):
   * the exited child is still PM2's record of it until the restart delay has passed.
   */
  private exitSignal(pmId: number | undefined): string | null {
    if (!this.serving || pmId === undefined) return null;
    // PM2's own God, the one serving here (the bundle's or node_modules'): never a second copy.
    return this.host?.exitSignal(pmId) ?? null;
  }

  /** Readiness saw this instance serve its port: an exit from now on is not a failure at start. */
  markServing(name: string): void {
    this.monitor.serving(name);
    if (this.state.crashLoop && !this.monitor.crashLoop()) this.state.crashLoop = undefined;
  }

  /**
   * The apps someone started by hand (`pm2 start x`) in the PM2 this process serves: not instances.
   * None where this process only talks to another daemon.
   */
  appsByHand(): Array<{ pmId: number; name: string; pid: number }> {
    return this.serving && this.host ? this.host.otherApps((name) => name.startsWith(APP_PREFIX)) : [];
  }

  /**
   * Stop our apps gracefully (SIGINT, then SIGKILL after kill_timeout) and remove them from PM2.
   * Where this process serves PM2, the apps started in it by hand go in the same wait (as `pm2 kill`
   * stops every app before its daemon goes): PM2 forked them from this process.
   */
  async stopAll(): Promise<void> {
    this.stopping = true;
    if (!this.api) return;
    const host = this.host;
    const byHand = this.appsByHand().map((app) => host!.deleteApp(app.pmId));
    // A run that started nothing (refused, or failed before) must not stop another run's apps.
    const apps = this.startedInstances ? await this.list() : [];
    await Promise.all([...byHand, ...apps.map((app) => this.change((cb) => this.pm2.delete(app.name, cb)))]);
  }

  /** Our instances' pids as PM2 has them now, from $PM2_HOME/pids (readable even when the daemon hangs). */
  async currentPids(): Promise<number[]> {
    const pids = await Promise.all((await appPidFiles(this.pm2Home)).map(({ file }) => readPidFile(file)));
    return pids.filter((pid): pid is number => pid !== undefined && isAlive(pid));
  }

  /** SIGKILL whatever of ours still runs: the last resort when the shutdown budget is spent. */
  async killRemaining(knownPids: number[]): Promise<void> {
    for (const pid of knownPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  async daemonPid(): Promise<number | undefined> {
    return readPidFile(path.join(this.pm2Home, 'pm2.pid'));
  }

  /**
   * Call `onExit` once if PM2 goes away under the instances: `pm2 kill` run against the PM2 this
   * process serves, or the exit of a daemon that was already running. Returns the function that
   * stops watching.
   */
  async onPm2Exit(onExit: (reason: string) => void): Promise<() => void> {
    if (this.serving) {
      this.killedBy = onExit;
      // A `pm2 kill` before anyone watched still counts.
      const reason = this.killReason;
      if (reason) queueMicrotask(() => onExit(reason));
      return () => {
        this.killedBy = undefined;
      };
    }
    const pid = await this.daemonPid();
    if (pid === undefined) return () => undefined;
    const timer = setInterval(() => {
      if (!isAlive(pid)) {
        clearInterval(timer);
        onExit(`the PM2 daemon (pid ${pid}) exited`);
      }
    }, 1000);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Disconnect, and stop serving PM2 if this process does (a daemon that was already running is
   * left alone). Also after a failed or half-done connect: whatever was loaded or bound goes.
   */
  async close(): Promise<void> {
    this.closing = true;
    for (const timer of this.settleTimers.values()) clearTimeout(timer);
    this.settleTimers.clear();
    // A connect under way finishes its step first (a bind gives up within SERVE_TIMEOUT_MS): what it
    // bound is then closed below, and nothing of another PM2's is touched.
    await this.connecting?.catch(() => undefined);
    await this.loading?.catch(() => undefined);
    const api = this.api;
    this.api = undefined;
    if (api) {
      try {
        this.bus?.close?.();
      } catch {
        // the bus may already be gone
      }
      await new Promise<void>((resolve) => api.disconnect(() => resolve()));
    }
    await this.host?.close();
    this.host = undefined;
    this.serving = false;
  }
}
