import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { endBoot, freePorts, makeWorkspace, runBoot, startBoot, waitFor, type Boot, type Workspace } from '../helpers/boot.js';

const TOKEN = 'hf_canarySTATUS-5c5c';
let ws: Workspace | undefined;
let boot: Boot | undefined;
afterEach(async () => {
  await endBoot(boot, 'SIGTERM');
  boot = undefined;
  await ws?.cleanup();
  ws = undefined;
});

const manifest = {
  custom_nodes: [
    { name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } },
    { name: 'broken_node' },
  ],
};

/** The workspace's broken_node fails to import as a real node can (a missing module). */
async function breakNode(w: Workspace): Promise<void> {
  await writeFile(path.join(w.nodes, 'broken_node', '__init__.py'), 'import not_a_module_status_test\n');
}

describe('gpu-boot status', () => {
  it('prints GPUs, instances, nodes, rotation and phases from the health server, exit 0 when ready; --json gives the same as /ready and /status; no secret', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node', 'broken_node'], manifest, gpus: 2 });
    await breakNode(ws);
    boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 30_000);
    // Node imports are read from the instances' output: wait until both reported broken_node.
    const base = `http://127.0.0.1:${ws.healthPort}`;
    await waitFor('imports reported', async () => {
      const s = (await (await fetch(`${base}/status`)).json()) as { instances: Array<{ nodes: unknown[] }> };
      return s.instances.every((i) => i.nodes.length >= 2);
    });

    const table = await runBoot(['status'], ws.env);
    expect(table.exitCode).toBe(0);
    const lines = table.stdout.split('\n');
    expect(lines[0]).toMatch(new RegExp(`^gpu-boot at http://127\\.0\\.0\\.1:${ws.healthPort}: running, READY \\(2 of 2 instance\\(s\\) ready, 2 required\\), up \\d+ s$`));
    const section = (name: string) => lines.slice(lines.indexOf(name) + 1, lines.indexOf('', lines.indexOf(name)));
    expect(section('GPUs')[0]).toMatch(/^ {2}DEVICE +GPU +MODEL +MEMORY +UUID +USED$/);
    expect(section('GPUs').slice(1).map((l) => l.trim().split(/\s{2,}/))).toEqual([
      ['gpu0', '0', 'Mock GPU', '24 GiB', 'MOCK-0000', 'yes'],
      ['gpu1', '1', 'Mock GPU', '24 GiB', 'MOCK-0001', 'yes'],
    ]);
    expect(section('Instances').slice(1).map((l) => l.trim().split(/\s{2,}/))).toEqual([
      ['comfyui-gpu0', 'gpu0', 'online', String(ws.portStart), 'yes', '0', '-'],
      ['comfyui-gpu1', 'gpu1', 'online', String(ws.portStart + 1), 'yes', '0', '-'],
    ]);
    for (const row of section('Nodes').slice(1)) {
      expect(row).toMatch(/^ {2}comfyui-gpu[01] +1: hf_node +broken_node \(No module named 'not_a_module_status_test'\)$/);
    }
    expect(section('Rotation')).toEqual(['  0 ok, 0 failed; none yet']);
    expect(lines[lines.indexOf('Phases') + 1]).toMatch(/^ {2}config [\d.]+ ms, recover [\d.]+ ms, detect [\d.]+ ms, secrets [\d.]+ ms, write [\d.]+ ms, pm2-start [\d.]+ ms, ready [\d.]+ ms$/);
    // Nothing of the status command on stderr but nothing at all: it only reads.
    expect(table.stderr).toBe('');

    const json = await runBoot(['status', '--json'], ws.env);
    expect(json.exitCode).toBe(0);
    const parsed = JSON.parse(json.stdout) as { url: string; ready: unknown; status: { instances: Array<{ name: string }>; phase: string } };
    expect(parsed.url).toBe(`http://127.0.0.1:${ws.healthPort}`);
    expect(parsed.ready).toEqual({ ready: true, reason: 'all instances answer', instances: { 'comfyui-gpu0': true, 'comfyui-gpu1': true }, counts: { ready: 2, total: 2, required: 2 } });
    expect(parsed.status.phase).toBe('running');
    expect(parsed.status.instances.map((i) => i.name)).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
    for (const out of [table.stdout, json.stdout]) expect(out).not.toContain(TOKEN);
  });

  it('exits 1 when the container is not ready, saying why and the failing instance\'s last exit; 69 when no boot answers; 78 with the server off', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node', 'broken_node'], manifest, gpus: 2 });
    // comfyui-gpu1 fails at start as a CUDA error does, and PM2 restarts it.
    const failDir = path.join(ws.root, 'fail');
    await mkdir(failDir);
    await writeFile(path.join(failDir, String(ws.portStart + 1)), '');
    boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, STANDIN_FAIL_FILE: path.join(failDir, '{port}'), READY_TIMEOUT_MS: '2000', RESTART_LIMIT: '0' });
    await boot.waitForLog((l) => l.phase === 'ready' && l.level === 40, 'not ready logged', 30_000);
    const result = await waitFor('a restart counted', async () => {
      const r = await runBoot(['status'], ws!.env);
      return /comfyui-gpu1 .* exit 1 at /.test(r.stdout) ? r : undefined;
    });
    expect(result.exitCode).toBe(1);
    const lines = result.stdout.split('\n');
    expect(lines[0]).toMatch(/: running, NOT READY \(1 of 2 instance\(s\) ready, 2 required\), up \d+ s$/);
    expect(lines[1]).toMatch(/^ {2}why: /);
    const gpu1 = lines.find((l) => l.trimStart().startsWith('comfyui-gpu1 '))!.trim().split(/\s{2,}/);
    expect(gpu1.slice(0, 4)).toEqual(['comfyui-gpu1', 'gpu1', expect.stringMatching(/^(online|launching|errored|waiting restart)$/), String(ws.portStart + 1)]);
    expect(gpu1[4]).toMatch(/^no/);
    expect(Number(gpu1[5])).toBeGreaterThanOrEqual(1);
    expect(gpu1[6]).toMatch(/^exit 1 at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: .*CUDA error: an illegal memory access was encountered/);
    expect((await runBoot(['status', '--json'], ws.env)).exitCode).toBe(1);

    const port = await freePorts(1);
    const nobody = await runBoot(['status'], { ...ws.env, HEALTH_PORT: String(port) });
    expect(nobody.exitCode).toBe(69);
    expect(nobody.stdout).toBe('');
    expect(nobody.stderr).toContain(`gpu-boot: error: no gpu-boot answers at http://127.0.0.1:${port} (ECONNREFUSED): is it running, on HEALTH_PORT=${port}?`);
    const off = await runBoot(['status'], { ...ws.env, HEALTH_PORT: '0' });
    expect(off.exitCode).toBe(78);
    expect(off.stderr).toContain('HEALTH_PORT: 0 turns the health server off, and status reads it');
  });
});
