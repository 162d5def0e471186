import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import dotenv from 'dotenv';
import { afterEach, describe, expect, it } from 'vitest';
import { getJson, makeWorkspace, startBoot, type Boot, type Workspace } from '../helpers/boot.js';

const sha = (value: string) => createHash('sha256').update(value).digest('hex');
const MANIFEST = { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] };
const OLD = 'hf_canaryOLD-1111';
const NEW = 'hf_canaryNEW-2222';

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

interface Report {
  pid: number;
  nodes: Record<string, { sha256?: Record<string, string> }>;
}

async function bootWith(tokenFile: string, extra: Record<string, string> = {}): Promise<Boot> {
  const boot = startBoot(['start'], { ...ws!.env, HF_TOKEN_FILE: tokenFile, ROTATION_DEBOUNCE_MS: '100', ...extra });
  await boot.waitForLog((l) => l.phase === 'ready', 'ready');
  return boot;
}

const fileValue = async () => dotenv.parse(await readFile(ws!.envFile('hf_node'))).HF_TOKEN;
const report = (i: number) => getJson(ws!.portStart + i, '/gpu-boot/nodes') as Promise<Report>;

/** Poll both instances until stopped; record whether at least one answered at each moment. */
function pollCapacity(ports: number[]): { stop: () => Promise<boolean[]> } {
  const samples: boolean[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const answers = await Promise.all(
        ports.map((port) =>
          fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(500) }).then(
            (r) => r.ok,
            () => false,
          ),
        ),
      );
      samples.push(answers.some(Boolean));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return samples;
    },
  };
}

async function expectRolledTo(boot: Boot, value: string, oldPids: number[]): Promise<void> {
  const rotation = await boot.waitForLog((l) => l.phase === 'rotation', 'rotation done', 30_000);
  expect(rotation.variables).toEqual(['HF_TOKEN']);
  expect(rotation.instances).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
  expect(await fileValue()).toBe(value);
  for (const i of [0, 1]) {
    const r = await report(i);
    expect(r.pid).not.toBe(oldPids[i]);
    expect(r.nodes.hf_node!.sha256).toEqual({ HF_TOKEN: sha(value) });
  }
  expect(boot.lines.join('\n')).not.toContain(value);
}

