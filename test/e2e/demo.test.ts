import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { alive, freePorts, killPm2, startBoot } from '../helpers/boot.js';

describe('the built-in demo (npm start)', () => {
  it('boots the shipped workspace with fake secrets, answers, and leaves nothing after Ctrl-C', async () => {
    const port = await freePorts(3);
    const boot = startBoot(['demo'], { PATH: process.env.PATH!, HOME: process.env.HOME ?? '/root', COMFYUI_PORT_START: String(port), HEALTH_PORT: String(port + 2) });
    try {
      const ready = await boot.waitForLog((l) => l.phase === 'ready', 'demo ready');
      expect(ready.instances).toBe(2);
      const workspace = boot.logs().find((l) => l.msg === 'gpu-boot starting')!.workspace as string;
      const root = path.dirname(workspace);
      const secrets = boot.logs().find((l) => l.phase === 'secrets')!;
      expect(secrets.variables).toEqual(
        expect.arrayContaining(['AWS_SECRET_ACCESS_KEY <- AWS_SECRET_ACCESS_KEY_FILE', 'AZURE_STORAGE_KEY <- AZURE_STORAGE_KEY_ENCODED', 'CIVITAI_TOKEN <- CIVITAI_TOKEN']),
      );
      expect(secrets.skipped).toEqual(['not_installed_node']);
      const report = (await (await fetch(`http://127.0.0.1:${port + 1}/gpu-boot/nodes`)).json()) as { nodes: Record<string, { keys?: string[] }> };
      expect(report.nodes.emprops_custom_nodes!.keys).toHaveLength(7);
      expect(report.nodes['ComfyUI-Manager']!.keys).toEqual(['CIVITAI_TOKEN', 'HF_TOKEN']);
      // The demo ships a node that fails to import: the log and /status say so, /ready stays 200 (it declares no env).
      expect(boot.logs().some((l) => l.level === 50 && typeof l.msg === 'string' && l.msg.includes('(IMPORT FAILED)') && l.msg.includes('broken_node'))).toBe(true);
      const status = (await (await fetch(`http://127.0.0.1:${port + 2}/status`)).json()) as { instances: Array<{ nodes: Array<{ name: string; loaded: boolean }> }> };
      for (const instance of status.instances) expect(instance.nodes.find((n) => n.name === 'broken_node')?.loaded).toBe(false);
      // Once serving, /object_info tells which nodes' classes the instance actually has.
      const { waitFor } = await import('../helpers/boot.js');
      const classes = await waitFor('classes from /object_info', async () => {
        const s = (await (await fetch(`http://127.0.0.1:${port + 2}/status`)).json()) as { instances: Array<{ nodes: Array<{ name: string; classes?: number }> }> };
        const nodes = s.instances[0]!.nodes;
        return nodes.every((n) => n.classes !== undefined) ? nodes : undefined;
      });
      expect(classes.find((n) => n.name === 'websocket_image_save.py')?.classes).toBe(1);
      expect(classes.find((n) => n.name === 'broken_node')?.classes).toBe(0);
      expect((await fetch(`http://127.0.0.1:${port + 2}/ready`)).status).toBe(200);
      boot.child.kill('SIGINT');
      expect((await boot.child).exitCode).toBe(0);
      expect(existsSync(root)).toBe(false);
      expect(boot.lines.join('\n')).not.toContain('demo-civitai-token-not-real');
    } finally {
      if (boot.child.pid && alive(boot.child.pid)) boot.child.kill('SIGKILL');
      const started = boot.logs().find((l) => l.msg === 'gpu-boot starting');
      if (started) await killPm2(path.join(path.dirname(started.workspace as string), 'pm2'));
    }
  });
});
