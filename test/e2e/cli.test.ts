import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FAKE_NVIDIA_SMI, runBoot } from '../helpers/boot.js';
import { expectNothingWritten, useTwoNodeWorkspace } from '../helpers/two-nodes.js';

const CANARY = 'canary-check-Secret-77';
const workspace = useTwoNodeWorkspace(2);

describe('check', () => {
  it('prints a masked report, exits 0, and writes and starts nothing', async () => {
    const w = await workspace();
    const result = await runBoot(['check'], { ...w.env, LOG_LEVEL: 'warn', AZURE_STORAGE_KEY_ENCODED: Buffer.from(CANARY).toString('base64'), HF_TOKEN: CANARY });
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('gpu-boot check: OK');
    expect(result.stdout).toContain('GPUs (mock): 2 x Mock GPU, 24 GiB each');
    expect(result.stdout).toContain(`  emprops_custom_nodes -> ${w.envFile('emprops_custom_nodes')}`);
    expect(result.stdout).toContain('    AZURE_STORAGE_KEY=******** (from AZURE_STORAGE_KEY)');
    expect(result.stdout).toContain('    CLOUD_PROVIDER=******** (from manifest text or default)');
    expect(result.stdout).toContain('  AZURE_STORAGE_KEY <- AZURE_STORAGE_KEY_ENCODED');
    expect(result.stdout + result.stderr).not.toContain(CANARY);
    expectNothingWritten(w);
  });

  it('--json lists every problem and exits 78', async () => {
    const w = await workspace();
    const result = await runBoot(['check', '--json'], { ...w.env, AZURE_STORAGE_KEY_ENCODED: '@@', HF_TOKEN: CANARY, HF_TOKEN_ENCODED: 'Y2FuYXJ5' });
    expect(result.exitCode).toBe(78);
    const report = JSON.parse(result.stdout) as { ok: boolean; problems: string[] };
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([
      'AZURE_STORAGE_KEY_ENCODED is not valid base64 or base64url (encode it with `base64 -w0`)',
      'HF_TOKEN is set by more than one source: HF_TOKEN_ENCODED, HF_TOKEN; keep exactly one',
    ]);
    expect(result.stdout + result.stderr).not.toContain(CANARY);
    expectNothingWritten(w);
  });

  it('checks what start checks next: COMFY_ARGS, COMFYUI_USER and the port range', async () => {
    const w = await workspace();
    const result = await runBoot(['check'], { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY, COMFY_ARGS: '--foo ; rm x', COMFYUI_USER: 'no-such-user-xyz' });
    expect(result.exitCode).toBe(78);
    expect(result.stdout).toContain('  - COMFY_ARGS: contains shell operators or comments; give plain arguments (quote them as in a shell)');
    expect(result.stdout).toContain('  - COMFYUI_USER: no such user "no-such-user-xyz"');
    const ports = await runBoot(['check'], { ...w.env, HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY, COMFYUI_PORT_START: '65535' });
    expect(ports.exitCode).toBe(78);
    expect(ports.stdout).toContain('  - COMFYUI_PORT_START: 2 instances need ports up to 65536, above 65535');
  });
});

