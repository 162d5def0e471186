import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { buildPlan, planPath } from '../src/instances/plan.js';
import { isAlive, ProcessManager } from '../src/instances/processes.js';
import { ECOSYSTEM_FILE } from '../src/runner.js';
import { freePorts, PM2_BIN, pm2HomeForThisFile, tinyServerMain, waitFor } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';
import { detection, gpuList } from './helpers/gpus.js';
import { PYTHON } from './helpers/python.js';

// Its own file, so its own worker: PM2 reads PM2_HOME once.
const home = pm2HomeForThisFile('gpu-boot-pm2foreign-');

describe('ProcessManager with a PM2 daemon that was already running', () => {
  it('uses it through PM2\'s API (loaded only then): starts, lists, stops and deletes the plan\'s apps there, and leaves the daemon running', async () => {
    const workspace = path.join(home.root, 'workspace');
    await mkdir(path.join(workspace, 'ComfyUI'), { recursive: true });
    await writeFile(path.join(workspace, 'ComfyUI', 'main.py'), tinyServerMain(['print("up", flush=True)']));
    const port = await freePorts(1);
    const config = loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: '1', COMFYUI_PYTHON: PYTHON, COMFYUI_LISTEN: '127.0.0.1', COMFYUI_PORT_START: String(port) });
    await mkdir(config.stateDir, { recursive: true });
    await writeFile(planPath(config.stateDir), JSON.stringify(buildPlan(config, detection(1, { gpus: gpuList(1, 'Mock', 1024), source: 'mock' }), [])));
    // Someone's `pm2` before gpu-boot: its own daemon process on this PM2_HOME.
    const shell = { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: home.pm2Home };
    expect((await execa('node', [PM2_BIN, 'ping'], { env: shell, extendEnv: false })).exitCode).toBe(0);
    const daemonPid = Number(readFileSync(path.join(home.pm2Home, 'pm2.pid'), 'utf8'));
    expect(daemonPid).not.toBe(process.pid);
    expect(isAlive(daemonPid)).toBe(true);

    const { logger, lines } = captureLogger();
    const processes = new ProcessManager(logger, ECOSYSTEM_FILE);
    await processes.connect();
    expect(processes.hostsPm2).toBe(false);
    expect(processes.connected).toBe(true);
    const loaded = Object.keys(createRequire(import.meta.url).cache);
    expect(loaded.some((file) => file.endsWith(path.join('pm2', 'lib', 'API.js')))).toBe(true);
    await processes.watch();
    const started = await processes.startFromEcosystem(config.stateDir);
    expect(started.map((i) => [i.name, i.status])).toEqual([['comfyui-gpu0', 'online']]);
    expect(started[0]!.pid).toBeGreaterThan(0);
    expect(started[0]!.pid).not.toBe(daemonPid);
    // The instance's output comes over the daemon's pub.sock to a bus client here.
    await waitFor('output relayed', () => lines.some((l) => l.includes('"instance":"comfyui-gpu0"') && l.includes('"msg":"up"')));
    await processes.stopOne('comfyui-gpu0');
    expect((await processes.list()).map((i) => [i.name, i.status])).toEqual([['comfyui-gpu0', 'stopped']]);
    await waitFor('stopped', () => !isAlive(started[0]!.pid));
    // A stop on purpose is no crash (PM2 reports its exit twice).
    expect(lines.filter((l) => l.includes('exited; PM2 restarts it'))).toEqual([]);
    await processes.stopAll();
    expect(await processes.list()).toEqual([]);
    await processes.close();
    // Not gpu-boot's: still running, still its pid file.
    expect(isAlive(daemonPid)).toBe(true);
    expect(Number(readFileSync(path.join(home.pm2Home, 'pm2.pid'), 'utf8'))).toBe(daemonPid);
  });
});
