import { accessSync, constants as fsConstants, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { BootError, ExitCode } from '../errors.js';
import { lstat, unlink } from 'node:fs/promises';
import { readRegularFile } from '../files/owned.js';
import { PACKAGE_ROOT } from '../package-root.js';
import { type CodeCacheUse, requireWithCodeCache } from './code-cache.js';
import { createPm2HomeFolders, type Pm2HomePaths } from './pm2-home.js';
import type { Stats } from 'node:fs';
import type { spawn, SpawnOptions } from 'node:child_process';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { format } from 'node:util';
import type { Server } from 'node:net';
import type { Logger } from 'pino';

/**
 * PM2's daemon (its "God": the part that forks, watches and restarts apps) hosted inside
 * gpu-boot's own process instead of as a second Node process. The same sockets and pid file
 * are served in PM2_HOME, so `pm2 ls`, `pm2 logs` and `pm2 restart` in the container work as
 * usual; what it saves is a second Node runtime: ~58 MB and ~250 ms at boot (bench/RESULTS.md).
 *
 * PM2's public `connect(true)` ("no daemon mode") does the same but keeps the daemon object to
 * itself: it could then neither be closed without `process.exit` nor answer `pm2 kill` with
 * gpu-boot's shutdown (and its wipe). So the daemon is built here from PM2's own Daemon class,
 * as that mode does. Its apps are started, stopped and deleted here too, with PM2's own Common
 * and God methods (startApps): PM2's API and its RPC client are loaded only for a daemon that was
 * already running. These are PM2 internals: package.json pins the exact PM2 version, and
 * test/processes.test.ts runs this against it (test/processes-foreign.test.ts the API's path).
 */

interface Pm2Paths extends Pm2HomePaths {
  DAEMON_RPC_PORT: string;
  DAEMON_PUB_PORT: string;
  PM2_PID_FILE_PATH: string;
}

interface AxonSocket {
  close(callback: () => void): void;
  server?: Server;
}

interface Pm2Daemon {
  innerStart(callback: () => void): void;
  /** Its pub socket (axon's pub-emitter): `sock.socks` are the subscribers connected to pub.sock. */
  pub?: { sock?: { socks?: unknown[] } };
  /** What `pm2 kill` calls (through the RPC socket): PM2's own version ends the process. */
  close: (options: { pid?: number | string }) => void;
  rpc_socket?: AxonSocket;
  pub_socket?: AxonSocket;
}

/** One app in PM2's own table (God.clusters_db), as its RPC `list` sends it, before CPU and memory. */
export interface Pm2App {
  pid?: number;
  name?: string;
  pm_id?: number;
  pm2_env?: { status?: string; restart_time?: number; pm_uptime?: number; exit_code?: number };
}

/** PM2's in-process event bus (EventEmitter2): what its daemon publishes on pub.sock, before serialization. */
export interface Pm2EventBus {
  on(event: string, listener: (packet: never) => void): void;
  off(event: string, listener: (packet: never) => void): void;
  onAny?(listener: AnyListener): void;
}

type AnyListener = (this: unknown, event: string, data: unknown) => unknown;

type NodeCallback<T> = (error: Error | null | undefined, value: T) => void;

interface Pm2God {
  getFormatedProcesses(): Pm2App[];
  bus: Pm2EventBus;
  Worker?: { start(): void; stop(): void };
  system_infos_proc?: { kill(): void } | null;
  /** What PM2's `prepare` RPC runs for each app the CLI or the API starts. */
  prepare(app: Pm2AppConfig, callback: NodeCallback<unknown>): void;
  deleteProcessId(id: number, callback: NodeCallback<unknown>): void;
  stopProcessId(id: number, callback: NodeCallback<unknown>): void;
  /** The `process:event` the API's client asks for after a delete or a stop (`pm2 logs` shows it). */
  notifyByProcessId?(options: { id: number; action_name: string; manually: boolean }, callback: () => void): void;
  /** PM2's child processes by pm_id (an exited one stays until its restart delay has passed). */
  clusters_db: Record<string, { pm2_env?: { name?: string; pm_id?: number }; signalCode?: unknown } | null | undefined>;
  /** How its daemon forks an app (`exec_mode: fork`), for its first start and each restart. */
  forkMode?: ForkMode;
}

/** An app's record as PM2's fork mode gets it: each plain field becomes a variable of its process. */
interface ForkedRecord {
  name?: unknown;
  /** The app's own environment (what the ecosystem file gave it), also spread over the record. */
  env?: unknown;
  [field: string]: unknown;
}

type ForkMode = (this: unknown, record: ForkedRecord, callback: (error?: unknown, ...rest: unknown[]) => void) => unknown;

/**
 * What an instance keeps of PM2's own fields, beside its app's environment, where gpu-boot serves
 * PM2 (see trimInstanceEnvironments): its name, by which a later boot tells an instance this
 * PM2_HOME left running (orphans.ts), and its pm_id, by which PM2's CLI run from inside it knows
 * it is inside one of PM2's apps (without it, `pm2 start` there copies `name` into the new app).
 */
export const INSTANCE_PM2_FIELDS_KEPT = ['name', 'pm_id'] as const;

/** One app of an ecosystem file, as PM2's Common reads, checks and resolves it. */
interface Pm2AppConfig {
  name?: string;
  namespace?: string;
  username?: string;
  km_link?: boolean;
  env?: Record<string, unknown>;
  [field: string]: unknown;
}

/** The part of PM2's Common (lib/Common.js) that turns an ecosystem file into what `prepare` takes. */
interface Pm2Common {
  parseConfig(data: Buffer, file: string): unknown;
  verifyConfs(apps: unknown[]): Pm2AppConfig[] | Error;
  getCurrentUsername(): string;
  resolveAppAttributes(options: { cwd: string; pm2_home: string }, app: Pm2AppConfig): Pm2AppConfig;
  mergeEnvironmentVariables(app: Pm2AppConfig, envName: undefined, deployConf: object): Record<string, unknown>;
}

type DaemonClass = new (options: { pub_socket_file: string; rpc_socket_file: string; pid_file: string; ignore_signals: boolean }) => Pm2Daemon;

const CONSOLE_METHODS = ['log', 'info', 'warn', 'error'] as const;
type ConsoleMethod = (typeof CONSOLE_METHODS)[number];

/** The latest PM2's worker starts after serving, when the boot has not released it (releaseWorker) before. */
export const WORKER_RELEASE_MS = 30_000;

/** How long binding PM2's two sockets may take before hosting is given up (it takes ~1 ms). */
export const SERVE_TIMEOUT_MS = 5000;

/** True when a PM2 daemon answers on `rpcSocket` (someone else's, or one of an older gpu-boot). */
export function daemonAnswers(rpcSocket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(rpcSocket);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * PM2's sockets and pid file in `pm2Home` that no daemon serves any more (its run was killed):
 * removed only when no daemon answers on rpc.sock and the pid file names no live process.
 * Sockets must be sockets and the pid file a regular file; links are never followed.
 */
export async function removeStalePm2Files(pm2Home: string): Promise<string[]> {
  const rpc = path.join(pm2Home, 'rpc.sock');
  if (await daemonAnswers(rpc)) return [];
  const pidFile = path.join(pm2Home, 'pm2.pid');
  let pid: number | undefined;
  try {
    pid = Number.parseInt(readRegularFile(pidFile, 64).toString('utf8'), 10);
  } catch {
    pid = undefined;
  }
  if (pid !== undefined && Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
    try {
      process.kill(pid, 0);
      return [];
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EPERM') return [];
    }
  }
  const removed: string[] = [];
  for (const [name, isRight] of [['rpc.sock', (s: Stats) => s.isSocket()], ['pub.sock', (s: Stats) => s.isSocket()], ['pm2.pid', (s: Stats) => s.isFile()]] as const) {
    const file = path.join(pm2Home, name);
    try {
      const stat = await lstat(file);
      if (!isRight(stat) || stat.uid !== process.geteuid?.()) continue;
      await unlink(file);
      removed.push(file);
    } catch {
      // not there
    }
  }
  return removed;
}

/**
 * PM2_HOME made (as PM2 makes it) and proved writable before PM2 loads, for a user other than root
 * (the image's): PM2 that cannot write there prints stack traces and never serves, and the boot
 * would wait on it. Throws a BootError (73) naming the folder and what to set instead.
 */
export function preparePm2Home(home: string): void {
  // Root can write anywhere, and must create nothing through a path someone else may have laid
  // (checkPm2Home in the runner refuses a PM2_HOME that is not root's alone): PM2 makes it then.
  if (process.geteuid?.() === 0) return;
  try {
    // As PM2 makes it (its mode from the umask): someone else may read it (`docker exec -u other pm2 ls`).
    mkdirSync(home, { recursive: true });
    accessSync(home, fsConstants.W_OK | fsConstants.X_OK);
  } catch (error) {
    const uid = process.geteuid?.();
    throw new BootError(
      ExitCode.cantCreate,
      `PM2_HOME ${home} cannot be used by this user (uid ${uid}): ${(error as NodeJS.ErrnoException).code ?? String(error)}; set PM2_HOME to a folder it can write (the image's is /home/comfy/.pm2)`,
    );
  }
}

/** PM2_HOME as PM2 itself resolves it: the variable if not empty, else ~/.pm2 of the user (os.homedir()). */
export function pm2HomeOf(env: NodeJS.ProcessEnv): string {
  return env.PM2_HOME || path.resolve(os.homedir(), '.pm2');
}

/** dist/pm2-daemon.cjs (npm run build): PM2's daemon code in one file, built from node_modules' PM2. */
export const PM2_DAEMON_BUNDLE = path.join(PACKAGE_ROOT, 'dist', 'pm2-daemon.cjs');

export interface Pm2DaemonCode {
  /** The bundle, or PM2's folder in node_modules where there is none or it was not built from the installed packages. */
  from: string;
  /** The bundle's code cache (see code-cache.ts): taken, refused, or none for this Node and these flags. */
  codeCache: CodeCacheUse;
  constants: () => Pm2Paths;
  daemonCode: () => { Daemon: DaemonClass; God: Pm2God; Common: Pm2Common };
}

/**
 * PM2's daemon code (constants, Daemon, God, Common), from `bundle` when node_modules holds exactly
 * the packages it was built from (the versions its `.packages.json` lists: ~30 package.json read,
 * ~3 ms), ~30 ms sooner than file by file (one file to read and compile where there are ~200), and
 * ~20 ms sooner again with the code cache the build wrote for the image's Node flags; else from
 * node_modules, file by file. Each part loads when asked for.
 */
export function pm2DaemonCode(bundle: string, nodeModules = path.join(path.dirname(bundle), '..', 'node_modules')): Pm2DaemonCode {
  const require = createRequire(import.meta.url);
  if (builtFromInstalled(bundle, nodeModules)) {
    try {
      const { exports, codeCache } = requireWithCodeCache(bundle);
      const built = exports as { constants?: unknown; daemonCode?: unknown };
      if (typeof built.constants === 'function' && typeof built.daemonCode === 'function') {
        return { from: bundle, codeCache, constants: built.constants as Pm2DaemonCode['constants'], daemonCode: built.daemonCode as Pm2DaemonCode['daemonCode'] };
      }
    } catch {
      // unreadable or broken: PM2 from node_modules
    }
  }
  return {
    from: path.dirname(require.resolve('pm2/package.json')),
    codeCache: 'none',
    constants: () => require('pm2/constants.js') as Pm2Paths,
    daemonCode: () => ({ Daemon: require('pm2/lib/Daemon.js') as DaemonClass, God: require('pm2/lib/God.js') as Pm2God, Common: require('pm2/lib/Common.js') as Pm2Common }),
  };
}

/** Every package the bundle holds is in `nodeModules` at the version it was built from. */
function builtFromInstalled(bundle: string, nodeModules: string): boolean {
  try {
    const { packages } = JSON.parse(readFileSync(bundle.replace(/\.cjs$/, '.packages.json'), 'utf8')) as { packages?: Record<string, string> };
    if (!packages || !packages.pm2) return false;
    return Object.entries(packages).every(([name, version]) => (JSON.parse(readFileSync(path.join(nodeModules, name, 'package.json'), 'utf8')) as { version?: string }).version === version);
  } catch {
    return false; // not built (tsc alone, or run from src/ before a build), or a package gone
  }
}

export class Pm2Host {
  private daemon: Pm2Daemon | undefined;
  private closed = false;
  /** PM2's periodic worker, held back until this process serves (see load). */
  private workerStart: (() => void) | undefined;
  private workerWanted = false;
  private workerTimer: NodeJS.Timeout | undefined;
  /** PM2's ids (unique_id) of the apps startApps started: PM2 forks only these with their own environment alone. */
  private readonly ownApps = new Set<string>();
  /** The app startApps is handing to PM2's prepare, for the length of that call. */
  private preparing: string | undefined;

  private constructor(
    private readonly paths: Pm2Paths,
    private readonly Daemon: DaemonClass,
    private readonly God: Pm2God,
    private readonly Common: Pm2Common,
    private readonly savedConsole: Record<ConsoleMethod, (...args: unknown[]) => void>,
  ) {}

  /**
   * Load PM2's daemon code (~60 ms of CommonJS, so the boot does it early), serving nothing yet.
   * PM2 rewrites console.* as it loads: its messages go to `logger` (debug; its warnings and
   * errors as warn) until `close` puts the originals back. PM2_HOME must be final by now.
   */
  static load(logger: Logger): Pm2Host {
    const saved = Object.fromEntries(CONSOLE_METHODS.map((m) => [m, console[m]])) as Record<ConsoleMethod, (...args: unknown[]) => void>;
    const code = pm2DaemonCode(PM2_DAEMON_BUNDLE);
    logger.debug({ pm2Code: code.from, codeCache: code.codeCache }, `PM2's daemon code from ${code.from} (code cache: ${code.codeCache})`);
    const paths = code.constants();
    // PM2_HOME's folders and module configuration, as PM2's own client makes them: its daemon code
    // reads the configuration as it loads (the client itself is not loaded here: see startApps).
    createPm2HomeFolders(paths);
    // PM2's Daemon.js turns source maps on for the whole process as it loads. Hosted here, that made
    // every Error's stack (each refused connection of the readiness probes) look up dist/'s maps:
    // ~190 ms of CPU while 16 instances start (bench/RESULTS.md). The setting is put back as it was.
    const sourceMaps = process.sourceMapsEnabled;
    const { Daemon, God, Common } = code.daemonCode();
    const host = new Pm2Host(paths, Daemon, God, Common, saved);
    if (process.sourceMapsEnabled !== sourceMaps) process.setSourceMapsEnabled(sourceMaps);
    host.trimInstanceEnvironments();
    // Loading PM2 schedules its worker (system metrics, which run `df`) 500 ms later, and its
    // children inherit this process's environment: held back until `serve`, which the boot calls
    // only once the secrets are out of the environment.
    const worker = host.God.Worker;
    if (worker) {
      host.workerStart = worker.start.bind(worker);
      worker.start = () => {
        host.workerWanted = true;
      };
    }
    const pm2Logger = logger.child({ component: 'pm2' });
    for (const method of CONSOLE_METHODS) {
      const level = method === 'warn' || method === 'error' ? 'warn' : 'debug';
      // As console.* formats them: PM2 writes `console.log('pid=%d msg=%s', pid, msg)`.
      console[method] = (...args: unknown[]) => pm2Logger[level](format(...args));
    }
    return host;
  }

  /**
   * PM2's fork mode gives an app's process every plain field of the app's record as an environment
   * variable (status, pm_exec_path, kill_timeout, unique_id... ~30), beside the app's own
   * environment. They mean nothing to ComfyUI, and each one costs every node's load_dotenv():
   * python-dotenv copies the whole environment for each key it reads (~1.75 ms of an instance's
   * CPU per variable at 500 nodes of 5 keys: bench/RESULTS.md). The apps startApps started (known
   * by the id PM2 gives each record, never by name) are forked with their own environment and
   * INSTANCE_PM2_FIELDS_KEPT alone, PM2's restarts included: PM2's fork reads
   * child_process.spawn at its first line, swapped for the length of that synchronous call. PM2's
   * record of the app is left whole (`pm2 show`, `pm2 jlist`); any other app is forked as PM2 does.
   */
  private trimInstanceEnvironments(): void {
    const { God, ownApps } = this;
    const forkMode = God.forkMode;
    if (typeof forkMode !== 'function') return;
    const childProcess = createRequire(import.meta.url)('node:child_process') as { spawn: typeof spawn };
    const host = this;
    God.forkMode = function (this: unknown, record, callback) {
      const appEnv = record.env;
      const id = appEnv && typeof appEnv === 'object' ? (appEnv as { unique_id?: unknown }).unique_id : undefined;
      if (typeof id !== 'string') return forkMode.call(this, record, callback);
      // Its first fork happens within startApps' own call of prepare (PM2 sets the id there).
      if (host.preparing !== undefined && host.preparing === record.name) ownApps.add(id);
      if (!ownApps.has(id)) return forkMode.call(this, record, callback);
      const keep = new Set<string>([...Object.keys(appEnv as object), ...INSTANCE_PM2_FIELDS_KEPT]);
      const realSpawn = childProcess.spawn;
      const trimmedSpawn = (command: string, args: readonly string[], options: SpawnOptions) => {
        if (childProcess.spawn === trimmedSpawn) childProcess.spawn = realSpawn;
        // Without an environment of its own a child inherits this process's: nothing to trim then.
        if (!options?.env) return realSpawn(command, args, options);
        const env = Object.fromEntries(Object.entries(options.env).filter(([variable]) => keep.has(variable)));
        return realSpawn(command, args, { ...options, env });
      };
      childProcess.spawn = trimmedSpawn as typeof spawn;
      try {
        return forkMode.call(this, record, callback);
      } finally {
        if (childProcess.spawn === trimmedSpawn) childProcess.spawn = realSpawn;
      }
    };
  }

  get rpcSocket(): string {
    return this.paths.DAEMON_RPC_PORT;
  }

  /**
   * Serve PM2_HOME's sockets from this process. `onKill` is called when someone runs `pm2 kill`
   * (the CLI has stopped the apps by then): gpu-boot shuts down instead of PM2 ending the
   * process. Rejects when the sockets are not bound within SERVE_TIMEOUT_MS (another PM2 took
   * them), putting back the pid file it found.
   */
  async serve(onKill: () => void): Promise<void> {
    const { paths } = this;
    const previousPidFile = (() => {
      try {
        return readFileSync(paths.PM2_PID_FILE_PATH, 'utf8');
      } catch {
        return undefined;
      }
    })();
    const daemon = new this.Daemon({
      pub_socket_file: paths.DAEMON_PUB_PORT,
      rpc_socket_file: paths.DAEMON_RPC_PORT,
      pid_file: paths.PM2_PID_FILE_PATH,
      // gpu-boot handles the signals: PM2 must not exit the process on SIGTERM/SIGINT.
      ignore_signals: true,
    });
    let killed = false;
    daemon.close = (options) => {
      // The `pm2 kill` CLI waits for a SIGQUIT before it returns, as PM2's own close sends.
      const cli = Number(options?.pid);
      if (Number.isInteger(cli) && cli > 0 && cli !== process.pid) {
        try {
          process.kill(cli, 'SIGQUIT');
        } catch {
          // the CLI is gone
        }
      }
      // No answer on the RPC socket: the CLI sends killMe without a callback, and an answer crashes it.
      if (!killed) {
        killed = true;
        onKill();
      }
    };
    this.daemon = daemon;
    // PM2's daemon broadcasts every bus event on pub.sock (`pm2 logs`, the API's bus): it clones
    // each one and packs it even when nobody is connected, ~25 us an event and 8,000 start-up
    // lines at 16 x 500 (bench/RESULTS.md). Its broadcaster runs only while someone is subscribed.
    const bus = this.God.bus;
    const onAny = bus.onAny;
    const restoreOnAny = (): void => {
      if (onAny) bus.onAny = onAny;
    };
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        restoreOnAny();
        reject(new Error(`PM2 could not serve ${paths.DAEMON_RPC_PORT} within ${SERVE_TIMEOUT_MS} ms (another PM2 on this PM2_HOME?)`));
        this.daemon = undefined;
        // PM2's bind retries on its own errors: stop it. A socket that did bind is closed (its file is
        // removed with it); one that did not is left to whoever holds it.
        for (const socket of [daemon.rpc_socket, daemon.pub_socket]) {
          const server = socket?.server;
          if (!server) continue;
          server.removeAllListeners('error').on('error', () => undefined);
          if (server.listening) server.close();
        }
        try {
          if (previousPidFile === undefined) unlinkSync(paths.PM2_PID_FILE_PATH);
          else writeFileSync(paths.PM2_PID_FILE_PATH, previousPidFile);
        } catch {
          // nothing to put back
        }
      }, SERVE_TIMEOUT_MS);
      if (onAny) {
        bus.onAny = function (this: unknown, listener: AnyListener) {
          onAny.call(this, function (this: unknown, event: string, data: unknown) {
            const subscribers = daemon.pub?.sock?.socks;
            // An axon that no longer looks as expected: broadcast, as PM2 would.
            if (Array.isArray(subscribers) && subscribers.length === 0) return false;
            return listener.call(this, event, data);
          });
        };
      }
      daemon.innerStart(() => {
        restoreOnAny();
        clearTimeout(timer);
        resolve();
      });
    });
    // PM2's own mark that this PM2_HOME is set up: without it the first `pm2 ls` in the container
    // prints PM2's banner (and asks pm2.io about the install). Created, never overwritten or followed.
    try {
      writeFileSync(path.join(paths.PM2_HOME, 'touch'), String(Date.now()), { flag: 'wx', mode: 0o644 });
    } catch {
      // there already (or PM2_HOME read-only: only the banner is lost)
    }
    // PM2's worker waits still: its first round (system metrics: /proc read through, `df`) is ~140 ms
    // of CPU, which would fall on the instances' start. The boot releases it once they answer
    // (releaseWorker); this timer is for a boot whose instances never all answer.
    this.workerTimer = setTimeout(() => this.releaseWorker(), WORKER_RELEASE_MS);
    this.workerTimer.unref();
  }

  /**
   * The apps in PM2's table, read in this process, as PM2's `list` finds them before it reads every
   * process's CPU and memory through /proc (pidusage) and sends the whole over its RPC socket: the
   * boot's readiness and supervisor ask often, and read neither (bench/RESULTS.md). Serving only.
   */
  apps(): Pm2App[] | undefined {
    if (!this.daemon || this.closed) return undefined;
    return this.God.getFormatedProcesses();
  }

  /** The signal that ended app `pmId`'s process, while PM2 still holds the exited child (its exit event carries none). */
  exitSignal(pmId: number): string | null {
    const child = this.God.clusters_db[String(pmId)];
    return child && typeof child.signalCode === 'string' ? child.signalCode : null;
  }

  /**
   * PM2's events (each app's output, its starts and exits), heard in this process where it is served:
   * the same packets its pub socket sends `pm2 logs` and the API's bus, without each line being
   * packed, written to a socket, read back and parsed (8,000 start-up lines at 16 x 500). Delivered
   * on setImmediate, in order, as the socket delivered them: after PM2's own handling. The packets
   * of one turn share one setImmediate (one per packet was ~50 ms of CPU while 16 instances start).
   * Serving only.
   */
  events(): { on(event: string, listener: (packet: never) => void): void; close(): void } | undefined {
    if (!this.daemon || this.closed) return undefined;
    const bus = this.God.bus;
    const added: Array<[string, (packet: never) => void]> = [];
    let queue: Array<[(packet: never) => void, never]> = [];
    const drain = (): void => {
      const due = queue;
      queue = [];
      for (const [listener, packet] of due) listener(packet);
    };
    return {
      on: (event, listener) => {
        const deferred = (packet: never) => {
          if (queue.push([listener, packet]) === 1) setImmediate(drain);
        };
        added.push([event, deferred]);
        bus.on(event, deferred);
      },
      close: () => {
        for (const [event, listener] of added.splice(0)) bus.off(event, listener);
      },
    };
  }

  /**
   * `pm2 start <file>` (`--only` a name) for apps not in PM2's table, done here by the daemon this
   * process serves: what PM2's API does for it (its Common reads, checks and resolves each app, and
   * `prepare` starts it), without loading the API and its client (~17 ms and ~2.5 MB here) and
   * without each app's record being packed onto rpc.sock and back. Serving only.
   */
  async startApps(file: string, only?: string): Promise<void> {
    const { Common, God, paths } = this.serving();
    const config = Common.parseConfig(readFileSync(file), file) as { apps?: unknown } | unknown[];
    const listed = (Array.isArray(config) ? config : ((config as { apps?: unknown }).apps ?? config)) as unknown;
    const apps = Common.verifyConfs(Array.isArray(listed) ? listed : [listed]);
    if (apps instanceof Error) throw apps;
    const wanted = only === undefined ? apps : apps.filter((app) => only.split(/,| /).includes(String(app.name)));
    const running = new Set(this.apps()?.map((app) => app.name));
    for (const app of wanted) {
      // PM2's API would restart a running app with the file's environment: gpu-boot deletes first (restartFresh).
      if (running.has(app.name)) throw new Error(`${app.name} is already in PM2`);
    }
    for (const app of wanted) {
      app.namespace ||= 'default';
      app.username = Common.getCurrentUsername();
      const resolved = Common.resolveAppAttributes({ cwd: process.cwd(), pm2_home: paths.PM2_HOME }, app);
      resolved.env = { ...(resolved.env ?? {}), PM2_HOME: paths.PM2_HOME };
      const env = Common.mergeEnvironmentVariables(resolved, undefined, {});
      delete env.current_conf;
      resolved.env = env;
      // Forked with its own environment alone (trimInstanceEnvironments), known by the id prepare gives it.
      await new Promise<void>((resolve, reject) => {
        this.preparing = typeof app.name === 'string' ? app.name : undefined;
        try {
          God.prepare(resolved, (error) => (error ? reject(error) : resolve()));
        } finally {
          this.preparing = undefined;
        }
        const id = (resolved.env as { unique_id?: unknown } | undefined)?.unique_id;
        if (typeof id === 'string') this.ownApps.add(id);
      });
    }
  }

  /** `pm2 delete <name>`, done here (see startApps): each of its processes stopped (kill_timeout) and removed. */
  deleteApps(name: string): Promise<void> {
    return this.actOn(name, 'deleteProcessId', 'delete');
  }

  /** `pm2 stop <name>`, done here (see startApps): it stays in PM2's table, stopped. */
  stopApps(name: string): Promise<void> {
    return this.actOn(name, 'stopProcessId', 'stop');
  }

  private async actOn(name: string, method: 'deleteProcessId' | 'stopProcessId', action: string): Promise<void> {
    const { God } = this.serving();
    const ids = Object.values(God.clusters_db)
      .filter((proc) => proc?.pm2_env?.name === name)
      .map((proc) => proc!.pm2_env!.pm_id)
      .filter((id): id is number => typeof id === 'number');
    // As PM2's client says it: "Process or Namespace <name> not found".
    if (ids.length === 0) throw new Error(`Process or Namespace ${name} not found`);
    await Promise.all(
      ids.map(
        (id) =>
          new Promise<void>((resolve, reject) =>
            God[method](id, (error) => {
              if (error) return reject(error);
              God.notifyByProcessId?.({ id, action_name: action, manually: true }, () => undefined);
              resolve();
            }),
          ),
      ),
    );
  }

  private serving(): { Common: Pm2Common; God: Pm2God; paths: Pm2Paths } {
    if (!this.daemon || this.closed) throw new Error('PM2 is not served by this process');
    return { Common: this.Common, God: this.God, paths: this.paths };
  }

  /** Let PM2's worker run (now, if PM2 already wanted it to start, else when it does). Serving only; once. */
  releaseWorker(): void {
    clearTimeout(this.workerTimer);
    if (!this.daemon || this.closed || !this.God.Worker || !this.workerStart) return;
    const start = this.workerStart;
    this.workerStart = undefined;
    this.God.Worker.start = start;
    if (this.workerWanted) start();
  }

  /**
   * The apps in this PM2 that are not gpu-boot's instances: one someone started in the container
   * by hand (`pm2 start x`, with gpu-boot's PM2_HOME). PM2's own `kill`, and its daemon's exit on a
   * signal, delete every app before the daemon goes; without that such an app would outlive
   * gpu-boot, unsupervised (PM2 forked it from this process).
   */
  otherApps(ours: (name: string) => boolean): Array<{ pmId: number; name: string; pid: number }> {
    return (this.apps() ?? [])
      .filter((app) => typeof app.pm_id === 'number' && !ours(app.name ?? ''))
      .map((app) => ({ pmId: app.pm_id!, name: app.name ?? `pm_id ${app.pm_id}`, pid: app.pid ?? 0 }));
  }

  /** Stop and remove app `pmId` as PM2 does (SIGINT, then SIGKILL after its kill_timeout). */
  deleteApp(pmId: number): Promise<void> {
    return new Promise((resolve) => this.God.deleteProcessId(pmId, () => resolve()));
  }

  /** Stop serving (the apps must be gone already): sockets, PM2's timers, the pid file; console back. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const { God, daemon, paths } = this;
    clearTimeout(this.workerTimer);
    if (God.Worker) {
      God.Worker.stop();
      // PM2 starts its worker 500 ms after loading: a close before then must not let it start later.
      God.Worker.start = () => undefined;
    }
    God.system_infos_proc?.kill();
    if (daemon) {
      const closeSocket = (socket: AxonSocket | undefined) =>
        new Promise<void>((resolve) => {
          if (!socket) return resolve();
          try {
            socket.close(() => resolve());
          } catch {
            resolve();
          }
        });
      await Promise.all([closeSocket(daemon.rpc_socket), closeSocket(daemon.pub_socket)]);
      for (const file of [paths.PM2_PID_FILE_PATH, paths.DAEMON_RPC_PORT, paths.DAEMON_PUB_PORT]) {
        try {
          unlinkSync(file);
        } catch {
          // already gone
        }
      }
    }
    for (const method of CONSOLE_METHODS) console[method] = this.savedConsole[method];
  }
}
