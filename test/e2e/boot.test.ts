import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import dotenv from 'dotenv';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { alive, getJson, makeWorkspace, PM2_BIN, startBoot, type Workspace } from '../helpers/boot.js';

const sha = (value: string) => createHash('sha256').update(value).digest('hex');

// Canary secrets: each must appear only in the .env of the node that declares it.
const AWS_SECRET = 'canary-aws-SECRET-8f3a "quoted" #hash $dollar \\back';
const HF_TOKEN = 'hf_canaryTOKEN7b1e';
const AZURE_KEY = 'canary-azure-KEY-c0ffee==';
const MULTILINE = '-----BEGIN KEY-----\ncanaryLINE1\ncanaryLINE2\n-----END KEY-----';

const MANIFEST = {
  custom_nodes: [
    {
      name: 'emprops_custom_nodes',
      url: 'https://example.invalid/emprops.git',
      env: {
        AWS_SECRET_ACCESS_KEY: '${AWS_SECRET_ACCESS_KEY}',
        AZURE_STORAGE_KEY: '${AZURE_STORAGE_KEY}',
        CLOUD_PROVIDER: '${CLOUD_PROVIDER:-azure}',
        BUCKET: 'models-${STAGE}',
        PEM: '${PEM}',
      },
    },
    { name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } },
    { name: 'missing_node', env: { UNUSED: '${NOT_SET_ANYWHERE}' } },
  ],
};

interface StandInReport {
  pid: number;
  port: number;
  cpu: boolean;
  cudaDevice: number | null;
  env: Record<string, string | null>;
  nodes: Record<string, { envFile: boolean; mode?: string; keys?: string[]; sha256?: Record<string, string> }>;
}

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

async function secretsEnv(w: Workspace): Promise<Record<string, string>> {
  const file = path.join(w.secrets, 'aws');
  await writeFile(file, `${AWS_SECRET}\n`);
  return {
    ...w.env,
    AWS_SECRET_ACCESS_KEY_FILE: file,
    AZURE_STORAGE_KEY_ENCODED: Buffer.from(AZURE_KEY).toString('base64'),
    HF_TOKEN,
    STAGE: 'prod',
    PEM: MULTILINE,
  };
}

