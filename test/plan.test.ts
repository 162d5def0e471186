import { existsSync, lstatSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { detection } from './helpers/gpus.js';
import { prepareInstanceFolders, removeInstanceTemp } from '../src/files/instance-folders.js';
import { buildPlan, type Plan } from '../src/instances/plan.js';


describe('buildPlan: folders per instance', () => {
  it('shared output, input and user (the default): only --temp-directory, the instance folder', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), detection(2), []);
    expect(plan.instances[1]!.args).toEqual(['--listen', '0.0.0.0', '--port', '8189', '--temp-directory', '/w/instances/comfyui-gpu1']);
    expect(plan.instances[1]!.folders).toEqual({
      root: '/w/instances/comfyui-gpu1',
      temp: { path: '/w/instances/comfyui-gpu1/temp', shared: false },
      output: { path: '/w/ComfyUI/output', shared: true },
      input: { path: '/w/ComfyUI/input', shared: true },
      user: { path: '/w/ComfyUI/user', shared: true },
    });
  });

  it('COMFYUI_SHARED_FOLDERS=none: every folder its own, each passed with its flag', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', GPU_MODE: 'mock', NUM_GPUS: '2', COMFYUI_SHARED_FOLDERS: 'none', COMFY_ARGS: '--lowvram' }), detection(2), []);
    const own = '/w/instances/comfyui-gpu0';
    expect(plan.instances[0]!.args).toEqual([
      '--listen', '0.0.0.0', '--port', '8188', '--cpu',
      '--temp-directory', own, '--output-directory', `${own}/output`, '--input-directory', `${own}/input`, '--user-directory', `${own}/user`,
      '--lowvram',
    ]);
    expect(Object.values(plan.instances[0]!.folders).filter((f) => typeof f === 'object' && f.shared)).toEqual([]);
    expect(plan.instances[1]!.folders.user.path).toBe('/w/instances/comfyui-gpu1/user');
  });

  it('some shared: only the others get a flag', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', COMFYUI_PATH: '/opt/ComfyUI', COMFYUI_SHARED_FOLDERS: 'input,user' }), detection(1), []);
    expect(plan.instances[0]!.args.slice(4)).toEqual(['--temp-directory', '/w/instances/comfyui-gpu0', '--output-directory', '/w/instances/comfyui-gpu0/output']);
    expect(plan.instances[0]!.folders.input).toEqual({ path: '/opt/ComfyUI/input', shared: true });
  });

  it('refuses flags gpu-boot sets in COMFY_ARGS, with the port range problem, all at once (78)', () => {
    const config = loadConfig({ COMFYUI_PORT_START: '65535', COMFY_ARGS: '--port 1 --listen=:: --temp-directory /t --output-directory /o --base-directory /b' });
    const error = (() => {
      try {
        buildPlan(config, detection(2), []);
      } catch (e) {
        return e as { exitCode: number; problems: string[] };
      }
      return undefined;
    })();
    expect(error?.exitCode).toBe(78);
    expect(error?.problems.map((p) => p.split(' ').slice(0, 2).join(' '))).toEqual([
      'COMFY_ARGS: --port',
      'COMFY_ARGS: --listen',
      'COMFY_ARGS: --temp-directory',
      'COMFY_ARGS: --output-directory',
      'COMFY_ARGS: --base-directory',
      'COMFYUI_PORT_START: 2',
    ]);
  });
});

let root: string | undefined;
afterEach(async () => {
  if (root) await rm(root, { recursive: true, force: true });
  root = undefined;
});

async function workspacePlan(env: Record<string, string> = {}, gpus = 2): Promise<{ workspace: string; plan: Plan }> {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-folders-'));
  const workspace = path.join(root, 'workspace');
  await mkdir(workspace);
  return { workspace, plan: buildPlan(loadConfig({ WORKSPACE_PATH: workspace, GPU_MODE: 'mock', NUM_GPUS: String(gpus), ...env }), detection(gpus), []) };
}

