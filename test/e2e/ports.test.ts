import { existsSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { portHolders } from '../../src/instances/ports.js';
import { getJson, makeWorkspace, runBoot, startBoot, waitFor, type Workspace } from '../helpers/boot.js';

const MANIFEST = { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] };
const TOKEN = 'canaryPORT-token-77aa';

let ws: Workspace | undefined;
const servers: net.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  await ws?.cleanup();
  ws = undefined;
});

/** Another process's HTTP server on the port, as a stray ComfyUI or any web server would be. */
async function squat(port: number): Promise<void> {
  const { createServer } = await import('node:http');
  const server = createServer((_req, res) => res.end('{"not":"comfyui"}'));
  servers.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => {
      servers.splice(servers.indexOf(server), 1);
      reject(error);
    });
    server.listen({ port, host: '127.0.0.1' }, resolve);
  });
}

describe('instance ports', () => {
  it('a port another process holds is refused before anything is written (78), naming the port and the process', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    await squat(ws.portStart + 1);
    const holder = portHolders(ws.portStart + 1)[0]!;
    for (const command of ['start', 'check']) {
      const result = await runBoot([command], { ...ws.env, HF_TOKEN: TOKEN });
      expect(result.exitCode).toBe(78);
      expect(`${result.stdout}${result.stderr}`).toContain(
        `COMFYUI_PORT_START: port ${ws.portStart + 1} (for comfyui-gpu1) is in use by pid ${process.pid} (${holder.command}); stop it, or choose another COMFYUI_PORT_START`,
      );
    }
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    expect(existsSync(path.join(ws.stateDir, 'plan.json'))).toBe(false);
  });

  it('a port taken while its instance is down shows in /ready (503) and /status, and the answer of the squatter is not taken for the instance', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN: TOKEN, COMFYUI_RESTART_DELAY_MS: '3000', CRASH_LOOP_LIMIT: '0' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
    const pid = (boot.logs().find((l) => l.phase === 'pm2-start')!.instances as Array<{ pid: number }>)[0]!.pid;
    const ready = async () => {
      const response = await fetch(`http://127.0.0.1:${ws!.healthPort}/ready`);
      return { status: response.status, body: (await response.json()) as { reason: string } };
    };
    expect((await ready()).status).toBe(200);
    process.kill(pid, 'SIGKILL');
    // In PM2's restart delay the port is free: another process takes it.
    await waitFor('the port free', async () => {
      try {
        await squat(ws!.portStart);
        return true;
      } catch {
        return false;
      }
    });
    const taken = await waitFor('/ready 503 naming the holder', async () => {
      const r = await ready();
      return r.status === 503 && r.body.reason.includes(`port ${ws!.portStart} of comfyui-gpu0 is held by pid ${process.pid}`) ? r : undefined;
    });
    expect(taken.body.reason).toContain(`is held by pid ${process.pid}`);
    const status = (await getJson(ws.healthPort, '/status')) as { instances: Array<{ portOwner: { owner: string; heldBy?: string } }> };
    expect(status.instances[0]!.portOwner.owner).toBe('other');
    expect(status.instances[0]!.portOwner.heldBy).toContain(`pid ${process.pid}`);
    // The squatter leaves: the instance gets its port back and /ready says 200 again.
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
    await waitFor('/ready 200 again', async () => (await ready()).status === 200, 60_000);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});