describe('rotation', () => {
  it('a secret file rewritten in place reaches the .env and, one instance at a time, both instances', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const token = path.join(ws.secrets, 'hf_token');
    await writeFile(token, OLD);
    const boot = await bootWith(token);
    const oldPids = [(await report(0)).pid, (await report(1)).pid];
    const capacity = pollCapacity([ws.portStart, ws.portStart + 1]);
    await writeFile(token, `${NEW}\n`);
    await expectRolledTo(boot, NEW, oldPids);
    const samples = await capacity.stop();
    expect(samples.length).toBeGreaterThan(10);
    expect(samples.every(Boolean)).toBe(true);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('a Kubernetes-style ..data folder link swap is picked up', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const dir = path.join(ws.secrets, 'k8s');
    await mkdir(path.join(dir, '..2026_01'), { recursive: true });
    await writeFile(path.join(dir, '..2026_01', 'hf_token'), OLD);
    await symlink('..2026_01', path.join(dir, '..data'));
    await symlink('..data/hf_token', path.join(dir, 'hf_token'));
    const boot = await bootWith(path.join(dir, 'hf_token'));
    const oldPids = [(await report(0)).pid, (await report(1)).pid];
    // What the kubelet does: a new timestamped folder, a new ..data link renamed over the old one.
    await mkdir(path.join(dir, '..2026_02'));
    await writeFile(path.join(dir, '..2026_02', 'hf_token'), NEW);
    await symlink('..2026_02', path.join(dir, '..data_tmp'));
    await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    await expectRolledTo(boot, NEW, oldPids);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('a `current` symlink swapped to a new release folder is picked up', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const base = path.join(ws.secrets, 'app');
    await mkdir(path.join(base, 'releases', 'r1'), { recursive: true });
    await writeFile(path.join(base, 'releases', 'r1', 'hf_token'), OLD);
    await symlink(path.join(base, 'releases', 'r1'), path.join(base, 'current'));
    const boot = await bootWith(path.join(base, 'current', 'hf_token'));
    const oldPids = [(await report(0)).pid, (await report(1)).pid];
    await mkdir(path.join(base, 'releases', 'r2'));
    await writeFile(path.join(base, 'releases', 'r2', 'hf_token'), NEW);
    await symlink(path.join(base, 'releases', 'r2'), path.join(base, 'current.new'));
    await rename(path.join(base, 'current.new'), path.join(base, 'current'));
    await expectRolledTo(boot, NEW, oldPids);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('an invalid new value changes nothing, and /status shows why', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const token = path.join(ws.secrets, 'hf_token');
    await writeFile(token, OLD);
    const boot = await bootWith(token);
    const oldPids = [(await report(0)).pid, (await report(1)).pid];
    await writeFile(token, Buffer.from([0xff, 0xfe, 0x00]));
    const refused = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('rotation refused'), 'refusal');
    expect(refused.problems).toEqual([`HF_TOKEN_FILE: ${token} is not valid UTF-8`]);
    expect(await fileValue()).toBe(OLD);
    expect([(await report(0)).pid, (await report(1)).pid]).toEqual(oldPids);
    const status = (await getJson(ws.healthPort, '/status')) as { lastError: string; rotation: { failed: number; last: { ok: boolean } } };
    expect(status.rotation.failed).toBe(1);
    expect(status.rotation.last.ok).toBe(false);
    expect(status.lastError).toContain('HF_TOKEN_FILE');
    expect(JSON.stringify(status)).not.toContain(OLD);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('ROTATION=off ignores changes and SIGHUP alike', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 1 });
    const token = path.join(ws.secrets, 'hf_token');
    await writeFile(token, OLD);
    const boot = startBoot(['start'], { ...ws.env, HF_TOKEN_FILE: token, ROTATION: 'off' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    await writeFile(token, NEW);
    boot.child.kill('SIGHUP');
    await boot.waitForLog((l) => l.msg === 'ROTATION=off: secret sources are not re-read', 'SIGHUP ignored');
    expect(await fileValue()).toBe(OLD);
    expect(boot.logs().some((l) => l.phase === 'rotation')).toBe(false);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('SIGHUP re-reads at once; ROTATION=files rewrites without restarting', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: MANIFEST, gpus: 2 });
    const token = path.join(ws.secrets, 'hf_token');
    await writeFile(token, OLD);
    // A debounce far longer than the test: only SIGHUP can make the re-read happen in time.
    const boot = await bootWith(token, { ROTATION: 'files', ROTATION_DEBOUNCE_MS: '60000' });
    const oldPids = [(await report(0)).pid, (await report(1)).pid];
    await writeFile(token, NEW);
    boot.child.kill('SIGHUP');
    const rotation = await boot.waitForLog((l) => l.phase === 'rotation', 'rotation');
    expect(rotation.reason).toBe('SIGHUP');
    expect(rotation.instances).toEqual([]);
    expect(await fileValue()).toBe(NEW);
    expect([(await report(0)).pid, (await report(1)).pid]).toEqual(oldPids);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});

describe('a rotation never holds the shutdown', () => {
  it('SIGTERM while a restarted instance does not answer yet: the wait is abandoned, the boot stops within SHUTDOWN_TIMEOUT_MS and wipes', async () => {
    const { tinyServerMain } = await import('../helpers/boot.js');
    // After the rotation the instance comes up but never answers (a node stuck importing).
    ws = await makeWorkspace({
      nodes: ['hf_node'],
      manifest: MANIFEST,
      gpus: 1,
      mainPy: tinyServerMain([`if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'stall')):`, '    time.sleep(3600)']),
    });
    const token = path.join(ws.secrets, 'hf');
    await writeFile(token, `${OLD}\n`);
    const boot = await bootWith(token, { ROTATION_DEBOUNCE_MS: '60000', SHUTDOWN_TIMEOUT_MS: '4000', COMFYUI_KILL_TIMEOUT_MS: '1000' });
    await writeFile(path.join(ws.comfyui, 'stall'), '');
    await writeFile(token, `${NEW}\n`);
    boot.child.kill('SIGHUP');
    // The file is rewritten and the restart begins; it would wait READY_TIMEOUT_MS (10 minutes) for an answer.
    const { waitFor } = await import('../helpers/boot.js');
    await waitFor('the restart under way', async () => ((await getJson(ws!.healthPort, '/status')) as { rotation: { rotating: string | null } }).rotation.rotating === 'comfyui-gpu0');
    const sent = Date.now();
    boot.child.kill('SIGTERM');
    const exit = await boot.child;
    // Generous against a busy machine, and still far below READY_TIMEOUT_MS.
    expect(Date.now() - sent).toBeLessThan(30_000);
    expect(exit.exitCode).toBe(0);
    expect(boot.logs().some((l) => l.phase === 'wipe')).toBe(true);
  });
});