const isRoot = process.geteuid?.() === 0;

describe('prepareInstanceFolders', () => {
  it('creates each instance folder, its temp and its own folders (like mkdir -p, again and again)', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'input' });
    prepareInstanceFolders(plan);
    prepareInstanceFolders(plan);
    for (const name of ['comfyui-gpu0', 'comfyui-gpu1']) {
      expect((await readdir(path.join(workspace, 'instances', name))).sort()).toEqual(['output', 'temp', 'user']);
    }
    // Shared folders are ComfyUI's, in COMFYUI_PATH: not created here.
    expect(existsSync(path.join(workspace, 'ComfyUI'))).toBe(false);
  });

  it.skipIf(!isRoot)('as root, hands every folder it makes to the instances\' user', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'none' }, 1);
    // An existing folder is handed over too.
    await mkdir(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'), { recursive: true });
    prepareInstanceFolders(plan, { uid: 65534, gid: 65533 });
    for (const dir of ['instances', 'instances/comfyui-gpu0', 'instances/comfyui-gpu0/temp', 'instances/comfyui-gpu0/output', 'instances/comfyui-gpu0/input', 'instances/comfyui-gpu0/user']) {
      const s = await stat(path.join(workspace, dir));
      expect([s.uid, s.gid], dir).toEqual([65534, 65533]);
    }
    expect((await stat(workspace)).uid).toBe(0);
  });

  it('refuses a link (or a file) where a folder belongs, naming it, and never writes through it', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'none' }, 1);
    const elsewhere = path.join(root!, 'elsewhere');
    await mkdir(elsewhere);
    await mkdir(path.join(workspace, 'instances'));
    await symlink(elsewhere, path.join(workspace, 'instances', 'comfyui-gpu0'));
    expect(() => prepareInstanceFolders(plan, isRoot ? { uid: 65534, gid: 65534 } : undefined)).toThrow(
      expect.objectContaining({ exitCode: 78, message: `instance folder ${path.join(workspace, 'instances', 'comfyui-gpu0')} is a link: gpu-boot never follows one there; remove it` }),
    );
    expect(await readdir(elsewhere)).toEqual([]);
    expect((await stat(elsewhere)).uid).toBe(process.geteuid?.());

    await rm(path.join(workspace, 'instances', 'comfyui-gpu0'));
    await mkdir(path.join(workspace, 'instances', 'comfyui-gpu0'));
    await symlink(elsewhere, path.join(workspace, 'instances', 'comfyui-gpu0', 'user'));
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 78, message: expect.stringContaining('comfyui-gpu0/user is a link') }));
    expect(await readdir(elsewhere)).toEqual([]);

    await rm(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'));
    await writeFile(path.join(workspace, 'instances', 'comfyui-gpu0', 'user'), '');
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 78, message: expect.stringContaining('comfyui-gpu0/user is not a folder') }));
  });

  it('a workspace that cannot be written: exit 73 naming the folder', async () => {
    const { workspace, plan } = await workspacePlan({}, 1);
    await rm(workspace, { recursive: true });
    expect(() => prepareInstanceFolders(plan)).toThrow(expect.objectContaining({ exitCode: 73, message: expect.stringContaining(workspace) }));
  });
});

