import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FAKE_NVIDIA_SMI, getJson, makeWorkspace, runBoot, startBoot, type Workspace } from '../helpers/boot.js';

/**
 * Placement end to end: the stand-in nvidia-smi shows a machine (test/fixtures/gpus), gpu-boot starts
 * under real PM2, and each instance's stand-in ComfyUI reports what it actually received: its
 * environment, its arguments, and the device torch would run on (CUDA_VISIBLE_DEVICES applied to what
 * nvidia-smi lists, as CUDA applies it; --cuda-device would have overwritten it).
 */

const FIXTURES = path.resolve('test/fixtures/gpus');
const HF_TOKEN = 'hf_canaryPLACEMENT3c9d';

interface Listed {
  gpus: Array<{ index: number; name: string; uuid: string; memoryMiB: number; mig: Array<{ profile: string; uuid: string }> }>;
}

/** The machine of a fixture, read from the same files the stand-in prints. */
function machine(mode: string): Listed {
  const rows = readFileSync(path.join(FIXTURES, `${mode}.query.csv`), 'utf8').trim().split('\n').map((l) => l.split(', '));
  const gpus: Listed['gpus'] = rows.map((r) => ({ index: Number(r[0]), name: r[1]!, memoryMiB: Number(r[2]), uuid: r[3]!, mig: [] }));
  let current: Listed['gpus'][number] | undefined;
  for (const line of readFileSync(path.join(FIXTURES, `${mode}.L.txt`), 'utf8').split('\n')) {
    const gpu = /^GPU (\d+): /.exec(line);
    if (gpu) current = gpus.find((g) => g.index === Number(gpu[1]));
    const mig = /^\s+MIG (\S+)\s+Device\s+\d+: \(UUID: (MIG-[^)]+)\)$/.exec(line);
    if (mig && current) current.mig.push({ profile: mig[1]!, uuid: mig[2]! });
  }
  return { gpus };
}

interface Report {
  port: number;
  cpu: boolean;
  cudaDevice: number | null;
  env: Record<string, string | null>;
  args: Record<string, unknown>;
  visibleDevices: string | null;
  cudaDevices: Array<{ uuid: string; name: string; memoryMiB: number }>;
  nodes: Record<string, { envFile: boolean; keys?: string[] }>;
}

interface StatusDevice {
  id: string;
  uuid: string;
  used: boolean;
  why: string;
}

interface Status {
  gpus: { devicesBy: string; cudaVisibleDevices: string | null; nvidiaVisibleDevices: { value: string | null; check: string }; devices: StatusDevice[]; unusable: Array<{ gpuIndex: number }> };
  instances: Array<{ name: string; gpu: number; device: string; uuid: string; slot: number; port: number }>;
}

let ws: Workspace | undefined;
afterEach(async () => {
  await ws?.cleanup();
  ws = undefined;
});

async function workspace(instances: number): Promise<Workspace> {
  ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: instances });
  return ws;
}

function gpuEnv(w: Workspace, mode: string, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { ...w.env, GPU_MODE: 'actual', NVIDIA_SMI_PATH: FAKE_NVIDIA_SMI, FAKE_NVIDIA_SMI_MODE: mode, HF_TOKEN, ...extra };
  delete env.NUM_GPUS;
  return env;
}

/** Boot, read every instance's report and /status, stop with SIGINT (exit 0, files wiped). */
async function bootAndReport(w: Workspace, env: Record<string, string>, instances: number) {
  const boot = startBoot(['start'], env);
  await boot.waitForLog((l) => l.phase === 'ready', 'ready', 60_000);
  const reports: Report[] = [];
  for (let i = 0; i < instances; i++) reports.push((await getJson(w.portStart + i, '/gpu-boot/nodes')) as Report);
  const status = (await getJson(w.healthPort, '/status')) as Status;
  const stats = (await getJson(w.portStart, '/system_stats')) as { devices: Array<{ name: string; vram_total: number }> };
  const warnings = boot.logs().filter((l) => l.level === 40).map((l) => String(l.msg));
  boot.child.kill('SIGINT');
  const result = await boot.child;
  expect(result.exitCode).toBe(0);
  expect(existsSync(w.envFile('hf_node'))).toBe(false);
  expect(result.all ?? '').not.toContain(HF_TOKEN);
  return { reports, status, stats, warnings };
}

