import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { mkdir, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { buildPlan, planPath } from '../src/instances/plan.js';
import { isAlive, ProcessManager } from '../src/instances/processes.js';
import { ECOSYSTEM_FILE } from '../src/runner.js';
import { executedEnvironment, freePorts, PM2_BIN, pm2HomeForThisFile, tinyServerMain, waitFor } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';
import { hostedGod } from './helpers/pm2.js';
import { PM2_DAEMON_BUNDLE } from '../src/instances/pm2-host.js';
import { detection, gpuList } from './helpers/gpus.js';
import { PYTHON } from './helpers/python.js';

// One PM2_HOME for this file: the pm2 module reads it once, when it is first imported.
const home = pm2HomeForThisFile('gpu-boot-pm2-');

/** Count calls of `object[method]` (passed through to it, with its `this` and its result) until `restore`. */
function countCalls<K extends string>(object: Record<K, (...args: never[]) => unknown>, method: K): { readonly count: number; restore(): void } {
  const real = object[method];
  const counter = { count: 0, restore: () => void (object[method] = real) };
  object[method] = function (this: unknown, ...args: never[]) {
    counter.count += 1;
    return real.apply(this ?? object, args);
  } as (typeof object)[K];
  return counter;
}

describe('ProcessManager with a real PM2', () => {
  it('starts the plan\'s apps, lists them and their pids, restarts one with a new process, stops them and stops serving PM2_HOME', async () => {
    const workspace = path.join(home.root, 'workspace');
    await mkdir(path.join(workspace, 'ComfyUI'), { recursive: true });
    await writeFile(path.join(workspace, 'ComfyUI', 'main.py'), tinyServerMain(['print("up", flush=True)', 'print("To see the GUI go to: http://127.0.0.1", flush=True)']));
    const port = await freePorts(2);
    const config = loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: '2', COMFYUI_PYTHON: PYTHON, COMFYUI_LISTEN: '127.0.0.1', COMFYUI_PORT_START: String(port) });
    const gpus = detection(2, { gpus: gpuList(2, 'Mock', 1024), source: 'mock' });
    await mkdir(config.stateDir, { recursive: true });
    await writeFile(planPath(config.stateDir), JSON.stringify(buildPlan(config, gpus, ['HF_TOKEN'])));

    const consoleLog = console.log;
    const { logger, lines } = captureLogger();
    const processes = new ProcessManager(logger, ECOSYSTEM_FILE);
    expect(processes.connected).toBe(false);
    await processes.connect();
    expect(processes.connected).toBe(true);
    expect(processes.pm2Home).toBe(home.pm2Home);
    // PM2 is served from this process, on the usual sockets: the pm2 CLI sees the apps.
    expect(processes.hostsPm2).toBe(true);
    expect(await processes.daemonPid()).toBe(process.pid);
    // PM2's worker waits while the instances start; released, it runs: its system metrics arrive.
    const God = hostedGod<{ system_infos: object | null }>();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(God.system_infos).toEqual({});
    processes.releasePm2Worker();
    await waitFor('PM2 worker ran', () => Object.keys(God.system_infos ?? {}).length > 0);
    // Served here, the instances' output and events come from PM2's own bus in this process, not a bus client on its socket.
    const api = (processes as unknown as { api: Record<'launchBus' | 'list', (cb: unknown) => void> }).api;
    const busClients = countCalls(api, 'launchBus');
    await processes.watch();
    expect(busClients.count).toBe(0);
    busClients.restore();

    // PM2's broadcaster on pub.sock (what `pm2 logs` reads) packs an event only for a subscriber.
    const daemon = (processes as unknown as { host: { daemon: { pub?: { sock?: { socks?: unknown[]; pack: (...args: never[]) => unknown } } } } }).host.daemon;
    expect(daemon.pub?.sock?.socks).toEqual([]);
    const packed = countCalls(daemon.pub!.sock!, 'pack');

    // Readiness is woken by each instance's own "To see the GUI go to:" line.
    const up: string[] = [];
    const stopListening = processes.onServerUp('comfyui-gpu1', () => up.push('comfyui-gpu1'));
    const started = await processes.startFromEcosystem(config.stateDir);
    expect(started.map((i) => i.name)).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
    expect(started.every((i) => i.pid > 0 && i.status === 'online' && i.restarts === 0)).toBe(true);
    expect((await processes.currentPids()).sort()).toEqual(started.map((i) => i.pid).sort());
    // PM2's fields of the app's record stay out of its process's environment (test/processes-environment.test.ts).
    const names = Object.keys(await executedEnvironment(started[0]!.pid, 'PM2_HOME='));
    expect(names).toEqual(expect.arrayContaining(['PM2_HOME', 'name', 'CUDA_VISIBLE_DEVICES']));
    expect(names.filter((name) => ['kill_timeout', 'status', 'pm_exec_path', 'unstable_restarts'].includes(name))).toEqual([]);
    await waitFor('output relayed', () => lines.some((l) => l.includes('"instance":"comfyui-gpu1"') && l.includes('"msg":"up"')));
    await waitFor('server-up line heard', () => up.length > 0);
    expect(up).toEqual(['comfyui-gpu1']);
    stopListening();
    // With nobody on pub.sock, PM2's broadcaster packed none of those events for it.
    expect(packed.count).toBe(0);

    const hostedList = countCalls(api, 'list');
    // Served from this process, the list is PM2's own table, read here: no request over its socket.
    const hosted = await processes.list();
    expect(hostedList.count).toBe(0);
    hostedList.restore();
    expect(hosted).toEqual(started.map((i) => ({ ...i, startedAt: expect.any(Number) })));
    // Served here, the apps were started by the daemon in this process: PM2's API and its client were never loaded.
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    expect(loaded.some((file) => file === PM2_DAEMON_BUNDLE || file.endsWith(path.join('pm2', 'lib', 'God.js')))).toBe(true);
    expect(loaded.filter((file) => file.endsWith(path.join('pm2', 'lib', 'API.js')) || file.endsWith(path.join('pm2', 'lib', 'Client.js')))).toEqual([]);
    // From a daemon that is not this process's (no table here), lists asked at the same moment share
    // one request to PM2; one asked after a stop began does not. PM2's own API client on rpc.sock, as
    // for a daemon someone else started.
    const pm2Api = ((await import('pm2')) as unknown as { default: Record<'connect' | 'list' | 'disconnect', (cb?: (error?: unknown) => void) => void> }).default;
    await new Promise<void>((resolve, reject) => pm2Api.connect((error) => (error ? reject(error as Error) : resolve())));
    const internals = processes as unknown as { api: unknown; serving: boolean };
    const hostedApi = internals.api;
    internals.api = pm2Api;
    internals.serving = false;
    const requests = countCalls(pm2Api, 'list');
    const together = await Promise.all([processes.list(), processes.list(), processes.list()]);
    expect(requests.count).toBe(1);
    expect(together[1]).toEqual(together[0]);
    expect(together[0]).toEqual(hosted);
    const before0 = processes.list();
    const stopped = processes.stopOne('comfyui-gpu0');
    const during0 = processes.list();
    await stopped;
    const after0 = await processes.list();
    await Promise.all([before0, during0]);
    expect(requests.count).toBe(4);
    expect(after0.find((i) => i.name === 'comfyui-gpu0')?.status).toBe('stopped');
    requests.restore();
    internals.api = hostedApi;
    internals.serving = true;
    pm2Api.disconnect();
    expect((await processes.list()).find((i) => i.name === 'comfyui-gpu0')?.status).toBe('stopped');
    // `pm2 logs` subscribes to pub.sock: from then on the events are broadcast to it, the restart's output among them.
    const pm2Logs = execa('node', [PM2_BIN, 'logs', '--raw', '--lines', '0'], { env: { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: home.pm2Home }, extendEnv: false, reject: false, buffer: false });
    let logsOut = '';
    pm2Logs.stdout?.on('data', (chunk: Buffer) => (logsOut += chunk.toString()));
    await waitFor('pm2 logs subscribed', () => (daemon.pub?.sock?.socks?.length ?? 0) > 0, 20_000);
    await processes.restartFresh('comfyui-gpu0');
    await waitFor('pm2 logs shows the restarted instance\'s output', () => logsOut.includes('up'), 20_000);
    expect(packed.count).toBeGreaterThan(0);
    pm2Logs.kill('SIGTERM');
    await pm2Logs;
    packed.restore();

    const before = started.find((i) => i.name === 'comfyui-gpu1')!;
    const after = await processes.restartFresh('comfyui-gpu1');
    expect(after?.pid).toBeGreaterThan(0);
    expect(after?.pid).not.toBe(before.pid);
    await waitFor('old process gone', () => !isAlive(before.pid));
    // A restart on purpose is not reported as a crash.
    expect(lines.filter((l) => l.includes('exited; PM2 restarts it'))).toEqual([]);
    const jlist = await execa('node', [PM2_BIN, 'jlist'], { env: { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: home.pm2Home }, extendEnv: false });
    const listed = JSON.parse(jlist.stdout.trim().split('\n').pop()!) as Array<{ name: string; pid: number }>;
    expect(listed.map((a) => [a.name, a.pid]).sort()).toEqual((await processes.list()).map((i) => [i.name, i.pid]).sort());
    // PM2's own messages go through the logger, not to stdout.
    expect(lines.some((l) => l.includes('"component":"pm2"') && l.includes('starting in -fork mode-'))).toBe(true);

    await processes.stopAll();
    expect(await processes.list()).toEqual([]);
    // `pm2 kill` before anyone watches for it is not lost: the watch, set later, hears of it at once.
    const kill = await execa('node', [PM2_BIN, 'kill'], { env: { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: home.pm2Home }, extendEnv: false, reject: false, timeout: 10_000 });
    expect(kill.exitCode).toBe(0);
    const reasons: string[] = [];
    await processes.onPm2Exit((reason) => reasons.push(reason));
    await waitFor('the kill reported', () => reasons.length > 0);
    expect(reasons).toEqual(['pm2 kill']);
    await processes.close();
    expect(processes.connected).toBe(false);
    for (const name of ['pm2.pid', 'rpc.sock', 'pub.sock']) expect(existsSync(path.join(home.pm2Home, name))).toBe(false);
    // console is PM2's no longer.
    expect(console.log).toBe(consoleLog);
  });
});