describe('removeInstanceTemp', () => {
  it('empties and removes each instance\'s temp, and nothing else', async () => {
    const { workspace, plan } = await workspacePlan({ COMFYUI_SHARED_FOLDERS: 'output,input' });
    prepareInstanceFolders(plan);
    const own = path.join(workspace, 'instances', 'comfyui-gpu0');
    await mkdir(path.join(own, 'temp', 'sub', 'deeper'), { recursive: true });
    await writeFile(path.join(own, 'temp', 'ComfyUI_temp_00001_.png'), 'x');
    await writeFile(path.join(own, 'temp', 'sub', 'deeper', 'f'), 'x');
    await writeFile(path.join(own, 'user', 'settings.json'), '{}');
    await writeFile(path.join(own, 'keep'), 'x');
    const result = removeInstanceTemp(plan);
    expect(result).toEqual({ removed: 6, problems: [] });
    expect((await readdir(own)).sort()).toEqual(['keep', 'user']);
    expect(await readdir(path.join(own, 'user'))).toEqual(['settings.json']);
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu1', 'temp'))).toBe(false);
    // Nothing left to remove, or never prepared: nothing to say.
    expect(removeInstanceTemp(plan)).toEqual({ removed: 0, problems: [] });
  });

  it('only the instances named', async () => {
    const { workspace, plan } = await workspacePlan();
    prepareInstanceFolders(plan);
    expect(removeInstanceTemp(plan, ['comfyui-gpu1'])).toEqual({ removed: 1, problems: [] });
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu0', 'temp'))).toBe(true);
    expect(existsSync(path.join(workspace, 'instances', 'comfyui-gpu1', 'temp'))).toBe(false);
  });

  it('never follows a link: temp as a link is refused and left; links inside temp are unlinked, not their targets', async () => {
    const { workspace, plan } = await workspacePlan({}, 1);
    prepareInstanceFolders(plan);
    const elsewhere = path.join(root!, 'elsewhere');
    await mkdir(elsewhere);
    await writeFile(path.join(elsewhere, 'precious'), 'x');
    const temp = path.join(workspace, 'instances', 'comfyui-gpu0', 'temp');
    await symlink(elsewhere, path.join(temp, 'to-folder'));
    await symlink(path.join(elsewhere, 'precious'), path.join(temp, 'to-file'));
    expect(removeInstanceTemp(plan)).toEqual({ removed: 3, problems: [] });
    expect(await readdir(elsewhere)).toEqual(['precious']);

    await symlink(elsewhere, temp);
    expect(removeInstanceTemp(plan)).toEqual({ removed: 0, problems: [`${temp}: a link, never followed; left in place`] });
    expect(lstatSync(temp).isSymbolicLink()).toBe(true);
    expect(await readdir(elsewhere)).toEqual(['precious']);

    // A link higher up is not followed either.
    await rm(path.join(workspace, 'instances'), { recursive: true });
    await mkdir(path.join(elsewhere, 'comfyui-gpu0', 'temp'), { recursive: true });
    await symlink(elsewhere, path.join(workspace, 'instances'));
    expect(removeInstanceTemp(plan).problems).toEqual([`${path.join(workspace, 'instances')}: a link, never followed; left in place`]);
    expect(existsSync(path.join(elsewhere, 'comfyui-gpu0', 'temp'))).toBe(true);
  });
});

