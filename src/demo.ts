import { cp, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { PACKAGE_ROOT } from './package-root.js';

/**
 * `gpu-boot demo`: the whole boot on a shipped workspace, on any machine. The
 * workspace (a ComfyUI stand-in, sample nodes, a manifest) is copied to a temp
 * folder so the checkout stays clean; fake secrets arrive through each kind of
 * source (a _FILE, an _ENCODED, a plain variable). Variables the user set win.
 */

const DEMO_DIR = `${path.join(PACKAGE_ROOT, 'demo')}${path.sep}`;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host: '0.0.0.0', exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** First block of `count` free ports at or above `from`. */
export async function freePortBlock(from: number, count: number): Promise<number> {
  for (let start = from; start + count - 1 <= 65535; start += 1) {
    let ok = true;
    for (let i = 0; i < count && ok; i += 1) ok = await portFree(start + i);
    if (ok) return start;
  }
  throw new Error(`no ${count} free consecutive ports above ${from}`);
}

/** A python that can import dotenv: the custom nodes need it. */
export async function pythonWithDotenv(candidates: string[]): Promise<string | undefined> {
  for (const python of candidates) {
    const result = await execa(python, ['-c', 'import dotenv'], { reject: false, stdin: 'ignore' });
    if (result.exitCode === 0) return python;
  }
  return undefined;
}

export async function prepareDemo(userEnv: NodeJS.ProcessEnv): Promise<{ env: NodeJS.ProcessEnv; cleanup: () => Promise<void> }> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-demo-'));
  const workspace = path.join(root, 'workspace');
  await cp(path.join(DEMO_DIR, 'workspace'), workspace, { recursive: true });
  await cp(path.join(DEMO_DIR, 'secrets'), path.join(root, 'secrets'), { recursive: true });
  const numGpus = Number.parseInt(userEnv.NUM_GPUS ?? '2', 10) || 2;
  const python = userEnv.COMFYUI_PYTHON ?? (await pythonWithDotenv(['python3', '/usr/bin/python3'])) ?? 'python3';
  const defaults: NodeJS.ProcessEnv = {
    GPU_MODE: 'mock',
    NUM_GPUS: String(numGpus),
    GPU_MODEL: 'Demo GPU (mock)',
    GPU_MEMORY_GB: '24',
    WORKSPACE_PATH: workspace,
    PM2_HOME: path.join(root, 'pm2'),
    COMFYUI_PYTHON: python,
    COMFYUI_LISTEN: '127.0.0.1',
    COMFYUI_PORT_START: userEnv.COMFYUI_PORT_START ?? String(await freePortBlock(8188, numGpus)),
    HEALTH_PORT: userEnv.HEALTH_PORT ?? String(await freePortBlock(9090, 1)),
    HEALTH_BIND: '127.0.0.1',
    // Fake secrets, one per kind of source.
    AWS_ACCESS_KEY_ID: 'AKIADEMONOTAREALKEY0',
    AWS_SECRET_ACCESS_KEY_FILE: path.join(root, 'secrets', 'aws_secret_access_key'),
    AZURE_STORAGE_ACCOUNT: 'demostorageaccount',
    AZURE_STORAGE_KEY_ENCODED: Buffer.from('demo-azure-key==not-real "quoted" #hash $dollar').toString('base64'),
    HF_TOKEN_FILE: path.join(root, 'secrets', 'hf_token'),
    CIVITAI_TOKEN: 'demo-civitai-token-not-real',
  };
  const env: NodeJS.ProcessEnv = { ...defaults };
  for (const [name, value] of Object.entries(userEnv)) if (value !== undefined) env[name] = value;
  // A user-set source for a demo secret replaces the demo's own, so two sources never clash.
  for (const base of ['AWS_SECRET_ACCESS_KEY', 'AZURE_STORAGE_KEY', 'HF_TOKEN', 'AWS_ACCESS_KEY_ID', 'AZURE_STORAGE_ACCOUNT', 'CIVITAI_TOKEN']) {
    const userSources = [base, `${base}_FILE`, `${base}_ENCODED`].filter((n) => userEnv[n]);
    if (userSources.length) for (const n of [base, `${base}_FILE`, `${base}_ENCODED`]) if (!userEnv[n]) delete env[n];
  }
  return { env, cleanup: () => rm(root, { recursive: true, force: true }) };
}