describe('detect', () => {
  it('--json prints only the JSON on stdout, from nvidia-smi', async () => {
    const w = await workspace();
    const result = await runBoot(['detect', '--json'], { ...w.env, GPU_MODE: 'actual', NVIDIA_SMI_PATH: FAKE_NVIDIA_SMI, FAKE_NVIDIA_SMI_MODE: 'h100x1' });
    expect(result.exitCode).toBe(0);
    const detected = JSON.parse(result.stdout) as Record<string, unknown> & { host: { cores: number; memoryGiB: number; cpu: string } };
    expect(detected.host.cores).toBe(os.cpus().length);
    expect(Math.abs(detected.host.memoryGiB - os.totalmem() / 1024 ** 3)).toBeLessThan(0.1);
    delete (detected as Record<string, unknown>).host;
    expect(detected).toEqual({
      count: 1,
      model: 'NVIDIA H100 80GB HBM3',
      memoryGb: 79.6,
      driver: '580.159.04',
      source: 'nvidia-smi',
      gpus: [{ index: 0, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, uuid: 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a', migMode: 'disabled', migDevices: [] }],
      devicesBy: 'all',
      cudaVisibleDevices: null,
      nvidiaVisibleDevices: { value: null, check: 'not set: nothing to cross-check (Docker --gpus, CDI and device plugins need not set it)' },
      devices: [
        {
          id: 'gpu0',
          kind: 'gpu',
          gpu: 0,
          mig: null,
          profile: null,
          uuid: 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a',
          name: 'NVIDIA H100 80GB HBM3',
          memoryMiB: 81559,
          used: true,
          why: 'CUDA_VISIBLE_DEVICES is not set: every device nvidia-smi lists',
        },
      ],
      unusable: [],
      warnings: [],
    });
    // The log line went to stderr.
    expect(result.stderr).toContain('"phase":"detect"');
  });

  it('exits 69 when nvidia-smi fails', async () => {
    const w = await workspace();
    const result = await runBoot(['detect', '--json'], { ...w.env, GPU_MODE: 'actual', NVIDIA_SMI_PATH: FAKE_NVIDIA_SMI, FAKE_NVIDIA_SMI_MODE: 'fail' });
    expect(result.exitCode).toBe(69);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('exit 9');
    expect(result.stderr).toContain('Set GPU_MODE=mock');
  });
});

describe('plan', () => {
  it('prints the PM2 apps with their GPU, port and arguments, and no secret', async () => {
    const w = await workspace();
    const result = await runBoot(['plan'], { ...w.env, LOG_LEVEL: 'warn', HF_TOKEN: CANARY, AZURE_STORAGE_KEY: CANARY });
    expect(result.exitCode).toBe(0);
    const plan = JSON.parse(result.stdout) as { instances: Array<{ name: string; port: number; args: string[]; env: Record<string, string> }>; withheldVariables: string[] };
    expect(plan.instances.map((i) => [i.name, i.port])).toEqual([
      ['comfyui-gpu0', w.portStart],
      ['comfyui-gpu1', w.portStart + 1],
    ]);
    expect(plan.instances[1]!.args).toEqual(['--listen', '127.0.0.1', '--port', String(w.portStart + 1), '--cpu', '--temp-directory', path.join(w.workspace, 'instances', 'comfyui-gpu1')]);
    expect(plan.withheldVariables).toEqual(expect.arrayContaining(['HF_TOKEN', 'HF_TOKEN_FILE', 'HF_TOKEN_ENCODED', 'AZURE_STORAGE_KEY', 'CLOUD_PROVIDER']));
    expect(result.stdout).not.toContain(CANARY);
    expectNothingWritten(w);
  });
});

describe('command line', () => {
  it('--help describes the commands, every setting and the exit codes', async () => {
    const result = await runBoot(['--help'], { PATH: process.env.PATH! });
    expect(result.exitCode).toBe(0);
    for (const word of ['start', 'check', 'detect', 'plan', 'wipe', 'demo', 'status', 'SECRETS_ENV_FILE', 'COMFYUI_PORT_START', 'SHUTDOWN_TIMEOUT_MS', '78 configuration']) {
      expect(result.stdout).toContain(word);
    }
  });

  it.each(['start', 'check', 'detect', 'plan', 'wipe', 'demo', 'install', 'status'])('%s --help answers without running', async (command) => {
    const result = await runBoot([command, '--help'], { PATH: process.env.PATH! });
    expect(result.exitCode).toBe(0);
    expect(result.stdout.split('\n')[0]).toMatch(new RegExp(`^usage: gpu-boot ${command}`));
  });

  it('an unknown command or flag exits 64', async () => {
    const unknown = await runBoot(['launch'], { PATH: process.env.PATH! });
    expect(unknown.exitCode).toBe(64);
    expect(unknown.stderr).toContain('unknown command "launch"');
    const flag = await runBoot(['start', '--fast'], { PATH: process.env.PATH! });
    expect(flag.exitCode).toBe(64);
    expect(flag.stderr).toContain("Unknown option '--fast'");
  });
});
