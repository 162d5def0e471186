import { createRequire } from 'node:module';
import net from 'node:net';
import { unlinkSync } from 'node:fs';
import path from 'node:path';
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
 * as that mode does. These are PM2 internals: package.json pins the exact PM2 version, and
 * test/processes.test.ts runs this against it.
 */

interface Pm2Paths {
  DAEMON_RPC_PORT: string;
  DAEMON_PUB_PORT: string;
  PM2_PID_FILE_PATH: string;
}

interface Closable {
  close(callback: () => void): void;
}

interface Pm2Daemon {
  innerStart(callback: () => void): void;
  /** What `pm2 kill` calls (through the RPC socket): PM2's own version ends the process. */
  close: (options: { pid?: number | string }) => void;
  rpc_socket?: Closable;
  pub_socket?: Closable;
}

interface Pm2God {
  Worker?: { start(): void; stop(): void };
  system_infos_proc?: { kill(): void } | null;
}

type DaemonClass = new (options: { pub_socket_file: string; rpc_socket_file: string; pid_file: string; ignore_signals: boolean }) => Pm2Daemon;

const CONSOLE_METHODS = ['log', 'info', 'warn', 'error'] as const;
type ConsoleMethod = (typeof CONSOLE_METHODS)[number];

export interface HostedPm2 {
  pid: number;
  /** Stop serving PM2_HOME: close the sockets, stop PM2's timers, remove the pid file. The apps must be gone already. */
  close(): Promise<void>;
}

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

export function pm2Paths(): Pm2Paths {
  // pm2/constants.js reads PM2_HOME when first loaded: the caller has set it by now.
  const require = createRequire(import.meta.url);
  return require('pm2/constants.js') as Pm2Paths;
}

/**
 * Serve PM2 from this process. `onKill` is called when someone runs `pm2 kill` (PM2 has
 * already stopped the apps by then): gpu-boot shuts down instead of PM2 exiting the process.
 * PM2 rewrites console.* when it loads: its messages go to `logger` (debug; warnings and
 * errors as warn) until `close`, which puts the originals back.
 */
export async function hostPm2(logger: Logger, onKill: () => void): Promise<HostedPm2> {
  const require = createRequire(import.meta.url);
  const paths = pm2Paths();
  const saved = Object.fromEntries(CONSOLE_METHODS.map((m) => [m, console[m]])) as Record<ConsoleMethod, (...args: unknown[]) => void>;
  const Daemon = require('pm2/lib/Daemon.js') as DaemonClass;
  const God = require('pm2/lib/God.js') as Pm2God;
  const pm2Logger = logger.child({ component: 'pm2' });
  for (const method of CONSOLE_METHODS) {
    const level = method === 'warn' || method === 'error' ? 'warn' : 'debug';
    console[method] = (...args: unknown[]) => pm2Logger[level](args.map(String).join(' '));
  }

  const daemon = new Daemon({
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
  await new Promise<void>((resolve) => daemon.innerStart(() => resolve()));

  let closed = false;
  return {
    pid: process.pid,
    close: async () => {
      if (closed) return;
      closed = true;
      if (God.Worker) {
        God.Worker.stop();
        // PM2 starts its worker 500 ms after loading: a close before then must not let it start later.
        God.Worker.start = () => undefined;
      }
      God.system_infos_proc?.kill();
      const closeSocket = (socket: Closable | undefined) =>
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
      for (const method of CONSOLE_METHODS) console[method] = saved[method];
    },
  };
}

/** Where PM2 keeps its sockets, pid files and logs for this process's environment. */
export function pm2HomeOf(env: NodeJS.ProcessEnv): string {
  return env.PM2_HOME ?? path.join(env.HOME ?? '/root', '.pm2');
}
