import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { SecretMasker } from '../src/log.js';
import { buildPlan, planPath } from '../src/instances/plan.js';
import { ProcessManager } from '../src/instances/processes.js';
import { BootState, requiredNodesFailed } from '../src/health/state.js';
import { ECOSYSTEM_FILE } from '../src/runner.js';
import { freePorts, pm2HomeForThisFile, tinyServerMain, waitFor } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';
import { detection, gpuList } from './helpers/gpus.js';
import { PYTHON } from './helpers/python.js';

// One PM2_HOME for this file: the pm2 module reads it once, when it is first imported.
const home = pm2HomeForThisFile('gpu-boot-forensics-');

const CANARY = 'hf_canaryFORENSICS-5b5b';

/**
 * A ComfyUI stand-in that reads its mode from a file beside it at each start: `nodes` prints
 * startup.log's lines on stderr (a failed node with its traceback, the import-times block), then
 * serves; `argparse` prints unknown-flag.log's usage and error on stderr and exits 2.
 */
async function standIn(comfyui: string): Promise<void> {
  const startup = (await readFile(new URL('./fixtures/comfyui/startup.log', import.meta.url), 'utf8')).replace(
    "Cannot import /workspace/ComfyUI/custom_nodes/broken_node module for custom nodes: No module named 'not_a_real_module_xyz'",
    `Cannot import /workspace/ComfyUI/custom_nodes/broken_node module for custom nodes: bad token ${CANARY}`,
  );
  const beforeStop = startup.slice(0, startup.indexOf('Stopped server'));
  const usage = (await readFile(new URL('./fixtures/comfyui/unknown-flag.log', import.meta.url), 'utf8')).replace(/^rc=\d+\n?/m, '');
  await writeFile(path.join(comfyui, 'startup.txt'), beforeStop);
  await writeFile(path.join(comfyui, 'usage.txt'), usage);
  await writeFile(
    path.join(comfyui, 'main.py'),
    tinyServerMain([
      'here = os.path.dirname(os.path.abspath(__file__))',
      'mode = open(os.path.join(here, "mode")).read().strip()',
      'if mode == "argparse":',
      '    sys.stderr.write(open(os.path.join(here, "usage.txt")).read()); sys.stderr.flush(); sys.exit(2)',
      'sys.stderr.write(open(os.path.join(here, "startup.txt")).read()); sys.stderr.flush()',
    ]),
  );
}

