import { afterEach, describe, expect, it } from 'vitest';
import { getJson, makeWorkspace, runBoot, startBoot, tinyServerMain, waitFor, type Workspace } from '../helpers/boot.js';

const TOKEN = 'hf_canaryFORENSICS-e2e-3c3c';
let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

/** Python lines that print, on stderr as ComfyUI does, a failed import of `failed` and a loaded `loaded`. */
function nodeImports(failed: string, loaded: string): string[] {
  const lines = [
    'Traceback (most recent call last):',
    '  File "/workspace/ComfyUI/nodes.py", line 1881, in load_custom_node',
    '    module_spec.loader.exec_module(module)',
    `  File "{root}/custom_nodes/${failed}/__init__.py", line 1, in <module>`,
    '    import not_a_real_module_xyz',
    "ModuleNotFoundError: No module named 'not_a_real_module_xyz'",
    '',
    `Cannot import {root}/custom_nodes/${failed} module for custom nodes: No module named 'not_a_real_module_xyz'`,
    '',
    'Import times for custom nodes:',
    `   0.0 seconds (IMPORT FAILED): {root}/custom_nodes/${failed}`,
    `   0.0 seconds: {root}/custom_nodes/${loaded}`,
    '',
    'Starting server',
    '',
    'To see the GUI go to: http://127.0.0.1:{port}',
  ];
  return [
    'root = os.path.dirname(os.path.abspath(__file__))',
    `port = sys.argv[sys.argv.index("--port") + 1]`,
    `sys.stderr.write(${JSON.stringify(lines.join('\n') + '\n')}.replace("{root}", root).replace("{port}", port))`,
    'sys.stderr.flush()',
  ];
}

