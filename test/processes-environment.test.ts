import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { execa } from 'execa';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { buildPlan, planPath } from '../src/instances/plan.js';
import { ProcessManager } from '../src/instances/processes.js';
import { INSTANCE_PM2_FIELDS_KEPT } from '../src/instances/pm2-host.js';
import { ECOSYSTEM_FILE } from '../src/runner.js';
import { executedEnvironment, freePorts, PM2_BIN, pm2HomeForThisFile, tinyServerMain, waitFor } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';
import { hostedGod } from './helpers/pm2.js';
import { detection, gpuList } from './helpers/gpus.js';
import { PYTHON } from './helpers/python.js';

// The interpreter itself: a version manager's shim on PATH (pyenv's is a bash script) would change the environment on its way.
const INTERPRETER = execFileSync(PYTHON, ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).trim();

// Its own file, so its own worker: PM2 reads PM2_HOME once, and is hosted at most once per process.
const home = pm2HomeForThisFile('gpu-boot-pm2env-');

/** Node adds these itself for the IPC channel PM2 opens to every app it forks. */
const NODE_IPC_VARIABLES = ['NODE_CHANNEL_FD', 'NODE_CHANNEL_SERIALIZATION_MODE'];

interface RecordOfApp {
  pm2_env: { name: string; pm_id: number; env: Record<string, unknown>; [field: string]: unknown };
}

