import { readFileSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll } from 'vitest';
import { isAlive } from '../../src/instances/processes.js';
import { tcpRecord } from '../../src/instances/ports.js';
import { PYTHON } from './python.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const ENTRYPOINT = path.join(ROOT, 'dist', 'entrypoint.js');
/** The Node flags gpu-boot runs with (the image's ENTRYPOINT and `npm start`; the build makes PM2's code cache for them). */
export const NODE_FLAGS = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { gpuBoot: { nodeFlags: string[] } }).gpuBoot.nodeFlags;
export const STAND_IN_MAIN = path.join(ROOT, 'demo', 'workspace', 'ComfyUI', 'main.py');
export const FAKE_NVIDIA_SMI = path.join(ROOT, 'test', 'fixtures', 'nvidia-smi');
export const PM2_BIN = path.join(ROOT, 'node_modules', 'pm2', 'bin', 'pm2');

const NODE_INIT = `import os\nfrom dotenv import load_dotenv\nload_dotenv(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"))\nNODE_CLASS_MAPPINGS = {}\n`;

/**
 * Local ports of every TCP socket on this host, in any state (/proc/net/tcp and tcp6). A port in
 * TIME_WAIT (a server here closed a connection first, in the last 60 s) passes Node's own listen,
 * which sets SO_REUSEADDR, but a plain bind() without it fails with EADDRINUSE: Python's
 * socket.bind in a test, say.
 */
export function portsInUse(): Set<number> {
  const used = new Set<number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const record = tcpRecord(line);
      if (record) used.add(record.port);
    }
  }
  return used;
}

/**
 * A block of `count` consecutive free loopback ports, chosen from a random spot to avoid other
 * workers: no socket uses them in any state, and Node can listen on each.
 */
export async function freePorts(count: number): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen({ port, host: '127.0.0.1', exclusive: true }, () => server.close(() => resolve(true)));
    });
  for (let attempt = 0; attempt < 200; attempt += 1) {
    // Below Linux's ephemeral range (32768-60999): an outgoing connection cannot take the port between this check and the bind.
    const start = 20000 + Math.floor(Math.random() * (12000 - count));
    const used = portsInUse();
    let ok = true;
    for (let i = 0; i < count && ok; i += 1) ok = !used.has(start + i) && (await free(start + i));
    if (ok) return start;
  }
  throw new Error('no free ports');
}

export interface Workspace {
  root: string;
  workspace: string;
  comfyui: string;
  nodes: string;
  pm2Home: string;
  /** SECRETS_TMPFS of this test: the boot's secrets folder is gpu-boot-<id> inside it. */
  tmpfs: string;
  stateDir: string;
  secrets: string;
  portStart: number;
  healthPort: number;
  env: Record<string, string>;
  envFile(node: string): string;
  cleanup(): Promise<void>;
}

export interface WorkspaceOptions {
  nodes: string[];
  manifest: unknown;
  gpus?: number;
  mainPy?: string;
}

/** A temp workspace: the ComfyUI stand-in, the given node folders, the manifest, a private PM2_HOME and free ports. */
export async function makeWorkspace(options: WorkspaceOptions): Promise<Workspace> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-e2e-'));
  const workspace = path.join(root, 'workspace');
  const comfyui = path.join(workspace, 'ComfyUI');
  const nodes = path.join(comfyui, 'custom_nodes');
  await mkdir(nodes, { recursive: true });
  if (options.mainPy) await writeFile(path.join(comfyui, 'main.py'), options.mainPy);
  else {
    await cp(STAND_IN_MAIN, path.join(comfyui, 'main.py'));
    // Its flag definitions, as a ComfyUI checkout has them: gpu-boot checks COMFY_ARGS against this file.
    await cp(path.join(path.dirname(STAND_IN_MAIN), 'comfy'), path.join(comfyui, 'comfy'), { recursive: true, filter: (src) => !src.includes('__pycache__') });
  }
  for (const node of options.nodes) {
    await mkdir(path.join(nodes, node), { recursive: true });
    await writeFile(path.join(nodes, node, '__init__.py'), NODE_INIT);
  }
  await writeFile(path.join(workspace, 'config_nodes.json'), JSON.stringify(options.manifest, null, 2));
  const secrets = path.join(root, 'secrets');
  await mkdir(secrets, { recursive: true });
  const gpus = options.gpus ?? 2;
  // The instances' ports, then the health server's.
  const portStart = await freePorts(gpus + 1);
  const pm2Home = path.join(root, 'pm2');
  // Each test's secrets live in its own tmpfs folder, removed with the test even if the boot was killed.
  const tmpfs = path.join('/dev/shm', path.basename(root));
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: root,
    GPU_MODE: 'mock',
    NUM_GPUS: String(gpus),
    WORKSPACE_PATH: workspace,
    PM2_HOME: pm2Home,
    COMFYUI_PYTHON: PYTHON,
    COMFYUI_LISTEN: '127.0.0.1',
    COMFYUI_PORT_START: String(portStart),
    HEALTH_PORT: String(portStart + gpus),
    HEALTH_BIND: '127.0.0.1',
    COMFYUI_KILL_TIMEOUT_MS: '3000',
    LOG_LEVEL: 'debug',
    SECRETS_TMPFS: tmpfs,
  };
  return {
    root,
    workspace,
    comfyui,
    nodes,
    pm2Home,
    tmpfs,
    stateDir: path.join(workspace, '.gpu-boot'),
    secrets,
    portStart,
    healthPort: portStart + gpus,
    env,
    envFile: (node) => path.join(nodes, node, '.env'),
    cleanup: async () => {
      await killPm2(pm2Home);
      await rm(root, { recursive: true, force: true });
      await rm(tmpfs, { recursive: true, force: true });
    },
  };
}

