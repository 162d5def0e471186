import { existsSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { getJson, makeWorkspace, startBoot, waitFor, type Workspace } from '../helpers/boot.js';

/**
 * The boot against the faithful ComfyUI stand-in (demo/workspace/ComfyUI/main.py, built from
 * shared/fixtures/comfyui): ComfyUI's own output, flags, folders and failures.
 */

const MANIFEST = { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] };
const TOKEN = 'canaryCOMFY-token-51be';

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

interface NodesReport {
  listen: string[];
  folders: { temp: string; output: string; input: string; user: string };
  nodes: Record<string, { loaded?: boolean; error?: string }>;
}

async function brokenNode(w: Workspace): Promise<void> {
  await mkdir(path.join(w.nodes, 'broken_node'));
  await writeFile(path.join(w.nodes, 'broken_node', '__init__.py'), 'import not_a_real_module_xyz\n');
}

describe('the real ComfyUI, as its stand-in behaves', () => {
  it('a node that fails to import: its traceback is one error entry, /status shows it per instance, and /ready stays 200 (it declares no env)', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    await brokenNode(ws);
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const traceback = boot.logs().find((l) => l.instance === 'comfyui-gpu0' && Array.isArray(l.traceback));
    expect(traceback?.level).toBe(50);
    expect(traceback?.msg).toBe("ModuleNotFoundError: No module named 'not_a_real_module_xyz'");
    expect(boot.logs().some((l) => l.instance === 'comfyui-gpu1' && l.level === 50 && typeof l.msg === 'string' && l.msg.includes('(IMPORT FAILED)'))).toBe(true);
    // The stand-in's ordinary lines stay at info level.
    expect(boot.logs().find((l) => l.instance === 'comfyui-gpu0' && l.msg === 'Starting server')?.level).toBe(30);
    const status = (await getJson(ws.healthPort, '/status')) as { instances: Array<{ name: string; nodes: Array<{ name: string; loaded: boolean; error?: string }> }> };
    for (const instance of status.instances) {
      // (`classes` joins them once /object_info has been read.)
      expect(instance.nodes.find((n) => n.name === 'broken_node')).toMatchObject({ name: 'broken_node', loaded: false, error: "No module named 'not_a_real_module_xyz'" });
      expect(instance.nodes.find((n) => n.name === 'hf_node')).toMatchObject({ name: 'hf_node', loaded: true });
      expect(instance.nodes.find((n) => n.name === 'hf_node')).not.toHaveProperty('error');
    }
    expect((await fetch(`http://127.0.0.1:${ws.healthPort}/ready`)).status).toBe(200);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(boot.lines.join('\n')).not.toContain(TOKEN);
  });

  it('each instance has its own temp folder: one instance\'s restart does not empty the other\'s, and both go at the end', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, COMFYUI_RESTART_DELAY_MS: '100' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const report = (i: number) => getJson(ws!.portStart + i, '/gpu-boot/nodes') as Promise<NodesReport & { pid: number }>;
    const [zero, one] = [await report(0), await report(1)];
    expect(zero.folders.temp).toBe(path.join(ws.workspace, 'instances', 'comfyui-gpu0', 'temp'));
    expect(one.folders.temp).toBe(path.join(ws.workspace, 'instances', 'comfyui-gpu1', 'temp'));
    // Output, input and user are shared by default (COMFYUI_SHARED_FOLDERS).
    expect(zero.folders.output).toBe(one.folders.output);
    const work = path.join(zero.folders.temp, 'in-progress.png');
    await writeFile(work, 'half a job');
    process.kill(one.pid, 'SIGKILL');
    await waitFor('comfyui-gpu1 restarted', async () => (await report(1).catch(() => undefined))?.pid !== one.pid && (await report(1).catch(() => undefined)) !== undefined, 60_000);
    expect(existsSync(work)).toBe(true);
    const plan = (await getJson(ws.healthPort, '/status')) as { instances: Array<{ folders: { temp: { path: string; shared: boolean } } }> };
    expect(plan.instances.map((i) => i.folders.temp)).toEqual([
      { path: path.join(ws.workspace, 'instances', 'comfyui-gpu0', 'temp'), shared: false },
      { path: path.join(ws.workspace, 'instances', 'comfyui-gpu1', 'temp'), shared: false },
    ]);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(path.join(ws.workspace, 'instances', 'comfyui-gpu0', 'temp'))).toBe(false);
    expect(existsSync(path.join(ws.workspace, 'instances', 'comfyui-gpu1', 'temp'))).toBe(false);
  });

  it('COMFYUI_LISTEN takes a list: each instance binds every address, and readiness probes one it can reach', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, COMFYUI_LISTEN: '127.0.0.1,::1' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const report = (await getJson(ws.portStart, '/gpu-boot/nodes')) as NodesReport;
    expect(report.listen).toEqual(['127.0.0.1', '::1']);
    const v6 = await fetch(`http://[::1]:${ws.portStart}/system_stats`);
    expect(v6.status).toBe(200);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('where COMFY_ARGS cannot be checked beforehand, ComfyUI\'s own refusal (exit 2) in every instance is one error quoting it and naming COMFY_ARGS, and the boot stops with 78', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    // A cli_args.py gpu-boot cannot read flags from (they are defined indirectly), which ComfyUI still runs.
    await rename(path.join(ws.comfyui, 'comfy', 'cli_args.py'), path.join(ws.comfyui, 'comfy', 'real_cli_args.py'));
    await writeFile(path.join(ws.comfyui, 'comfy', 'cli_args.py'), 'import os\nexec(open(os.path.join(os.path.dirname(__file__), "real_cli_args.py")).read())\n');
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, COMFY_ARGS: '--no-such-flag', COMFYUI_RESTART_DELAY_MS: '100', CRASH_LOOP_LIMIT: '2' });
    const exit = await boot.child;
    expect(exit.exitCode).toBe(78);
    expect(boot.logs().some((l) => typeof l.msg === 'string' && l.msg.startsWith('COMFY_ARGS not validated'))).toBe(true);
    const finding = boot.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith('every instance (2) exits at start with exit code 2'));
    expect(finding?.level).toBe(50);
    expect(finding?.msg).toContain('main.py: error: unrecognized arguments: --no-such-flag');
    expect(finding?.msg).toContain('COMFY_ARGS');
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });
});
