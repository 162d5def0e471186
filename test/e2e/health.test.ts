import { afterEach, describe, expect, it } from 'vitest';
import { makeWorkspace, startBoot, tinyServerMain, waitFor, type Workspace } from '../helpers/boot.js';

const TOKEN = 'hf_canaryHEALTH-7a7a';
let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

describe('health endpoints', () => {
  it('/ready is 503 until every instance answers, then 200; /health, /status and /metrics tell the rest and no secret', async () => {
    // Instances that take a second before they listen, as ComfyUI does while loading.
    ws = await makeWorkspace({
      nodes: ['hf_node'],
      manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}', REGION: '${REGION:-eu}' } }] },
      gpus: 2,
      mainPy: tinyServerMain(['time.sleep(1.0)']),
    });
    const base = `http://127.0.0.1:${ws.healthPort}`;
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN });
    const early = await waitFor('health server up', () => fetch(`${base}/ready`).catch(() => undefined), 20_000);
    expect(early.status).toBe(503);
    expect(((await early.json()) as { ready: boolean; reason: string }).ready).toBe(false);
    expect((await fetch(`${base}/health`)).status).toBe(200);

    const ready = await waitFor('ready 200', async () => {
      const r = await fetch(`${base}/ready?probe=$(touch%20/tmp/x)`);
      return r.status === 200 ? r : undefined;
    });
    expect(await ready.json()).toEqual({ ready: true, reason: 'all instances answer', instances: { 'comfyui-gpu0': true, 'comfyui-gpu1': true }, counts: { ready: 2, total: 2, required: 2 } });

    await boot.waitForLog((l) => l.phase === 'ready', 'ready logged');
    const status = (await (await fetch(`${base}/status`)).json()) as {
      phase: string;
      phases: Array<{ name: string }>;
      gpus: { count: number; devices: Array<{ id: string; uuid: string; used: boolean; why: string }> };
      instances: Array<{ name: string; gpu: number; port: number; pid: number; state: string; restarts: number; uptimeSeconds: number }>;
      nodes: Array<{ name: string; keys: string[] }>;
      rotation: { ok: number; failed: number; last: null };
      lastError: null;
    };
    expect(status.phase).toBe('running');
    expect(status.phases.map((p) => p.name)).toEqual(['config', 'recover', 'detect', 'secrets', 'write', 'pm2-start', 'ready']);
    expect(status.gpus.count).toBe(2);
    expect(status.instances.map((i) => [i.name, i.gpu, i.port, i.state])).toEqual([
      ['comfyui-gpu0', 0, ws.portStart, 'online'],
      ['comfyui-gpu1', 1, ws.portStart + 1, 'online'],
    ]);
    expect(status.gpus.devices.map((d) => [d.id, d.uuid, d.used, d.why])).toEqual([
      ['gpu0', 'MOCK-0000', true, 'a mock GPU (GPU_MODE=mock): instances run with --cpu'],
      ['gpu1', 'MOCK-0001', true, 'a mock GPU (GPU_MODE=mock): instances run with --cpu'],
    ]);
    expect(status.instances.every((i) => i.pid > 0 && i.restarts === 0 && i.uptimeSeconds >= 0)).toBe(true);
    expect(status.nodes).toEqual([{ name: 'hf_node', file: ws.envFile('hf_node'), keys: ['HF_TOKEN', 'REGION'] }]);
    expect(status.rotation).toEqual({ ok: 0, failed: 0, rotating: null, last: null });

    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.headers.get('content-type')).toContain('text/plain');
    const text = await metrics.text();
    expect(text).toContain('gpu_boot_ready 1');
    expect(text).toContain('gpu_boot_gpus 2');
    expect(text).toContain('gpu_boot_instance_restarts_total{app="comfyui-gpu1",gpu="1",uuid="MOCK-0001",device="gpu1"} 0');
    expect(text).toContain('# TYPE gpu_boot_instance_restarts_total counter');
    expect(text).toContain('gpu_boot_instance_up{app="comfyui-gpu0",gpu="0",uuid="MOCK-0000",device="gpu0"} 1');
    expect(text).toContain('gpu_boot_live 1');
    expect(text).toContain('gpu_boot_degraded 0');
    expect(text).not.toContain('process_process');
    // Mock GPUs: each used, under its mock UUID.
    expect(text).toContain('gpu_boot_device_used{device="gpu0",uuid="MOCK-0000",gpu="0"} 1');
    expect(text).toContain('gpu_boot_device_used{device="gpu1",uuid="MOCK-0001",gpu="1"} 1');
    expect(text).toMatch(/gpu_boot_phase_duration_seconds\{phase="pm2-start"\} [\d.]+/);

    // Read-only, and nothing else answers.
    expect((await fetch(`${base}/ready`, { method: 'POST' })).status).toBe(405);
    expect((await fetch(`${base}/restart`)).status).toBe(404);

    for (const body of [JSON.stringify(status), text]) expect(body).not.toContain(TOKEN);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('HEALTH_PORT=0 turns it off; a port in use is a configuration error', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 1 });
    const net = await import('node:net');
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(ws!.healthPort, '127.0.0.1', () => r()));
    try {
      const { runBoot } = await import('../helpers/boot.js');
      const busy = await runBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN });
      expect(busy.exitCode).toBe(78);
      expect(busy.stderr).toContain(`HEALTH_PORT: cannot listen on 127.0.0.1:${ws.healthPort} (the port is in use)`);
      const off = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, HEALTH_PORT: '0' });
      await off.waitForLog((l) => l.phase === 'ready', 'ready');
      expect(off.logs().some((l) => typeof l.msg === 'string' && l.msg.startsWith('health server'))).toBe(false);
      off.child.kill('SIGTERM');
      expect((await off.child).exitCode).toBe(0);
    } finally {
      blocker.close();
    }
  });
});