describe('ProcessManager reads what the instances print, with a real PM2', () => {
  it('records nodes, logs a traceback as one error, masks what /status keeps, gives the killing signal; every instance exiting 2 at start fires onCrashLoop once with COMFY_ARGS', async () => {
    const workspace = path.join(home.root, 'workspace');
    const comfyui = path.join(workspace, 'ComfyUI');
    await mkdir(comfyui, { recursive: true });
    await standIn(comfyui);
    await writeFile(path.join(comfyui, 'mode'), 'nodes');
    const port = await freePorts(2);
    const config = loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: '2', COMFYUI_PYTHON: PYTHON, COMFYUI_LISTEN: '127.0.0.1', COMFYUI_PORT_START: String(port), COMFYUI_RESTART_DELAY_MS: '100' });
    const gpus = detection(2, { gpus: gpuList(2, 'Mock', 1024), source: 'mock' });
    await mkdir(config.stateDir, { recursive: true });
    await writeFile(planPath(config.stateDir), JSON.stringify(buildPlan(config, gpus, [])));

    const masker = new SecretMasker();
    masker.add('HF_TOKEN', CANARY);
    const { logger, lines } = captureLogger(masker);
    const state = new BootState();
    state.envNodes = ['broken_node'];
    state.requiredNodes = ['broken_node'];
    const processes = new ProcessManager(logger, ECOSYSTEM_FILE, masker, state);
    const loops: string[] = [];
    processes.onCrashLoop(3, (message) => loops.push(message));
    try {
      await processes.connect();
      await processes.watch();
      const started = await processes.startFromEcosystem(config.stateDir);
      expect(started.map((i) => i.name)).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
      const entries = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);

      // Nodes, per instance.
      await waitFor('both instances imported their nodes', () => ['comfyui-gpu0', 'comfyui-gpu1'].every((n) => state.instanceRecords.get(n)?.nodes.get('secret_probe')?.loaded));
      for (const name of ['comfyui-gpu0', 'comfyui-gpu1']) {
        expect([...state.instanceRecords.get(name)!.nodes]).toEqual([
          ['broken_node', { loaded: false, error: 'bad token [masked:HF_TOKEN]' }],
          ['websocket_image_save.py', { loaded: true }],
          ['secret_probe', { loaded: true }],
        ]);
      }
      expect(requiredNodesFailed(state).map((f) => [f.instance, f.node])).toEqual([['comfyui-gpu0', 'broken_node'], ['comfyui-gpu1', 'broken_node']]);
      // The traceback: one error entry per instance, its frames in a field; the severities kept.
      const tracebacks = entries().filter((e) => e.msg === "ModuleNotFoundError: No module named 'not_a_real_module_xyz'");
      expect(tracebacks).toHaveLength(2);
      expect(tracebacks.every((e) => e.level === 50 && e.node === 'broken_node' && Array.isArray(e.traceback) && (e.traceback as string[]).length === 7)).toBe(true);
      expect(entries().some((e) => e.msg === 'Traceback (most recent call last):')).toBe(false);
      expect(entries().find((e) => e.instance === 'comfyui-gpu0' && typeof e.msg === 'string' && e.msg.includes('(IMPORT FAILED)'))?.level).toBe(50);
      expect(entries().find((e) => e.instance === 'comfyui-gpu0' && e.msg === 'Starting server')?.level).toBe(30);
      // A node that declares env and failed: logged at error level, naming node and instance.
      for (const instance of ['comfyui-gpu0', 'comfyui-gpu1']) {
        expect(entries().filter((e) => e.declaresEnv && e.instance === instance && e.node === 'broken_node' && e.level === 50)).toHaveLength(1);
      }
      // Each relayed line names its instance (and stream) once: a key twice in a JSON line is read differently by different tools.
      const relayed = lines.filter((l) => l.includes('"instance":"comfyui-gpu'));
      expect(relayed.length).toBeGreaterThan(10);
      expect(relayed.filter((l) => l.split('"instance":').length !== 2 || l.split('"stream":').length > 2)).toEqual([]);
      expect(relayed.some((l) => /"hostname":"[^"]*","instance":"comfyui-gpu\d","stream":"std(?:out|err)","msg":/.test(l))).toBe(true);
      expect(lines.join('\n')).not.toContain(CANARY);
      expect(JSON.stringify([...state.instanceRecords.values()].map((r) => ({ ...r, nodes: [...r.nodes] })))).not.toContain(CANARY);

      // A kill by a signal: its exit says which.
      const gpu0 = started.find((i) => i.name === 'comfyui-gpu0')!;
      process.kill(gpu0.pid, 'SIGKILL');
      await waitFor('the kill recorded', () => state.instanceRecords.get('comfyui-gpu0')?.lastExit);
      expect(state.instanceRecords.get('comfyui-gpu0')!.lastExit).toMatchObject({ code: null, signal: 'SIGKILL' });
      expect(entries().some((e) => e.instance === 'comfyui-gpu0' && e.signal === 'SIGKILL' && String(e.msg).includes('exited (SIGKILL); PM2 restarts it'))).toBe(true);
      await waitFor('gpu0 back', async () => (await processes.list()).find((i) => i.name === 'comfyui-gpu0' && i.status === 'online' && i.pid !== gpu0.pid));

      // Now every start fails with argparse's exit 2.
      await writeFile(path.join(comfyui, 'mode'), 'argparse');
      for (const i of await processes.list()) process.kill(i.pid, 'SIGKILL');
      await waitFor('crash loop reported', () => loops.length > 0, 30_000);
      expect(loops).toEqual([
        'every instance (2) exits at start with exit code 2: ComfyUI says "main.py: error: unrecognized arguments: --no-such-flag"; exit code 2 is argparse refusing its arguments: check COMFY_ARGS (3 identical failures of every instance, CRASH_LOOP_LIMIT=3)',
      ]);
      expect(state.crashLoop).toMatchObject({ code: 2, line: 'main.py: error: unrecognized arguments: --no-such-flag', instances: ['comfyui-gpu0', 'comfyui-gpu1'] });
      const findings = entries().filter((e) => typeof e.msg === 'string' && e.msg.startsWith('every instance (2) exits at start'));
      expect(findings).toHaveLength(1);
      expect(findings[0]).toMatchObject({ level: 50, exitCode: 2 });
      for (const name of ['comfyui-gpu0', 'comfyui-gpu1']) {
        const record = state.instanceRecords.get(name)!;
        expect(record.lastExit).toMatchObject({ code: 2, signal: null });
        expect(new Date(record.lastExit!.at).toISOString()).toBe(record.lastExit!.at);
        expect(record.lastOutput.at(-1)).toBe('main.py: error: unrecognized arguments: --no-such-flag');
        expect(record.lastError).toBe('main.py: error: unrecognized arguments: --no-such-flag');
      }
      // argparse's error line is an error; its usage info.
      expect(entries().find((e) => e.msg === 'main.py: error: unrecognized arguments: --no-such-flag')?.level).toBe(50);
      expect(entries().find((e) => typeof e.msg === 'string' && e.msg.startsWith('usage: main.py'))?.level).toBe(30);
      // Once only, however long it loops.
      const rounds = state.crashLoop!.failures;
      await waitFor('another round', () => (state.crashLoop?.failures ?? 0) > rounds, 30_000);
      expect(loops).toHaveLength(1);
    } finally {
      await processes.stopAll();
      await processes.close();
    }
  });
});