/** What every pinned instance must have received: its device's UUID, PCI order, no --cuda-device, and torch on that device. */
function expectPinned(report: Report, device: { uuid: string; name: string; memoryMiB: number }, gpuIndex: number, id: string, slot = 0) {
  expect(report.cudaDevice).toBeNull();
  expect(report.cpu).toBe(false);
  expect(report.env).toMatchObject({ CUDA_VISIBLE_DEVICES: device.uuid, CUDA_DEVICE_ORDER: 'PCI_BUS_ID', GPU_INDEX: String(gpuIndex), GPU_UUID: device.uuid, GPU_DEVICE: id, GPU_SLOT: String(slot) });
  expect(report.visibleDevices).toBe(device.uuid);
  expect(report.cudaDevices).toEqual([device]);
  expect(report.env.GPU_MODEL).toBe(device.name);
  expect(report.env.GPU_MEMORY_GB).toBe(String(Math.round((device.memoryMiB / 1024) * 10) / 10));
  expect(report.nodes.hf_node).toMatchObject({ envFile: true, keys: ['HF_TOKEN'] });
}

describe('placement: the devices the platform gives', () => {
  it('8 GPUs restricted to 2 by indices: instances on GPUs 1 and 3 only, pinned by UUID; /status says why', async () => {
    const w = await workspace(2);
    const { gpus } = machine('h100x8');
    const { reports, status } = await bootAndReport(w, gpuEnv(w, 'h100x8', { CUDA_VISIBLE_DEVICES: '3,1' }), 2);
    expectPinned(reports[0]!, { uuid: gpus[1]!.uuid, name: gpus[1]!.name, memoryMiB: 81559 }, 1, 'gpu1');
    expectPinned(reports[1]!, { uuid: gpus[3]!.uuid, name: gpus[3]!.name, memoryMiB: 81559 }, 3, 'gpu3');
    expect(status.instances.map((i) => [i.name, i.gpu, i.device, i.uuid, i.port])).toEqual([
      ['comfyui-gpu1', 1, 'gpu1', gpus[1]!.uuid, w.portStart],
      ['comfyui-gpu3', 3, 'gpu3', gpus[3]!.uuid, w.portStart + 1],
    ]);
    expect(status.gpus.devicesBy).toBe('CUDA_VISIBLE_DEVICES');
    expect(status.gpus.cudaVisibleDevices).toBe('3,1');
    expect(status.gpus.devices.map((d) => [d.id, d.used, d.why])).toEqual(
      gpus.map((g) => [`gpu${g.index}`, g.index === 1 || g.index === 3, g.index === 1 ? 'in CUDA_VISIBLE_DEVICES (as 1)' : g.index === 3 ? 'in CUDA_VISIBLE_DEVICES (as 3)' : 'not in CUDA_VISIBLE_DEVICES']),
    );
  });

  it('8 GPUs restricted to 2 by UUIDs (one whole, one a unique prefix), NVIDIA_VISIBLE_DEVICES=all', async () => {
    const w = await workspace(2);
    const { gpus } = machine('h100x8');
    const env = gpuEnv(w, 'h100x8', { CUDA_VISIBLE_DEVICES: `${gpus[6]!.uuid},${gpus[2]!.uuid.slice(0, -1)}2`, NVIDIA_VISIBLE_DEVICES: 'all' });
    const { reports, status } = await bootAndReport(w, env, 2);
    expectPinned(reports[0]!, { uuid: gpus[2]!.uuid, name: gpus[2]!.name, memoryMiB: 81559 }, 2, 'gpu2');
    expectPinned(reports[1]!, { uuid: gpus[6]!.uuid, name: gpus[6]!.name, memoryMiB: 81559 }, 6, 'gpu6');
    expect(status.gpus.devices.filter((d) => d.used).map((d) => d.id)).toEqual(['gpu2', 'gpu6']);
    expect(status.gpus.nvidiaVisibleDevices).toEqual({ value: 'all', check: 'all: the runtime exposed every GPU of the host; nvidia-smi lists 8 GPU(s)' });
  });

  it('NVIDIA_VISIBLE_DEVICES listing the UUIDs nvidia-smi shows: both GPUs used, the cross-check in /status', async () => {
    const w = await workspace(2);
    const { gpus } = machine('h200x2');
    const listed = `${gpus[1]!.uuid},${gpus[0]!.uuid}`;
    const { reports, status } = await bootAndReport(w, gpuEnv(w, 'h200x2', { NVIDIA_VISIBLE_DEVICES: listed }), 2);
    for (const i of [0, 1]) expectPinned(reports[i]!, { uuid: gpus[i]!.uuid, name: 'NVIDIA H200', memoryMiB: 143771 }, i, `gpu${i}`);
    expect(status.gpus.devicesBy).toBe('all');
    expect(status.gpus.nvidiaVisibleDevices).toEqual({ value: listed, check: `${listed}: matches (2 GPU(s), and every UUID it lists is here)` });
  });

  it('an H200 cut into 7 MIG slices: seven instances, each pinned to its MIG device with the slice memory', async () => {
    const w = await workspace(7);
    const [gpu] = machine('h200-mig7').gpus;
    expect(gpu!.mig).toHaveLength(7);
    const { reports, status, stats } = await bootAndReport(w, gpuEnv(w, 'h200-mig7', { GPU_MODEL: 'H200', GPU_MEMORY_GB: '18' }), 7);
    gpu!.mig.forEach((mig, k) => expectPinned(reports[k]!, { uuid: mig.uuid, name: 'NVIDIA H200 MIG 1g.18gb', memoryMiB: 18432 }, 0, `gpu0-mig${k}`));
    expect(status.instances.map((i) => i.name)).toEqual(Array.from({ length: 7 }, (_, k) => `comfyui-gpu0-mig${k}`));
    // What ComfyUI itself reports of its device: the slice, not the whole card.
    expect(stats.devices[0]).toMatchObject({ name: 'cuda:0 NVIDIA H200 MIG 1g.18gb : cudaMallocAsync', vram_total: 18432 * 1024 ** 2 });
  });

  it('a mixed machine: the MIG devices of GPU 0, GPU 1 whole, GPU 2 (MIG mode, no device) left out with a warning', async () => {
    const w = await workspace(5);
    const { gpus } = machine('mig-mixed');
    const { reports, status, warnings } = await bootAndReport(w, gpuEnv(w, 'mig-mixed'), 5);
    const profiles = gpus[0]!.mig;
    profiles.forEach((mig, k) => expectPinned(reports[k]!, { uuid: mig.uuid, name: `NVIDIA H100 80GB HBM3 MIG ${mig.profile}`, memoryMiB: Number(/\.(\d+)gb/.exec(mig.profile)![1]) * 1024 }, 0, `gpu0-mig${k}`));
    expectPinned(reports[4]!, { uuid: gpus[1]!.uuid, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559 }, 1, 'gpu1');
    expect(status.instances.map((i) => i.name)).toEqual(['comfyui-gpu0-mig0', 'comfyui-gpu0-mig1', 'comfyui-gpu0-mig2', 'comfyui-gpu0-mig3', 'comfyui-gpu1']);
    expect(status.gpus.unusable.map((u) => u.gpuIndex)).toEqual([2]);
    expect(warnings).toContain(`GPU 2 (NVIDIA H100 80GB HBM3, ${gpus[2]!.uuid}) is in MIG mode with no MIG device: CUDA cannot use it (create MIG devices, or turn MIG mode off); it gets no instance`);
  });

  it('two instances per GPU: names and ports by device and slot, both slots on the same UUID, sharing its memory', async () => {
    const w = await workspace(4);
    const { gpus } = machine('h200x2');
    const { reports, status } = await bootAndReport(w, gpuEnv(w, 'h200x2', { INSTANCES_PER_GPU: '2' }), 4);
    const expected = [
      ['comfyui-gpu0-s0', 0, 0],
      ['comfyui-gpu0-s1', 0, 1],
      ['comfyui-gpu1-s0', 1, 0],
      ['comfyui-gpu1-s1', 1, 1],
    ] as const;
    expected.forEach(([name, gpu, slot], i) => {
      expectPinned(reports[i]!, { uuid: gpus[gpu]!.uuid, name: 'NVIDIA H200', memoryMiB: 143771 }, gpu, `gpu${gpu}`, slot);
      // They share the device's memory: ComfyUI sees what the others hold; nothing is reserved twice.
      expect(reports[i]!.args.reserve_vram).toBeNull();
      expect(reports[i]!.port).toBe(w.portStart + i);
      expect(status.instances[i]).toMatchObject({ name, gpu, device: `gpu${gpu}`, slot, port: w.portStart + i });
    });
  });
});