describe('what the instances print, in /status, /ready and the log', () => {
  it('a node that declares env and fails to import: logged as an error naming node and instance, /ready 503 naming both, /status per instance nodes, node_loaded metric', async () => {
    ws = await makeWorkspace({
      nodes: ['hf_node', 'plain_node'],
      manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }, { name: 'plain_node' }] },
      gpus: 2,
      mainPy: tinyServerMain(nodeImports('hf_node', 'plain_node')),
    });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready logged');
    await boot.waitForLog((l) => l.declaresEnv === true && l.instance === 'comfyui-gpu1', 'the failed env node logged for gpu1');
    const declared = boot.logs().filter((l) => l.declaresEnv === true);
    expect(declared.map((l) => [l.level, l.instance, l.node])).toEqual(expect.arrayContaining([[50, 'comfyui-gpu0', 'hf_node'], [50, 'comfyui-gpu1', 'hf_node']]));
    expect(declared).toHaveLength(2);
    // The traceback is one error entry per instance, with its frames in a field.
    const tracebacks = boot.logs().filter((l) => l.msg === "ModuleNotFoundError: No module named 'not_a_real_module_xyz'");
    expect(tracebacks.map((l) => [l.level, l.node])).toEqual([[50, 'hf_node'], [50, 'hf_node']]);
    expect(boot.logs().find((l) => l.msg === 'Starting server')?.level).toBe(30);

    // READY_REQUIRES_NODES=env (the default): hf_node declares env and failed, so not ready.
    const ready = await fetch(`http://127.0.0.1:${ws.healthPort}/ready`);
    expect(ready.status).toBe(503);
    const body = (await ready.json()) as { ready: boolean; reason: string; instances: Record<string, boolean>; notReady: Record<string, string> };
    expect(body.reason).toBe("custom node hf_node failed to import in comfyui-gpu0, comfyui-gpu1: No module named 'not_a_real_module_xyz'");
    // Each instance answers, and is not ready: the node its secrets were written for is not loaded in it.
    expect(body.instances).toEqual({ 'comfyui-gpu0': false, 'comfyui-gpu1': false });
    expect(body.notReady).toEqual({
      'comfyui-gpu0': "custom node hf_node failed to import in comfyui-gpu0: No module named 'not_a_real_module_xyz'",
      'comfyui-gpu1': "custom node hf_node failed to import in comfyui-gpu1: No module named 'not_a_real_module_xyz'",
    });

    const status = (await getJson(ws.healthPort, '/status')) as { instances: Array<{ name: string; nodes: unknown; lastExit: unknown; lastOutput: string[] }> };
    for (const instance of status.instances) {
      expect(instance.nodes).toEqual([
        { name: 'hf_node', loaded: false, error: "No module named 'not_a_real_module_xyz'" },
        { name: 'plain_node', loaded: true },
      ]);
      expect(instance.lastExit).toBeNull();
      expect(instance.lastOutput.some((l) => l.startsWith('To see the GUI go to: '))).toBe(true);
    }
    const metrics = await (await fetch(`http://127.0.0.1:${ws.healthPort}/metrics`)).text();
    expect(metrics).toContain('gpu_boot_instance_node_loaded{app="comfyui-gpu1",node="hf_node"} 0');
    expect(metrics).toContain('gpu_boot_instance_node_loaded{app="comfyui-gpu1",node="plain_node"} 1');
    expect(metrics).toContain('gpu_boot_ready 0');
    expect(JSON.stringify(status) + metrics + boot.lines.join('\n')).not.toContain(TOKEN);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('READY_REQUIRES_NODES=none: the same failure leaves /ready at 200', async () => {
    ws = await makeWorkspace({
      nodes: ['hf_node', 'plain_node'],
      manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }, { name: 'plain_node' }] },
      gpus: 1,
      mainPy: tinyServerMain(nodeImports('hf_node', 'plain_node')),
    });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, READY_REQUIRES_NODES: 'none' });
    await boot.waitForLog((l) => l.declaresEnv === true, 'the failed env node logged');
    const ready = await waitFor('ready 200', async () => {
      const r = await fetch(`http://127.0.0.1:${ws!.healthPort}/ready`);
      return r.status === 200 ? r : undefined;
    });
    expect(((await ready.json()) as { ready: boolean }).ready).toBe(true);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('every instance refusing COMFY_ARGS (argparse, exit 2) is one error naming COMFY_ARGS and quoting ComfyUI; after CRASH_LOOP_LIMIT rounds the boot stops with 78', async () => {
    ws = await makeWorkspace({
      nodes: ['hf_node'],
      manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] },
      gpus: 2,
      // Real argparse, as ComfyUI's cli_args.py: an unknown flag is usage plus an error on stderr, exit 2.
      mainPy: tinyServerMain([
        'import argparse',
        'p = argparse.ArgumentParser(prog="main.py")',
        'for flag in ["--listen", "--port", "--cuda-device", "--output-directory", "--input-directory", "--user-directory", "--temp-directory", "--base-directory"]: p.add_argument(flag)',
        'p.add_argument("--cpu", action="store_true")',
        'p.parse_args()',
      ]),
    });
    const result = await runBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, COMFY_ARGS: '--no-such-flag', CRASH_LOOP_LIMIT: '2', COMFYUI_RESTART_DELAY_MS: '100' });
    expect(result.exitCode).toBe(78);
    const logs = result.stdout.split('\n').flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
    const finding = 'every instance (2) exits at start with exit code 2: ComfyUI says "main.py: error: unrecognized arguments: --no-such-flag"; exit code 2 is argparse refusing its arguments: check COMFY_ARGS';
    const findings = logs.filter((l) => l.msg === finding);
    expect(findings).toHaveLength(1);
    expect(findings[0]).toMatchObject({ level: 50, exitCode: 2, instances: ['comfyui-gpu0', 'comfyui-gpu1'] });
    expect(logs.find((l) => l.msg === 'main.py: error: unrecognized arguments: --no-such-flag')?.level).toBe(50);
    expect(result.stdout).not.toContain(TOKEN);
  });
});