describe('start: the whole boot with real PM2', () => {
  it('writes each node its .env before the instances start, runs one instance per GPU, and wipes everything on SIGTERM', async () => {
    ws = await makeWorkspace({ nodes: ['emprops_custom_nodes', 'hf_node'], manifest: MANIFEST, gpus: 2 });
    const env = await secretsEnv(ws);
    const boot = startBoot(['start'], env);
    const ready = await boot.waitForLog((l) => l.phase === 'ready', 'all instances ready');
    // PM2's load is timed from its own start (mock GPUs: the write), not from the boot's.
    const pm2Start = boot.lines.map((l) => JSON.parse(l) as { phase?: string; pm2LoadMs?: unknown }).find((l) => l.phase === 'pm2-start');
    expect(typeof pm2Start?.pm2LoadMs).toBe('number');
    expect(pm2Start!.pm2LoadMs as number).toBeGreaterThan(0);
    expect(pm2Start!.pm2LoadMs as number).toBeLessThan((ready as { bootMs: number }).bootMs);

    // The files: mode 0600, only the declared keys, values exact for both dotenv readers.
    const emprops = ws.envFile('emprops_custom_nodes');
    expect((await stat(emprops)).mode & 0o777).toBe(0o600);
    expect((await stat(ws.envFile('hf_node'))).mode & 0o777).toBe(0o600);
    const text = await readFile(emprops, 'utf8');
    // On tmpfs the content is the keys alone: no comment line for every node's load_dotenv() to parse.
    expect(text.split('\n').filter((line) => line.startsWith('#'))).toEqual([]);
    expect(dotenv.parse(text)).toEqual({
      AWS_SECRET_ACCESS_KEY: AWS_SECRET,
      AZURE_STORAGE_KEY: AZURE_KEY,
      CLOUD_PROVIDER: 'azure',
      BUCKET: 'models-prod',
      PEM: MULTILINE,
    });
    expect(dotenv.parse(await readFile(ws.envFile('hf_node'), 'utf8'))).toEqual({ HF_TOKEN });
    expect(existsSync(ws.envFile('missing_node'))).toBe(false);
    expect(boot.lines.join('\n')).toContain('custom node \\"missing_node\\" is in the manifest but');

    // Each instance: its own port and GPU, and it found the files (read by python-dotenv) when it started.
    const reports = (await Promise.all([0, 1].map((i) => getJson(ws!.portStart + i, '/gpu-boot/nodes')))) as StandInReport[];
    for (const [i, report] of reports.entries()) {
      expect(report.port).toBe(ws.portStart + i);
      expect(report.cpu).toBe(true);
      expect(report.env.GPU_INDEX).toBe(String(i));
      expect(report.env.CUDA_VISIBLE_DEVICES).toBe('');
      const node = report.nodes.emprops_custom_nodes!;
      expect(node.envFile).toBe(true);
      expect(node.mode).toBe('0o600');
      expect(node.sha256).toEqual({
        AWS_SECRET_ACCESS_KEY: sha(AWS_SECRET),
        AZURE_STORAGE_KEY: sha(AZURE_KEY),
        CLOUD_PROVIDER: sha('azure'),
        BUCKET: sha('models-prod'),
        PEM: sha(MULTILINE),
      });
      expect(report.nodes.hf_node!.sha256).toEqual({ HF_TOKEN: sha(HF_TOKEN) });
    }
    expect(reports[0]!.pid).not.toBe(reports[1]!.pid);

    // PM2 with the same PM2_HOME lists the instances; its records hold no secret.
    // `pm2 ls` first: gpu-boot set PM2_HOME up as PM2 does, so the CLI prints no first-run banner.
    const shell = { env: { PATH: env.PATH!, HOME: ws.root, PM2_HOME: ws.pm2Home }, extendEnv: false };
    const ls = await execa('node', [PM2_BIN, 'ls'], shell);
    expect(ls.stdout).not.toContain('Runtime Edition');
    expect(ls.stdout.trimStart()).toMatch(/^┌/);
    expect(ls.stdout).toContain('comfyui-gpu0');
    const jlist = await execa('node', [PM2_BIN, 'jlist'], shell);
    const apps = JSON.parse(jlist.stdout) as Array<{ name: string; pid: number; pm2_env: { status: string; kill_timeout: number; exp_backoff_restart_delay: number } }>;
    expect(apps.map((a) => a.name).sort()).toEqual(['comfyui-gpu0', 'comfyui-gpu1']);
    expect(apps.every((a) => a.pm2_env.status === 'online')).toBe(true);
    expect(apps[0]!.pm2_env.kill_timeout).toBe(3000);
    expect(apps[0]!.pm2_env.exp_backoff_restart_delay).toBe(1000);
    for (const canary of [AWS_SECRET, HF_TOKEN, AZURE_KEY, 'canaryLINE1', 'canary-aws', 'hf_canary']) {
      expect(jlist.stdout).not.toContain(canary);
      expect(boot.lines.join('\n')).not.toContain(canary);
    }
    const instancePids = apps.map((a) => a.pid);
    for (const pid of instancePids) {
      const environ = await readFile(`/proc/${pid}/environ`, 'utf8');
      expect(environ).not.toContain('canary');
      expect(environ).not.toContain('AWS_SECRET_ACCESS_KEY_FILE');
      expect(environ).not.toContain(HF_TOKEN);
    }
    // PM2 runs inside gpu-boot: the pid PM2_HOME names is the boot's own.
    expect(Number.parseInt(await readFile(path.join(ws.pm2Home, 'pm2.pid'), 'utf8'), 10)).toBe(boot.child.pid);

    // SIGTERM: exit 0, no file, no process left.
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(result.exitCode).toBe(0);
    expect(existsSync(emprops)).toBe(false);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
    expect(existsSync(path.join(ws.stateDir, 'written-files.json'))).toBe(false);
    // The plan goes with the boot, and so does the (then empty) state folder.
    expect(existsSync(ws.stateDir)).toBe(false);
    expect((await readdir(path.dirname(emprops))).filter((n) => n.startsWith('.env'))).toEqual([]);
    for (const pid of instancePids) expect(alive(pid)).toBe(false);
    // PM2's pid file and sockets go with the boot.
    for (const name of ['pm2.pid', 'rpc.sock', 'pub.sock']) expect(existsSync(path.join(ws.pm2Home, name))).toBe(false);
    const phases = boot.logs().map((l) => l.phase).filter(Boolean);
    expect(phases).toEqual(['config', 'recover', 'detect', 'secrets', 'write', 'pm2-start', 'ready', 'drain', 'wipe', 'shutdown']);
  });

  it('runs each instance on its own detected GPU with a stand-in nvidia-smi', async () => {
    ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: 2 });
    const env = { ...ws.env, GPU_MODE: 'actual', NUM_GPUS: '4', NVIDIA_SMI_PATH: path.resolve('test/fixtures/nvidia-smi'), FAKE_NVIDIA_SMI_MODE: 'h200x2', HF_TOKEN, COMFY_ARGS: '--preview-method auto --oneapi-device-selector "two words"' };
    const boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const warning = boot.logs().find((l) => typeof l.msg === 'string' && l.msg.startsWith('NUM_GPUS=4'));
    expect(warning?.msg).toBe('NUM_GPUS=4 but 2 GPU(s) are used; using 2');
    const uuids = ['GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d', 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e'];
    for (const i of [0, 1]) {
      const report = (await getJson(ws.portStart + i, '/gpu-boot/nodes')) as StandInReport & { extraArgs: string[]; cudaDevices: Array<{ uuid: string }> };
      // Pinned by UUID; no --cuda-device, which would overwrite it with an index.
      expect(report.cudaDevice).toBeNull();
      expect(report.cpu).toBe(false);
      expect(report.cudaDevices.map((d) => d.uuid)).toEqual([uuids[i]]);
      expect(report.env).toEqual({ CUDA_VISIBLE_DEVICES: uuids[i], CUDA_DEVICE_ORDER: 'PCI_BUS_ID', GPU_INDEX: String(i), GPU_UUID: uuids[i], GPU_DEVICE: `gpu${i}`, GPU_SLOT: '0', GPU_MODEL: 'NVIDIA H200', GPU_MEMORY_GB: '140.4' });
      // After gpu-boot's own flags (its temp folder among them), COMFY_ARGS as given, one word with a space kept whole.
      expect(report.extraArgs).toEqual(['--temp-directory', path.join(ws.workspace, 'instances', `comfyui-gpu${i}`), '--preview-method', 'auto', '--oneapi-device-selector', 'two words']);
    }
    boot.child.kill('SIGINT');
    expect((await boot.child).exitCode).toBe(0);
    expect(existsSync(ws.envFile('hf_node'))).toBe(false);
  });
});