describe('placement: what does not fit is refused (78) before anything is written', () => {
  const refused = async (mode: string, extra: Record<string, string>, problem: string | RegExp) => {
    const w = await workspace(2);
    const result = await runBoot(['start'], gpuEnv(w, mode, extra));
    expect(result.exitCode).toBe(78);
    const output = `${result.stdout}\n${result.stderr}`;
    if (typeof problem === 'string') expect(output).toContain(problem);
    else expect(output).toMatch(problem);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
    expect(existsSync(path.join(w.stateDir, 'plan.json'))).toBe(false);
    await w.cleanup();
    ws = undefined;
  };

  it('CUDA_VISIBLE_DEVICES naming a GPU nvidia-smi does not list', async () => {
    await refused('h200x2', { CUDA_VISIBLE_DEVICES: '0,2' }, 'CUDA_VISIBLE_DEVICES names 2, which nvidia-smi does not list (it lists: 0 (GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d), 1 (GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e))');
  });

  it('CUDA_VISIBLE_DEVICES empty (CUDA would see no GPU) or not a device at all', async () => {
    await refused('h200x2', { CUDA_VISIBLE_DEVICES: '' }, 'CUDA_VISIBLE_DEVICES is set but empty: CUDA would see no GPU');
    await refused('h200x2', { CUDA_VISIBLE_DEVICES: '-1' }, 'CUDA_VISIBLE_DEVICES: "-1" is neither a GPU index nor a GPU-/MIG- UUID');
  });

  it('NVIDIA_VISIBLE_DEVICES that does not match what nvidia-smi shows: a UUID not here, a count that differs', async () => {
    await refused('h200x2', { NVIDIA_VISIBLE_DEVICES: 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d,GPU-00000000-0000-4000-8000-000000000000' }, 'NVIDIA_VISIBLE_DEVICES lists GPU-00000000-0000-4000-8000-000000000000, which nvidia-smi does not list');
    await refused('h200x2', { NVIDIA_VISIBLE_DEVICES: '0,1,2,3' }, 'NVIDIA_VISIBLE_DEVICES names 4 GPU(s) but nvidia-smi lists 2 GPU(s)');
  });

  it('INSTANCES_PER_GPU out of range, and a layout below the memory floor', async () => {
    await refused('h200x2', { INSTANCES_PER_GPU: '0' }, 'INSTANCES_PER_GPU: must be at least 1');
    await refused('h200-mig7', { INSTANCES_PER_GPU: '3' }, 'INSTANCES_PER_GPU=3: gpu0-mig0 (NVIDIA H200 MIG 1g.18gb, 18 GiB) leaves 6 GiB per instance, below MIN_INSTANCE_MEMORY_GB=8');
  });
});

describe('placement: detect and plan show the layout', () => {
  it('detect says which devices are used and why; plan lists each instance with its device, slot and port', async () => {
    const w = await workspace(2);
    const env = gpuEnv(w, 'mig-mixed', { CUDA_VISIBLE_DEVICES: '1,MIG-7c1e0001', INSTANCES_PER_GPU: '2' });
    const detect = await runBoot(['detect'], env);
    expect(detect.exitCode).toBe(0);
    expect(detect.stdout).toContain('    gpu0-mig1: MIG 2g.20gb, 20480 MiB, MIG-7c1e0001-5d3a-5b8e-a1f2-0c9d8e7f6a01: used (in CUDA_VISIBLE_DEVICES (as MIG-7c1e0001))');
    expect(detect.stdout).toContain('    gpu0-mig0: MIG 3g.40gb, 40960 MiB, MIG-7c1e0000-5d3a-5b8e-a1f2-0c9d8e7f6a00: not used (not in CUDA_VISIBLE_DEVICES)');
    expect(detect.stdout).toContain('    gpu1: whole GPU: used (in CUDA_VISIBLE_DEVICES (as 1))');
    expect(detect.stdout).toContain('    not used: in MIG mode with no MIG device');
    expect(detect.stdout).toContain('2 of 5 device(s) used: gpu0-mig1, gpu1');
    const plan = await runBoot(['plan'], env);
    expect(plan.exitCode).toBe(0);
    const parsed = JSON.parse(plan.stdout) as { layout: unknown; instances: Array<{ name: string; port: number; slot: number; device: { id: string; uuid: string; profile: string | null } }> };
    expect(parsed.layout).toEqual({ instancesPerGpu: 2, devices: 2, minInstanceMemoryGb: 8, warnings: [] });
    expect(parsed.instances.map((i) => [i.name, i.port - w.portStart, i.slot, i.device.id, i.device.profile])).toEqual([
      ['comfyui-gpu0-mig1-s0', 0, 0, 'gpu0-mig1', '2g.20gb'],
      ['comfyui-gpu0-mig1-s1', 1, 1, 'gpu0-mig1', '2g.20gb'],
      ['comfyui-gpu1-s0', 2, 0, 'gpu1', null],
      ['comfyui-gpu1-s1', 3, 1, 'gpu1', null],
    ]);
    expect(plan.stdout).not.toContain(HF_TOKEN);
  });
});