describe('the environment of the instances PM2 forks in gpu-boot', () => {
  it('is their app\'s own environment, name and pm_id, at the start and after PM2 restarts a crashed one; PM2\'s record stays whole; other apps (a Node one of the same name, one started from inside an instance) get PM2\'s fields and their own names', async () => {
    const workspace = path.join(home.root, 'workspace');
    await mkdir(path.join(workspace, 'ComfyUI'), { recursive: true });
    await writeFile(path.join(workspace, 'ComfyUI', 'main.py'), tinyServerMain([]));
    const port = await freePorts(1);
    const config = loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: '1', COMFYUI_PYTHON: INTERPRETER, COMFYUI_LISTEN: '127.0.0.1', COMFYUI_PORT_START: String(port), COMFYUI_RESTART_DELAY_MS: '100' });
    await mkdir(config.stateDir, { recursive: true });
    await writeFile(planPath(config.stateDir), JSON.stringify(buildPlan(config, detection(1, { gpus: gpuList(1, 'Mock', 1024), source: 'mock' }), ['HF_TOKEN'])));
    const { logger } = captureLogger();
    const processes = new ProcessManager(logger, ECOSYSTEM_FILE);
    await processes.connect();
    expect(processes.hostsPm2).toBe(true);
    const God = hostedGod<{ clusters_db: Record<string, RecordOfApp | null> }>();
    const recordOf = (name: string) => Object.values(God.clusters_db).find((proc) => proc?.pm2_env.name === name)!.pm2_env;
    try {
      const [instance] = await processes.startFromEcosystem(config.stateDir);
      const record = recordOf('comfyui-gpu0');
      const expected = [...Object.keys(record.env), ...INSTANCE_PM2_FIELDS_KEPT, ...NODE_IPC_VARIABLES].sort();
      const first = await executedEnvironment(instance!.pid, 'PM2_HOME=');
      expect(Object.keys(first).sort()).toEqual(expected);
      // Its own variables, with their values: the plan's (port, device) and PM2_HOME; and its name.
      expect(first).toMatchObject({ COMFYUI_PORT: String(port), CUDA_VISIBLE_DEVICES: '', GPU_DEVICE: 'gpu0', PM2_HOME: home.pm2Home, name: 'comfyui-gpu0', pm_id: String(record.pm_id) });
      // None of PM2's own fields of the record, which PM2 itself still has (pm2 show, its restarts).
      for (const field of ['status', 'pm_exec_path', 'pm_pid_path', 'kill_timeout', 'max_restarts', 'min_uptime', 'exp_backoff_restart_delay', 'treekill', 'vizion', 'created_at']) {
        expect(first).not.toHaveProperty(field);
        expect(record).toHaveProperty(field);
      }
      expect(record.kill_timeout).toBe(config.killTimeoutMs);

      // A crash: PM2 forks it again (its own restart, not gpu-boot's), with the same environment.
      process.kill(instance!.pid, 'SIGKILL');
      const restarted = await waitFor('PM2 restarted the instance', async () => (await processes.list()).find((i) => i.name === 'comfyui-gpu0' && i.pid > 0 && i.pid !== instance!.pid && i.status === 'online'));
      expect(restarted.restarts).toBe(1);
      const second = await executedEnvironment(restarted.pid, 'PM2_HOME=');
      expect(Object.keys(second).sort()).toEqual(expected);
      expect(second.COMFYUI_PORT).toBe(String(port));

      // An app someone starts into this PM2 with its CLI is forked as PM2 forks it: its fields in its environment.
      const other = path.join(home.root, 'other.py');
      await writeFile(other, 'import time\ntime.sleep(60)\n');
      const cli = { env: { PATH: process.env.PATH!, HOME: home.root, PM2_HOME: home.pm2Home }, extendEnv: false } as const;
      await execa('node', [PM2_BIN, 'start', other, '--name', 'someone-else', '--interpreter', INTERPRETER, '--no-autorestart'], cli);
      const otherPid = await waitFor('the other app running', () => {
        const proc = Object.values(God.clusters_db).find((p) => p?.pm2_env.name === 'someone-else') as (RecordOfApp & { process?: { pid?: number } }) | undefined;
        return proc?.process?.pid;
      });
      const foreign = await executedEnvironment(otherPid, 'pm_id=');
      expect(foreign).toHaveProperty('pm_id');
      expect(foreign).toHaveProperty('status');
      await execa('node', [PM2_BIN, 'delete', 'someone-else'], cli);

      // PM2's CLI run from inside an instance (its environment) starts an app under the app's own
      // name: pm_id tells PM2 it is inside one of its apps, so the instance's `name` is not copied.
      await execa('node', [PM2_BIN, 'start', other, '--name', 'from-inside', '--interpreter', INTERPRETER, '--no-autorestart'], { env: first, extendEnv: false });
      await waitFor('the app started from inside', () => Object.values(God.clusters_db).some((p) => p?.pm2_env.name === 'from-inside'));
      expect(Object.values(God.clusters_db).filter((p) => p?.pm2_env.name === 'comfyui-gpu0')).toHaveLength(1);
      await execa('node', [PM2_BIN, 'delete', 'from-inside'], cli);

      // A Node app someone starts under an instance's very name is forked as PM2 forks it (gpu-boot
      // knows its own by PM2's id of the record, not by name): PM2's container for Node needs its fields.
      const nodeApp = path.join(home.root, 'other.js');
      await writeFile(nodeApp, 'setInterval(() => {}, 1000);\n');
      await execa('node', [PM2_BIN, 'start', nodeApp, '--name', 'comfyui-gpu0', '--no-autorestart'], cli);
      const twin = await waitFor('the same-name Node app online', () => {
        const proc = Object.values(God.clusters_db).find((p) => p?.pm2_env.name === 'comfyui-gpu0' && p.pm2_env.pm_id !== record.pm_id) as (RecordOfApp & { process?: { pid?: number } }) | undefined;
        return proc?.pm2_env.status === 'online' && proc.process?.pid ? proc : undefined;
      });
      expect(await executedEnvironment(twin.process!.pid!, 'pm_exec_path=')).toHaveProperty('pm_exec_path', nodeApp);
      await execa('node', [PM2_BIN, 'delete', String(twin.pm2_env.pm_id)], cli);
    } finally {
      await processes.stopAll();
      await processes.close();
    }
  });
});
