import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BootError } from '../src/errors.js';
import { formatStatus, healthUrl, readStatus, statusExitCode, type StatusResult } from '../src/status.js';

const servers: http.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A loopback server answering each path with the given status and body. */
async function serve(routes: Record<string, [number, string]>): Promise<string> {
  const server = http.createServer((req, res) => {
    const [status, body] = routes[req.url ?? ''] ?? [404, '{"error":"not found"}'];
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(body);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const ESC = '\u001b';
function hostileResult(): StatusResult {
  return {
    url: 'http://127.0.0.1:9090',
    ready: { ready: false, reason: `custom node evil failed to import in comfyui-gpu0: ${ESC}[2J READY`, instances: { 'comfyui-gpu0': false }, notReady: { 'comfyui-gpu0': `${ESC}]0;owned\u0007 down` }, counts: { ready: 0, total: 1, required: 1 } },
    status: {
      phase: 'running',
      uptimeSeconds: 3725,
      phases: [{ name: 'config', ms: 190.3 }],
      gpus: null,
      instances: [
        {
          name: 'comfyui-gpu0',
          gpu: 0,
          device: 'gpu0',
          uuid: 'GPU-0',
          slot: 0,
          port: 8188,
          folders: {
            root: '/workspace/instances/comfyui-gpu0',
            temp: { path: '/workspace/instances/comfyui-gpu0/temp', shared: false },
            output: { path: '/workspace/ComfyUI/output', shared: true },
            input: { path: '/workspace/ComfyUI/input', shared: true },
            user: { path: '/workspace/ComfyUI/user', shared: true },
          },
          pid: 42,
          state: 'online',
          restarts: 2,
          uptimeSeconds: 12,
          portOwner: { owner: 'instance' },
          lastOutput: [],
          nodes: [
            { name: 'ok_node', loaded: true },
            { name: `evil${ESC}[31m`, loaded: false, error: `Exception: ${ESC}[2J${ESC}[Hfake table\u202e` },
          ],
          lastExit: { code: 1, signal: null, at: '2026-12-02T05:00:00.123Z' },
          lastError: `RuntimeError: ${ESC}[2Jgone\r\nnext line`,
          health: null,
        },
      ],
      degraded: { degraded: false, out: [], gpusOut: [] },
      liveness: { live: true, reasons: [] },
      gpuWatchdog: null,
      hungRestarts: 0,
      cutPrompts: [],
      nodes: [{ name: 'hf_node', file: '/workspace/ComfyUI/custom_nodes/hf_node/.env', keys: ['HF_TOKEN'] }],
      requiredNodes: ['hf_node'],
      crashLoop: null,
      rotation: { ok: 1, failed: 0, rotating: null, last: { at: '2026-12-02T04:59:00.000Z', reason: 'SIGHUP', ok: true, ms: 812, variables: ['HF_TOKEN'], files: ['/workspace/ComfyUI/custom_nodes/hf_node/.env'], instances: ['comfyui-gpu0'] } },
      lastError: null,
    },
  };
}

describe('gpu-boot status, the table', () => {
  it('shows the instances\' texts with every control or direction character as ?, columns still aligned, and exits 1 when not ready', () => {
    const text = formatStatus(hostileResult());
    expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e]/);
    const lines = text.split('\n');
    expect(lines[0]).toBe('gpu-boot at http://127.0.0.1:9090: running, NOT READY (0 of 1 instance(s) ready, 1 required), up 1 h 2 min');
    expect(lines[1]).toBe('  why: custom node evil failed to import in comfyui-gpu0: ?[2J READY');
    const instances = lines.slice(lines.indexOf('Instances') + 1, lines.indexOf('', lines.indexOf('Instances')));
    expect(instances[1]).toBe('  comfyui-gpu0  gpu0    online  8188  no: ?]0;owned? down  2         exit 1 at 2026-12-02T05:00:00Z: RuntimeError: ?[2Jgone next line');
    // The header's columns line up with the row's, whatever the cells held.
    expect(instances[0]!.indexOf('PORT')).toBe(instances[1]!.indexOf('8188'));
    const nodes = lines[lines.indexOf('Nodes') + 2];
    expect(nodes).toBe('  comfyui-gpu0  1: ok_node  evil?[31m (Exception: ?[2J?[Hfake table?)');
    expect(lines[lines.indexOf('Rotation') + 1]).toBe('  1 ok, 0 failed; last ok at 2026-12-02T04:59:00Z (SIGHUP): 1 variable(s) changed, 1 instance(s) restarted');
    expect(statusExitCode(hostileResult())).toBe(1);
  });
});

describe('gpu-boot status, reading the server', () => {
  it('reads a wildcard bind on loopback (IPv4 for ::, which Node listens on dual-stack) and refuses HEALTH_PORT=0', () => {
    expect(healthUrl({ healthPort: 9090, healthBind: '0.0.0.0' })).toBe('http://127.0.0.1:9090');
    expect(healthUrl({ healthPort: 9090, healthBind: '::' })).toBe('http://127.0.0.1:9090');
    expect(healthUrl({ healthPort: 9191, healthBind: '::1' })).toBe('http://[::1]:9191');
    expect(healthUrl({ healthPort: 9191, healthBind: '10.0.0.5' })).toBe('http://10.0.0.5:9191');
    expect(() => healthUrl({ healthPort: 0, healthBind: '0.0.0.0' })).toThrow(BootError);
  });

  it('an answer that is not gpu-boot\'s (the boot\'s own 500, an empty object, HTML, another server) is exit 69 naming what answered', async () => {
    const good = JSON.stringify(hostileResult().status);
    const cases: Array<[Record<string, [number, string]>, string]> = [
      [{ '/ready': [500, '{"error":"internal error"}'], '/status': [200, good] }, '/ready (HTTP 500)'],
      [{ '/ready': [200, '{}'], '/status': [200, '{}'] }, '/ready (HTTP 200) and /status (HTTP 200)'],
      [{ '/ready': [200, '<html>hi</html>'], '/status': [500, '{"error":"internal error"}'] }, '/ready (HTTP 200) and /status (HTTP 500)'],
      [{}, '/ready (HTTP 404) and /status (HTTP 404)'],
    ];
    for (const [routes, named] of cases) {
      const base = await serve(routes);
      const error = await readStatus(base, 2000).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BootError);
      expect((error as BootError).exitCode).toBe(69);
      expect((error as BootError).message).toBe(`the server at ${base} answered ${named}, but not as gpu-boot's health server does: another process on HEALTH_PORT, or the boot failed to say (its log tells)`);
    }
    // 503 from /ready is an answer: not ready.
    const base = await serve({ '/ready': [503, JSON.stringify(hostileResult().ready)], '/status': [200, good] });
    const result = await readStatus(base, 2000);
    expect(result.ready.ready).toBe(false);
    expect(statusExitCode(result)).toBe(1);
  });
});