describe('buildPlan: placement on devices and slots', () => {
  const H200 = 'NVIDIA H200';
  const mig = (profiles: string[]) => profiles.map((profile, index) => ({ index, profile, uuid: `MIG-${index}`, memoryMiB: Number(/\.(\d+)gb/.exec(profile)![1]) * 1024 }));

  it('an H200 in 7 MIG slices: one instance per MIG device, pinned by its UUID, with the slice memory', () => {
    const gpus = [{ index: 0, name: H200, memoryMiB: 143771, uuid: 'GPU-a', migMode: 'enabled' as const, migDevices: mig(Array(7).fill('1g.18gb')) }];
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), detection(1, { gpus }), []);
    expect(plan.instances.map((i) => [i.name, i.port, i.env.CUDA_VISIBLE_DEVICES, i.env.GPU_MODEL, i.env.GPU_MEMORY_GB, i.slot])).toEqual(
      Array.from({ length: 7 }, (_, k) => [`comfyui-gpu0-mig${k}`, 8188 + k, `MIG-${k}`, 'NVIDIA H200 MIG 1g.18gb', '18', 0]),
    );
    expect(plan.instances[3]!.device).toEqual({ id: 'gpu0-mig3', kind: 'mig', gpuIndex: 0, migIndex: 3, profile: '1g.18gb', uuid: 'MIG-3', name: 'NVIDIA H200 MIG 1g.18gb', memoryMiB: 18432 });
    expect(plan.instances.every((i) => !i.args.includes('--cuda-device') && !i.args.includes('--reserve-vram'))).toBe(true);
    expect(plan.layout).toEqual({ instancesPerGpu: 1, devices: 7, minInstanceMemoryGb: 8, warnings: [] });
  });

  it('a mixed machine: MIG devices of GPU 0, then GPU 1 whole, ports in that order', () => {
    const gpus = [
      { index: 0, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, uuid: 'GPU-a', migMode: 'enabled' as const, migDevices: mig(['3g.40gb', '2g.20gb']) },
      { index: 1, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, uuid: 'GPU-b', migMode: 'disabled' as const, migDevices: [] },
    ];
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), detection(2, { gpus }), []);
    expect(plan.instances.map((i) => [i.name, i.port, i.gpuIndex, i.env.CUDA_VISIBLE_DEVICES, i.env.GPU_MEMORY_GB])).toEqual([
      ['comfyui-gpu0-mig0', 8188, 0, 'MIG-0', '40'],
      ['comfyui-gpu0-mig1', 8189, 0, 'MIG-1', '20'],
      ['comfyui-gpu1', 8190, 1, 'GPU-b', '79.6'],
    ]);
  });

  it('INSTANCES_PER_GPU=2 on two H200s: names and ports by device and slot, sharing the device (no --reserve-vram, no --cuda-device)', () => {
    const gpus = detection(2, { gpus: [0, 1].map((index) => ({ index, name: H200, memoryMiB: 143771, uuid: `GPU-${index}`, migMode: 'disabled' as const, migDevices: [] })) });
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', INSTANCES_PER_GPU: '2', COMFY_ARGS: '--lowvram' }), gpus, []);
    expect(plan.instances.map((i) => [i.name, i.port, i.slot, i.env.CUDA_VISIBLE_DEVICES, i.env.GPU_SLOT])).toEqual([
      ['comfyui-gpu0-s0', 8188, 0, 'GPU-0', '0'],
      ['comfyui-gpu0-s1', 8189, 1, 'GPU-0', '1'],
      ['comfyui-gpu1-s0', 8190, 0, 'GPU-1', '0'],
      ['comfyui-gpu1-s1', 8191, 1, 'GPU-1', '1'],
    ]);
    expect(plan.instances[1]!.args).toEqual(['--listen', '0.0.0.0', '--port', '8189', '--temp-directory', '/w/instances/comfyui-gpu0-s1', '--lowvram']);
    expect(plan.layout).toEqual({ instancesPerGpu: 2, devices: 2, minInstanceMemoryGb: 8, warnings: [] });
    const three = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', INSTANCES_PER_GPU: '3' }), gpus, []);
    expect(three.instances.map((i) => i.name).slice(0, 4)).toEqual(['comfyui-gpu0-s0', 'comfyui-gpu0-s1', 'comfyui-gpu0-s2', 'comfyui-gpu1-s0']);
    expect(three.instances.map((i) => i.port)).toEqual([8188, 8189, 8190, 8191, 8192, 8193]);
  });

  it('the floor compares the unrounded share, and is not checked in mock mode', () => {
    // An RTX 4090: 24564 MiB is 23.99 GiB, 7.996 GiB a third: below 8.
    const rtx = detection(1, { gpus: [{ index: 0, name: 'NVIDIA GeForce RTX 4090', memoryMiB: 24564, uuid: 'GPU-r', migMode: 'unsupported' as const, migDevices: [] }] });
    expect(() => buildPlan(loadConfig({ WORKSPACE_PATH: '/w', INSTANCES_PER_GPU: '3' }), rtx, [])).toThrow(
      expect.objectContaining({ problems: ['INSTANCES_PER_GPU=3: gpu0 (NVIDIA GeForce RTX 4090, 24 GiB) leaves 7.9 GiB per instance, below MIN_INSTANCE_MEMORY_GB=8; run fewer instances per device, or lower the floor'] }),
    );
    const mock = detection(1, { gpus: [{ index: 0, name: 'Mock GPU', memoryMiB: 24576, uuid: 'MOCK-0000', migMode: 'unsupported' as const, migDevices: [] }], source: 'mock' });
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w', GPU_MODE: 'mock', INSTANCES_PER_GPU: '4' }), mock, []);
    expect(plan.instances.map((i) => [i.name, i.args.includes('--cpu'), i.env.CUDA_VISIBLE_DEVICES])).toEqual([0, 1, 2, 3].map((s) => [`comfyui-gpu0-s${s}`, true, '']));
    expect(plan.layout.warnings).toEqual([]);
  });

  it('GPUs found by systeminformation (no UUID) are pinned by index, in PCI bus order', () => {
    const found = detection(2, { gpus: [0, 1].map((index) => ({ index, name: 'NVIDIA L4', memoryMiB: 23034, uuid: '', migMode: 'unsupported' as const, migDevices: [] })), source: 'systeminformation' });
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), found, []);
    expect(plan.instances.map((i) => [i.name, i.env.CUDA_VISIBLE_DEVICES, i.env.CUDA_DEVICE_ORDER])).toEqual([
      ['comfyui-gpu0', '0', 'PCI_BUS_ID'],
      ['comfyui-gpu1', '1', 'PCI_BUS_ID'],
    ]);
  });

  it('a layout below MIN_INSTANCE_MEMORY_GB: refused (78) with several per device, a warning with one; 0 turns it off', () => {
    const small = [{ index: 0, name: 'NVIDIA A100-SXM4-40GB', memoryMiB: 40960, uuid: 'GPU-a', migMode: 'enabled' as const, migDevices: mig(['1g.5gb', '3g.20gb']) }];
    const gpus = detection(1, { gpus: small });
    let caught: unknown;
    try {
      buildPlan(loadConfig({ WORKSPACE_PATH: '/w', INSTANCES_PER_GPU: '2' }), gpus, []);
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({
      exitCode: 78,
      // The 3g.20gb device leaves 10 GiB per instance: above the floor, not named.
      problems: ['INSTANCES_PER_GPU=2: gpu0-mig0 (NVIDIA A100-SXM4-40GB MIG 1g.5gb, 5 GiB) leaves 2.5 GiB per instance, below MIN_INSTANCE_MEMORY_GB=8; run fewer instances per device, or lower the floor'],
    });
    const one = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), gpus, []);
    expect(one.instances.map((i) => i.name)).toEqual(['comfyui-gpu0-mig0', 'comfyui-gpu0-mig1']);
    expect(one.layout.warnings).toEqual(['gpu0-mig0 (NVIDIA A100-SXM4-40GB MIG 1g.5gb, 5 GiB) has less than MIN_INSTANCE_MEMORY_GB=8 GiB for its one instance; large models may not fit']);
    expect(buildPlan(loadConfig({ WORKSPACE_PATH: '/w', INSTANCES_PER_GPU: '2', MIN_INSTANCE_MEMORY_GB: '0' }), gpus, []).instances).toHaveLength(4);
  });

  it('CUDA_VISIBLE_DEVICES=1,3 of 8: two instances, named for their GPUs, on the first two ports', () => {
    const plan = buildPlan(loadConfig({ WORKSPACE_PATH: '/w' }), detection(8, { cudaVisibleDevices: '3,1' }), []);
    expect(plan.instances.map((i) => [i.name, i.port, i.gpuIndex, i.env.CUDA_VISIBLE_DEVICES])).toEqual([
      ['comfyui-gpu1', 8188, 1, 'GPU-1'],
      ['comfyui-gpu3', 8189, 3, 'GPU-3'],
    ]);
  });
});