/** Mount a small tmpfs (root only); returns false where mounting is not allowed. */
export function mountTmpfs(dir: string, options: string): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Running: the pid exists and is not a zombie (an exited process that a PID 1 has not reaped yet runs nothing). */
export const alive = isAlive;

/** No process has this pid any more, not even a zombie (kill(pid, 0) says ESRCH): stricter than `alive`. */
export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Wait for a condition, polling, up to a deadline; no fixed sleeps in the tests either. */
export async function waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let interval = 20;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
    interval = Math.min(250, interval * 2);
  }
}

/**
 * One PM2_HOME for a whole test file that loads PM2 in the test process (PM2 reads PM2_HOME once,
 * when first loaded): `<root>/pm2` in a fresh temp folder, set before the file's tests; after them
 * its processes are killed by pid, the folder removed and PM2_HOME put back. The paths are filled in
 * by the time the tests run.
 */
export function pm2HomeForThisFile(prefix: string): { root: string; pm2Home: string } {
  const paths = { root: '', pm2Home: '' };
  const saved = process.env.PM2_HOME;
  beforeAll(async () => {
    paths.root = await mkdtemp(path.join(os.tmpdir(), prefix));
    paths.pm2Home = path.join(paths.root, 'pm2');
    await mkdir(paths.pm2Home);
    process.env.PM2_HOME = paths.pm2Home;
  });
  afterAll(async () => {
    await killPm2(paths.pm2Home);
    await rm(paths.root, { recursive: true, force: true });
    if (saved === undefined) delete process.env.PM2_HOME;
    else process.env.PM2_HOME = saved;
  });
  return paths;
}

/** Kill a leftover PM2 daemon and its apps by pid (never by name). */
export async function killPm2(pm2Home: string): Promise<void> {
  const pids: number[] = [];
  try {
    pids.push(Number.parseInt(await readFile(path.join(pm2Home, 'pm2.pid'), 'utf8'), 10));
  } catch {
    // no daemon
  }
  try {
    const { readdir } = await import('node:fs/promises');
    for (const name of await readdir(path.join(pm2Home, 'pids'))) {
      pids.push(Number.parseInt(await readFile(path.join(pm2Home, 'pids', name), 'utf8'), 10));
    }
  } catch {
    // no apps
  }
  for (const pid of pids) {
    // PM2 may be hosted by this very process (test/processes.test.ts): never kill ourselves.
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

export interface Boot {
  child: ResultPromise;
  lines: string[];
  logs(): Array<Record<string, unknown>>;
  waitForLog(match: (entry: Record<string, unknown>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/** Start the built entrypoint as a real process. */
export function startBoot(args: string[], env: Record<string, string>): Boot {
  const child = execa('node', [...NODE_FLAGS, ENTRYPOINT, ...args], { env, extendEnv: false, reject: false, all: true, stdin: 'ignore' });
  const lines: string[] = [];
  let partial = '';
  child.all?.on('data', (chunk: Buffer) => {
    const text = partial + chunk.toString();
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  const logs = () =>
    lines.flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  return {
    child,
    lines,
    logs,
    waitForLog: (match, what, timeoutMs) => waitFor(what, () => logs().find(match), timeoutMs),
  };
}

/** End a boot a test left running (by its pid, with `signal`) and wait for its exit. */
export async function endBoot(boot: Boot | undefined, signal: NodeJS.Signals): Promise<void> {
  if (boot && boot.child.exitCode === null) {
    boot.child.kill(signal);
    await boot.child;
  }
}

/** Run a command to completion. */
export async function runBoot(args: string[], env: Record<string, string>) {
  return execa('node', [...NODE_FLAGS, ENTRYPOINT, ...args], { env, extendEnv: false, reject: false, stdin: 'ignore' });
}

export async function getJson(port: number, urlPath: string): Promise<unknown> {
  const response = await fetch(`http://127.0.0.1:${port}${urlPath}`);
  return response.json();
}

export async function makeExecutable(file: string, text: string): Promise<void> {
  await writeFile(file, text);
  await chmod(file, 0o755);
}

/** A minimal ComfyUI stand-in: `before` runs first (python lines), then it answers HTTP on its --port. */
export function tinyServerMain(before: string[]): string {
  return [
    'import os, signal, sys, time',
    'from http.server import HTTPServer, BaseHTTPRequestHandler',
    ...before,
    'class H(BaseHTTPRequestHandler):',
    '    def do_GET(self):',
    '        self.send_response(200); self.end_headers()',
    'port = int(sys.argv[sys.argv.index("--port") + 1])',
    'HTTPServer(("127.0.0.1", port), H).serve_forever()',
    '',
  ].join('\n');
}

/**
 * The variables of `pid` as it was executed, once its environment holds `marker`: PM2 has an
 * instance's pid from the fork, before the exec (an empty environ then).
 */
export async function executedEnvironment(pid: number, marker: string): Promise<Record<string, string>> {
  const file = `/proc/${pid}/environ`;
  await waitFor(`process ${pid} executing`, () => readFileSync(file, 'utf8').includes(marker));
  return Object.fromEntries(
    readFileSync(file, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]),
  );
}
