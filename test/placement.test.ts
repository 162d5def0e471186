import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';
import { attachMigDevices, parseNvidiaSmiCsv, parseNvidiaSmiList, type GpuInfo } from '../src/gpus/nvidia-smi.js';
import {
  checkNvidiaVisible,
  listDevices,
  mockSelection,
  selectDevices,
  type Device,
  type Selection,
  type VisibleSettings,
} from '../src/gpus/placement.js';
import { expectConfigError } from './helpers/errors.js';

const GPUS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'gpus');
const H100 = 'NVIDIA H100 80GB HBM3';
const H200 = 'NVIDIA H200';

/** GPU <i> of h100x8. */
const H100X8 = (i: number): string => `GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5${i}`;
/** GPU <i> of h200x2 (GPU 0 is also h200-mig7's GPU and mixed's GPU 1). */
const H200X2 = (i: number): string => `GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5${i === 0 ? 'd' : 'e'}`;
/** GPU <i> of mig-mixed. */
const MM = (i: number): string => `GPU-6a7b8c9d-1b2d-4c6e-9f0a-3b7c2d1e4f6${i}`;
/** MIG device <i> of h200-mig7, and of GPU 0 of mig-mixed. */
const MIG = (i: number): string => `MIG-7c1e000${i}-5d3a-5b8e-a1f2-0c9d8e7f6a0${i}`;
const MIXED_H100 = 'GPU-5f8e8a3c-1b2d-4c6e-9f0a-3b7c2d1e4f5a';

const ALL = 'CUDA_VISIBLE_DEVICES is not set: every device nvidia-smi lists';
const NOT_NAMED = 'not in CUDA_VISIBLE_DEVICES';
const NVIDIA_NOT_SET = 'not set: nothing to cross-check (Docker --gpus, CDI and device plugins need not set it)';
const NO_MIG = 'in MIG mode with no MIG device: CUDA cannot use it (create MIG devices, or turn MIG mode off)';
const NOT_FIT = 'CUDA_VISIBLE_DEVICES does not fit this machine';
const NVIDIA_MISMATCH = 'NVIDIA_VISIBLE_DEVICES does not match what nvidia-smi lists';
const H100X8_LISTED = Array.from({ length: 8 }, (_, i) => `${i} (${H100X8(i)})`).join(', ');
const MIG_MIXED_LISTED = `0 (${MM(0)}), 1 (${MM(1)}), 2 (${MM(2)}), ${MIG(0)}, ${MIG(1)}, ${MIG(2)}, ${MIG(3)}`;
const MIG2_WARNING = `GPU 2 (${H100}, ${MM(2)}) is ${NO_MIG}; it gets no instance`;

/** A fixture machine's GPUs as detection builds them: the query, with -L's MIG devices for the GPUs in MIG mode. */
function machine(mode: string): GpuInfo[] {
  const { gpus } = parseNvidiaSmiCsv(readFileSync(path.join(GPUS, `${mode}.query.csv`), 'utf8'));
  const byGpu = parseNvidiaSmiList(readFileSync(path.join(GPUS, `${mode}.L.txt`), 'utf8'));
  attachMigDevices(gpus, byGpu);
  return gpus;
}

function select(mode: string, cudaVisibleDevices?: string, nvidiaVisibleDevices?: string): Selection {
  return selectDevices(machine(mode), { cudaVisibleDevices, nvidiaVisibleDevices });
}

/** [id, used, why] of every device. */
function choices(selection: Selection): Array<[string, boolean, string]> {
  return selection.devices.map((d) => [d.id, d.used, d.why]);
}

function usedIds(selection: Selection): string[] {
  return selection.devices.filter((d) => d.used).map((d) => d.id);
}

/** The ConfigError (exit 78) `run` throws. */
const refused = expectConfigError;

function refusedCuda(mode: string, cudaVisibleDevices: string): readonly string[] {
  const error = refused(() => select(mode, cudaVisibleDevices));
  expect(error.message).toBe(NOT_FIT);
  return error.problems;
}

function refusedNvidia(mode: string, nvidiaVisibleDevices: string): readonly string[] {
  const error = refused(() => select(mode, undefined, nvidiaVisibleDevices));
  expect(error.message).toBe(NVIDIA_MISMATCH);
  return error.problems;
}

describe('listDevices', () => {
  it('a machine without MIG: one whole-GPU device per GPU', () => {
    const { devices, unusable } = listDevices(machine('h100x8'));
    expect(devices.map((d) => d.id)).toEqual(['gpu0', 'gpu1', 'gpu2', 'gpu3', 'gpu4', 'gpu5', 'gpu6', 'gpu7']);
    expect(devices[5]).toEqual({
      id: 'gpu5',
      kind: 'gpu',
      gpuIndex: 5,
      gpuUuid: H100X8(5),
      migIndex: null,
      profile: null,
      uuid: H100X8(5),
      name: H100,
      memoryMiB: 81559,
    });
    expect(unusable).toEqual([]);
  });

  it('mig-mixed: the MIG devices of GPU 0, GPU 1 whole, GPU 2 unusable', () => {
    const { devices, unusable } = listDevices(machine('mig-mixed'));
    expect(devices.map((d) => d.id)).toEqual(['gpu0-mig0', 'gpu0-mig1', 'gpu0-mig2', 'gpu0-mig3', 'gpu1']);
    expect(devices[0]).toEqual({
      id: 'gpu0-mig0',
      kind: 'mig',
      gpuIndex: 0,
      gpuUuid: MM(0),
      migIndex: 0,
      profile: '3g.40gb',
      uuid: MIG(0),
      name: `${H100} MIG 3g.40gb`,
      memoryMiB: 40960,
    });
    expect(devices.map((d) => [d.kind, d.profile, d.memoryMiB])).toEqual([
      ['mig', '3g.40gb', 40960],
      ['mig', '2g.20gb', 20480],
      ['mig', '1g.10gb', 10240],
      ['mig', '1g.10gb', 10240],
      ['gpu', null, 81559],
    ]);
    expect(unusable).toEqual([{ gpuIndex: 2, uuid: MM(2), name: H100, why: NO_MIG }]);
  });

  it('orders MIG devices by their index, and ignores MIG devices of a GPU not in MIG mode', () => {
    const mig = (index: number) => ({ index, profile: '1g.10gb', uuid: `MIG-${index}`, memoryMiB: 10240 });
    const gpus: GpuInfo[] = [
      { index: 0, name: H100, memoryMiB: 81559, uuid: 'GPU-a', migMode: 'enabled', migDevices: [mig(2), mig(0), mig(1)] },
      { index: 1, name: H100, memoryMiB: 81559, uuid: 'GPU-b', migMode: 'disabled', migDevices: [mig(9)] },
    ];
    const { devices } = listDevices(gpus);
    expect(devices.map((d: Device) => [d.id, d.uuid])).toEqual([
      ['gpu0-mig0', 'MIG-0'],
      ['gpu0-mig1', 'MIG-1'],
      ['gpu0-mig2', 'MIG-2'],
      ['gpu1', 'GPU-b'],
    ]);
  });
});

describe('selectDevices without CUDA_VISIBLE_DEVICES', () => {
  it('uses every device nvidia-smi lists', () => {
    const selection = select('h100x8');
    expect(selection).toEqual({
      devices: listDevices(machine('h100x8')).devices.map((d) => ({ ...d, used: true, why: ALL })),
      unusable: [],
      by: 'all',
      cudaVisibleDevices: null,
      nvidiaVisibleDevices: null,
      nvidiaCheck: NVIDIA_NOT_SET,
      warnings: [],
    });
    expect(usedIds(selection)).toHaveLength(8);
  });

  it('warns about a GPU in MIG mode with no MIG device, and uses the rest', () => {
    const selection = select('mig-mixed');
    expect(choices(selection)).toEqual([
      ['gpu0-mig0', true, ALL],
      ['gpu0-mig1', true, ALL],
      ['gpu0-mig2', true, ALL],
      ['gpu0-mig3', true, ALL],
      ['gpu1', true, ALL],
    ]);
    expect(selection.unusable).toEqual([{ gpuIndex: 2, uuid: MM(2), name: H100, why: NO_MIG }]);
    expect(selection.warnings).toEqual([MIG2_WARNING]);
  });
});

describe('selectDevices with CUDA_VISIBLE_DEVICES', () => {
  it('"1,3" on h100x8: GPUs 1 and 3 used, the six others not', () => {
    const selection = select('h100x8', '1,3');
    expect(selection.by).toBe('CUDA_VISIBLE_DEVICES');
    expect(selection.cudaVisibleDevices).toBe('1,3');
    expect(selection.nvidiaVisibleDevices).toBeNull();
    expect(selection.warnings).toEqual([]);
    expect(choices(selection)).toEqual([
      ['gpu0', false, NOT_NAMED],
      ['gpu1', true, 'in CUDA_VISIBLE_DEVICES (as 1)'],
      ['gpu2', false, NOT_NAMED],
      ['gpu3', true, 'in CUDA_VISIBLE_DEVICES (as 3)'],
      ['gpu4', false, NOT_NAMED],
      ['gpu5', false, NOT_NAMED],
      ['gpu6', false, NOT_NAMED],
      ['gpu7', false, NOT_NAMED],
    ]);
    expect(selection.devices.filter((d) => d.used).map((d) => d.uuid)).toEqual([H100X8(1), H100X8(3)]);
  });

  it('keeps nvidia-smi\'s order whatever the order of the list, and trims the entries', () => {
    const selection = select('h100x8', ' 3 , 1 ');
    expect(selection.devices.filter((d) => d.used).map((d) => [d.id, d.why])).toEqual([
      ['gpu1', 'in CUDA_VISIBLE_DEVICES (as 1)'],
      ['gpu3', 'in CUDA_VISIBLE_DEVICES (as 3)'],
    ]);
    expect(selection.cudaVisibleDevices).toBe(' 3 , 1 ');
  });

  it('full GPU UUIDs, in any case', () => {
    const selection = select('h100x8', `${H100X8(1)},${H100X8(3)}`);
    expect(selection.devices.filter((d) => d.used).map((d) => [d.id, d.why])).toEqual([
      ['gpu1', `in CUDA_VISIBLE_DEVICES (as ${H100X8(1)})`],
      ['gpu3', `in CUDA_VISIBLE_DEVICES (as ${H100X8(3)})`],
    ]);
    expect(choices(selection).filter(([, used]) => !used).map(([id, , why]) => [id, why])).toEqual(
      [0, 2, 4, 5, 6, 7].map((i) => [`gpu${i}`, NOT_NAMED]),
    );
    const upper = H100X8(2).toUpperCase();
    expect(select('h100x8', upper).devices.filter((d) => d.used).map((d) => [d.id, d.why])).toEqual([
      ['gpu2', `in CUDA_VISIBLE_DEVICES (as ${upper})`],
    ]);
  });

  it('a UUID prefix no other GPU shares, as CUDA takes it', () => {
    // The H100 and the H200 of `mixed` differ from the first character after GPU-.
    expect(choices(select('mixed', 'GPU-9a1b'))).toEqual([
      ['gpu0', false, NOT_NAMED],
      ['gpu1', true, 'in CUDA_VISIBLE_DEVICES (as GPU-9a1b)'],
    ]);
    expect(choices(select('mixed', 'GPU-5f8e8a3c,1'))).toEqual([
      ['gpu0', true, 'in CUDA_VISIBLE_DEVICES (as GPU-5f8e8a3c)'],
      ['gpu1', true, 'in CUDA_VISIBLE_DEVICES (as 1)'],
    ]);
    // On h100x8 the UUIDs differ only in their last character: the shortest unique prefix is the whole UUID.
    expect(usedIds(select('h100x8', H100X8(6)))).toEqual(['gpu6']);
  });

  it('a whole UUID wins over the longer UUIDs it is the start of', () => {
    const gpus: GpuInfo[] = [
      { index: 0, name: H100, memoryMiB: 81559, uuid: 'GPU-ab', migMode: 'disabled', migDevices: [] },
      { index: 1, name: H100, memoryMiB: 81559, uuid: 'GPU-abc', migMode: 'disabled', migDevices: [] },
    ];
    expect(choices(selectDevices(gpus, { cudaVisibleDevices: 'GPU-ab', nvidiaVisibleDevices: undefined }))).toEqual([
      ['gpu0', true, 'in CUDA_VISIBLE_DEVICES (as GPU-ab)'],
      ['gpu1', false, NOT_NAMED],
    ]);
    expect(refused(() => selectDevices(gpus, { cudaVisibleDevices: 'GPU-a', nvidiaVisibleDevices: undefined })).problems).toEqual([
      'CUDA_VISIBLE_DEVICES: GPU-a is the start of 2 UUIDs; give more of it',
    ]);
  });

  it('a GPU in MIG mode named by index or UUID: all its MIG devices', () => {
    const byIndex = select('mig-mixed', '0');
    expect(choices(byIndex)).toEqual([
      ['gpu0-mig0', true, 'its GPU is in CUDA_VISIBLE_DEVICES (as 0)'],
      ['gpu0-mig1', true, 'its GPU is in CUDA_VISIBLE_DEVICES (as 0)'],
      ['gpu0-mig2', true, 'its GPU is in CUDA_VISIBLE_DEVICES (as 0)'],
      ['gpu0-mig3', true, 'its GPU is in CUDA_VISIBLE_DEVICES (as 0)'],
      ['gpu1', false, NOT_NAMED],
    ]);
    // GPU 2 still gets its warning: it is unusable, named or not.
    expect(byIndex.warnings).toEqual([MIG2_WARNING]);
    const byUuid = select('h200-mig7', H200X2(0));
    expect(choices(byUuid)).toEqual(
      Array.from({ length: 7 }, (_, i): [string, boolean, string] => [`gpu0-mig${i}`, true, `its GPU is in CUDA_VISIBLE_DEVICES (as ${H200X2(0)})`]),
    );
  });

  it('a MIG UUID: that one MIG device', () => {
    const selection = select('h200-mig7', MIG(3));
    expect(usedIds(selection)).toEqual(['gpu0-mig3']);
    expect(selection.devices[3]).toMatchObject({ id: 'gpu0-mig3', uuid: MIG(3), used: true, why: `in CUDA_VISIBLE_DEVICES (as ${MIG(3)})` });
    expect(choices(selection).filter(([, used]) => !used).map(([id, , why]) => [id, why])).toEqual(
      [0, 1, 2, 4, 5, 6].map((i) => [`gpu0-mig${i}`, NOT_NAMED]),
    );
    // A unique MIG prefix, any case; a MIG device and a whole GPU together.
    expect(usedIds(select('h200-mig7', 'MIG-7C1E0005'))).toEqual(['gpu0-mig5']);
    expect(choices(select('mig-mixed', `${MIG(1)},1`))).toEqual([
      ['gpu0-mig0', false, NOT_NAMED],
      ['gpu0-mig1', true, `in CUDA_VISIBLE_DEVICES (as ${MIG(1)})`],
      ['gpu0-mig2', false, NOT_NAMED],
      ['gpu0-mig3', false, NOT_NAMED],
      ['gpu1', true, 'in CUDA_VISIBLE_DEVICES (as 1)'],
    ]);
  });

  it('the legacy MIG-GPU-<uuid>/<gi>/<ci> UUIDs of older drivers', () => {
    const gpu = 'GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c';
    const byGpu = parseNvidiaSmiList(
      [
        `GPU 0: NVIDIA A100-SXM4-40GB (UUID: ${gpu})`,
        `  MIG 3g.20gb Device 0: (UUID: MIG-${gpu}/1/0)`,
        `  MIG 3g.20gb Device 1: (UUID: MIG-${gpu}/2/0)`,
      ].join('\n'),
    );
    const gpus: GpuInfo[] = [{ index: 0, name: 'NVIDIA A100-SXM4-40GB', memoryMiB: 40960, uuid: gpu, migMode: 'enabled', migDevices: byGpu.get(gpu)! }];
    const selection = selectDevices(gpus, { cudaVisibleDevices: `MIG-${gpu}/2/0`, nvidiaVisibleDevices: undefined });
    expect(choices(selection)).toEqual([
      ['gpu0-mig0', false, NOT_NAMED],
      ['gpu0-mig1', true, `in CUDA_VISIBLE_DEVICES (as MIG-${gpu}/2/0)`],
    ]);
    expect(selection.devices[1]).toMatchObject({ uuid: `MIG-${gpu}/2/0`, name: 'NVIDIA A100-SXM4-40GB MIG 3g.20gb', memoryMiB: 20480 });
    // Their common start names both.
    expect(refused(() => selectDevices(gpus, { cudaVisibleDevices: `MIG-${gpu}`, nvidiaVisibleDevices: undefined })).problems).toEqual([
      `CUDA_VISIBLE_DEVICES: MIG-${gpu} is the start of 2 UUIDs; give more of it`,
    ]);
  });
});

describe('selectDevices refuses a CUDA_VISIBLE_DEVICES that does not fit (78)', () => {
  it('an index nvidia-smi does not list', () => {
    expect(refusedCuda('h100x8', '9')).toEqual([`CUDA_VISIBLE_DEVICES names 9, which nvidia-smi does not list (it lists: ${H100X8_LISTED})`]);
  });

  it('a GPU UUID or MIG UUID nvidia-smi does not list (MIG devices listed too where there are some)', () => {
    const unknown = 'GPU-00000000-0000-0000-0000-000000000000';
    expect(refusedCuda('h100x8', unknown)).toEqual([`CUDA_VISIBLE_DEVICES names ${unknown}, which nvidia-smi does not list (it lists: ${H100X8_LISTED})`]);
    const unknownMig = 'MIG-ffffffff-0000-0000-0000-000000000000';
    expect(refusedCuda('h100x8', unknownMig)).toEqual([`CUDA_VISIBLE_DEVICES names ${unknownMig}, which nvidia-smi does not list (it lists: ${H100X8_LISTED})`]);
    expect(refusedCuda('mig-mixed', unknownMig)).toEqual([`CUDA_VISIBLE_DEVICES names ${unknownMig}, which nvidia-smi does not list (it lists: ${MIG_MIXED_LISTED})`]);
  });

  it('a GPU named twice: by the same index, or by index and UUID', () => {
    expect(refusedCuda('h100x8', '1,1')).toEqual(['CUDA_VISIBLE_DEVICES names GPU 1 twice (1 and 1)']);
    expect(refusedCuda('h100x8', `1,${H100X8(1)}`)).toEqual([`CUDA_VISIBLE_DEVICES names GPU 1 twice (1 and ${H100X8(1)})`]);
    expect(refusedCuda('h100x8', `${H100X8(2)},${H100X8(2).toUpperCase()},2`)).toEqual([
      `CUDA_VISIBLE_DEVICES names GPU 2 twice (${H100X8(2)} and ${H100X8(2).toUpperCase()})`,
      `CUDA_VISIBLE_DEVICES names GPU 2 twice (${H100X8(2)} and 2)`,
    ]);
  });

  it('a MIG device named twice: by its GPU and by its UUID', () => {
    expect(refusedCuda('mig-mixed', `0,${MIG(1)}`)).toEqual([`CUDA_VISIBLE_DEVICES names MIG device ${MIG(1)} twice (0 and ${MIG(1)})`]);
    expect(refusedCuda('h200-mig7', `${MIG(4)},${MIG(4)}`)).toEqual([`CUDA_VISIBLE_DEVICES names MIG device ${MIG(4)} twice (${MIG(4)} and ${MIG(4)})`]);
  });

  it('an ambiguous UUID prefix', () => {
    expect(refusedCuda('h100x8', 'GPU-5f8e8a3c')).toEqual(['CUDA_VISIBLE_DEVICES: GPU-5f8e8a3c is the start of 8 UUIDs; give more of it']);
    expect(refusedCuda('h200-mig7', 'MIG-7c1e000')).toEqual(['CUDA_VISIBLE_DEVICES: MIG-7c1e000 is the start of 7 UUIDs; give more of it']);
  });

  it('an empty value: CUDA would see no GPU', () => {
    for (const value of ['', '  ']) {
      const error = refused(() => select('h100x8', value));
      expect(error.message).toBe('no device to use');
      expect(error.problems).toEqual([
        'CUDA_VISIBLE_DEVICES is set but empty: CUDA would see no GPU. Unset it to use every GPU nvidia-smi lists, or set GPU_MODE=mock to run on CPU',
      ]);
    }
  });

  it('a GPU in MIG mode with no MIG device (mig-mixed GPU 2), by index or UUID', () => {
    expect(refusedCuda('mig-mixed', '2')).toEqual([`CUDA_VISIBLE_DEVICES names GPU 2 (2), which is ${NO_MIG}`]);
    expect(refusedCuda('mig-mixed', `1,${MM(2)}`)).toEqual([`CUDA_VISIBLE_DEVICES names GPU 2 (${MM(2)}), which is ${NO_MIG}`]);
  });

  it('an entry that is neither an index nor a UUID (when the syntax check was bypassed)', () => {
    expect(refusedCuda('h100x8', '-1')).toEqual(['CUDA_VISIBLE_DEVICES: "-1" is neither a GPU index nor a GPU-/MIG- UUID']);
    expect(refusedCuda('h100x8', '0,,1')).toEqual(['CUDA_VISIBLE_DEVICES: "" is neither a GPU index nor a GPU-/MIG- UUID']);
  });

  it('every problem at once, in the order of the entries', () => {
    expect(refusedCuda('h100x8', '9,1,1,GPU-5f8e8a3c')).toEqual([
      `CUDA_VISIBLE_DEVICES names 9, which nvidia-smi does not list (it lists: ${H100X8_LISTED})`,
      'CUDA_VISIBLE_DEVICES names GPU 1 twice (1 and 1)',
      'CUDA_VISIBLE_DEVICES: GPU-5f8e8a3c is the start of 8 UUIDs; give more of it',
    ]);
  });
});

describe('loadConfig checks the syntax of CUDA_VISIBLE_DEVICES', () => {
  it('only in actual mode: mock mode applies neither variable, so the usual "hide the GPUs" values pass', () => {
    for (const value of ['-1', 'NoDevFiles', '']) {
      const config = loadConfig({ GPU_MODE: 'mock', CUDA_VISIBLE_DEVICES: value, NVIDIA_VISIBLE_DEVICES: 'void' });
      expect([config.gpuMode, config.cudaVisibleDevices]).toEqual(['mock', value]);
    }
    expect(() => loadConfig({ GPU_MODE: 'actual', CUDA_VISIBLE_DEVICES: 'NoDevFiles' })).toThrow(ConfigError);
  });

  it('refuses "-1" (CUDA would ignore it and everything after it), naming the setting', () => {
    const error = refused(() => loadConfig({ CUDA_VISIBLE_DEVICES: '-1' }));
    expect(error.message).toBe('invalid configuration (1 problem)');
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]!.startsWith('CUDA_VISIBLE_DEVICES:')).toBe(true);
    expect(error.problems).toEqual([
      'CUDA_VISIBLE_DEVICES: "-1" is neither a GPU index nor a GPU-/MIG- UUID (CUDA would ignore it and every entry after it)',
    ]);
  });

  it('names every bad entry at once', () => {
    expect(refused(() => loadConfig({ CUDA_VISIBLE_DEVICES: '0,gpu1,NoDevFiles' })).problems).toEqual([
      'CUDA_VISIBLE_DEVICES: "gpu1", "NoDevFiles" are neither a GPU index nor a GPU-/MIG- UUID (CUDA would ignore it and every entry after it)',
    ]);
  });

  it('keeps a valid value as given, an empty one as empty (not unset), and unset as undefined', () => {
    const value = `0, ${H100X8(1)},MIG-GPU-2fa5cf01-9520-1bc1-995b-cc0c6d9bca7c/1/0`;
    expect(loadConfig({ CUDA_VISIBLE_DEVICES: value }).cudaVisibleDevices).toBe(value);
    expect(loadConfig({ CUDA_VISIBLE_DEVICES: '' }).cudaVisibleDevices).toBe('');
    expect(loadConfig({}).cudaVisibleDevices).toBeUndefined();
    expect(loadConfig({ NVIDIA_VISIBLE_DEVICES: 'all' }).nvidiaVisibleDevices).toBe('all');
    expect(loadConfig({ NVIDIA_VISIBLE_DEVICES: '' }).nvidiaVisibleDevices).toBe('');
    expect(loadConfig({}).nvidiaVisibleDevices).toBeUndefined();
  });
});

describe('NVIDIA_VISIBLE_DEVICES is cross-checked, never applied', () => {
  it('not set: nothing to check', () => {
    expect(select('h200x2').nvidiaCheck).toBe(NVIDIA_NOT_SET);
  });

  it('all: a verdict, every device used', () => {
    const selection = select('h200x2', undefined, 'all');
    expect(selection.nvidiaCheck).toBe('all: the runtime exposed every GPU of the host; nvidia-smi lists 2 GPU(s)');
    expect(selection.nvidiaVisibleDevices).toBe('all');
    expect(selection.warnings).toEqual([]);
    expect(usedIds(selection)).toEqual(['gpu0', 'gpu1']);
    expect(select('h200x2', undefined, ' ALL ').nvidiaCheck).toBe('all: the runtime exposed every GPU of the host; nvidia-smi lists 2 GPU(s)');
  });

  it('a list of UUIDs nvidia-smi shows: matches', () => {
    const value = `${H200X2(0)},${H200X2(1)}`;
    const selection = select('h200x2', undefined, value);
    expect(selection.nvidiaCheck).toBe(`${value}: matches (2 GPU(s), and every UUID it lists is here)`);
    expect(selection.warnings).toEqual([]);
    expect(usedIds(selection)).toEqual(['gpu0', 'gpu1']);
    // Indices, as the runtime takes them: nvidia-smi renumbers from 0 inside, so only their count is checked.
    expect(select('h200x2', undefined, '4,5').nvidiaCheck).toBe('4,5: matches (2 GPU(s), and every UUID it lists is here)');
  });

  it('a UUID nvidia-smi does not list: ConfigError naming it', () => {
    const absent = 'GPU-deadbeef-0000-4000-8000-000000000000';
    expect(refusedNvidia('h200x2', `${H200X2(0)},${absent}`)).toEqual([
      `NVIDIA_VISIBLE_DEVICES lists ${absent}, which nvidia-smi does not list: the runtime did not give this container that GPU`,
    ]);
    const absentMig = 'MIG-ffffffff-0000-4000-8000-000000000000';
    expect(refusedNvidia('h200-mig7', absentMig)).toEqual([
      `NVIDIA_VISIBLE_DEVICES lists ${absentMig}, which nvidia-smi -L does not list: the runtime did not give this container that MIG device`,
    ]);
  });

  it('a GPU count that differs: ConfigError with both counts', () => {
    const count = (named: number, listed: number): string =>
      `NVIDIA_VISIBLE_DEVICES names ${named} GPU(s) but nvidia-smi lists ${listed} GPU(s): the runtime did not apply it as given. Use CUDA_VISIBLE_DEVICES to choose among the GPUs this container has`;
    expect(refusedNvidia('h200x2', '0,1,2')).toEqual([count(3, 2)]);
    expect(refusedNvidia('h200x2', H200X2(1))).toEqual([count(1, 2)]);
    expect(refusedNvidia('h100x8', '0,1')).toEqual([count(2, 8)]);
  });

  it('none, void or empty with GPUs present: a warning, every GPU used', () => {
    const warning = (shown: string): string =>
      `NVIDIA_VISIBLE_DEVICES=${shown} exposes no GPU, yet nvidia-smi lists 2 GPU(s): they came another way (Docker --gpus, CDI, a device plugin); using what nvidia-smi lists`;
    const none = select('h200x2', undefined, 'none');
    expect(none.nvidiaCheck).toBe('none: the runtime exposes no GPU, only the driver; yet nvidia-smi lists 2 GPU(s)');
    expect(none.warnings).toEqual([warning('none')]);
    expect(usedIds(none)).toEqual(['gpu0', 'gpu1']);
    const voided = select('h200x2', undefined, 'void');
    expect(voided.nvidiaCheck).toBe('void: the runtime exposes nothing, as runc would; yet nvidia-smi lists 2 GPU(s)');
    expect(voided.warnings).toEqual([warning('void')]);
    const empty = select('h200x2', undefined, '');
    expect(empty.nvidiaCheck).toBe('empty: the runtime exposes nothing, as runc would; yet nvidia-smi lists 2 GPU(s)');
    expect(empty.warnings).toEqual([warning('')]);
    expect(usedIds(empty)).toEqual(['gpu0', 'gpu1']);
  });

  it('MIG UUIDs and index:mig entries count their parent GPU once', () => {
    expect(select('h200-mig7', undefined, `${MIG(0)},${MIG(1)},${MIG(6)}`).nvidiaCheck).toBe(
      `${MIG(0)},${MIG(1)},${MIG(6)}: matches (1 GPU(s), and every UUID it lists is here)`,
    );
    expect(select('h200-mig7', undefined, '0:0,0:1').nvidiaCheck).toBe('0:0,0:1: matches (1 GPU(s), and every UUID it lists is here)');
    // mig-mixed: two MIG devices of GPU 0, GPU 1 and GPU 2 by UUID: three GPUs.
    const value = `${MIG(0)},${MIG(3)},${MM(1)},${MM(2)}`;
    const selection = select('mig-mixed', undefined, value);
    expect(selection.nvidiaCheck).toBe(`${value}: matches (3 GPU(s), and every UUID it lists is here)`);
    expect(selection.warnings).toEqual([MIG2_WARNING]);
    expect(refusedNvidia('mig-mixed', `${MIG(0)},${MIG(1)},${MM(1)}`)).toEqual([
      'NVIDIA_VISIBLE_DEVICES names 2 GPU(s) but nvidia-smi lists 3 GPU(s): the runtime did not apply it as given. Use CUDA_VISIBLE_DEVICES to choose among the GPUs this container has',
    ]);
  });

  it('a form that is no device list (a device plugin\'s path, a CDI name): a warning, not checked, every device used', () => {
    for (const value of ['/var/run/nvidia-container-devices', 'nvidia.com/gpu=all', '0,gpu1']) {
      const selection = select('h200x2', undefined, value);
      expect(usedIds(selection)).toEqual(['gpu0', 'gpu1']);
      expect(selection.nvidiaCheck).toMatch(new RegExp(`^${value.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a device list \\(".+"\\), not checked$`));
      expect(selection.warnings).toEqual([`NVIDIA_VISIBLE_DEVICES=${value} is not a list of indices or UUIDs (a device plugin's path, a CDI name): not cross-checked; using what nvidia-smi lists`]);
    }
  });

  it('is checked before CUDA_VISIBLE_DEVICES, and does not restrict what CUDA_VISIBLE_DEVICES may name', () => {
    const both = select('h200x2', '1', 'all');
    expect(choices(both)).toEqual([
      ['gpu0', false, NOT_NAMED],
      ['gpu1', true, 'in CUDA_VISIBLE_DEVICES (as 1)'],
    ]);
    expect(both.nvidiaCheck).toBe('all: the runtime exposed every GPU of the host; nvidia-smi lists 2 GPU(s)');
    const error = refused(() => select('h200x2', '9', '0,1,2'));
    expect(error.message).toBe(NVIDIA_MISMATCH);
  });

  it('checkNvidiaVisible on its own', () => {
    const gpus = machine('mixed');
    const { devices } = listDevices(gpus);
    expect(checkNvidiaVisible(`${MIXED_H100},${H200X2(0)}`, gpus, devices)).toEqual({
      verdict: `${MIXED_H100},${H200X2(0)}: matches (2 GPU(s), and every UUID it lists is here)`,
      warnings: [],
    });
    expect(checkNvidiaVisible(undefined, gpus, devices)).toEqual({ verdict: NVIDIA_NOT_SET, warnings: [] });
  });
});

describe('mockSelection', () => {
  it('uses every mock GPU whatever CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES say', () => {
    const gpus: GpuInfo[] = [0, 1, 2].map((index) => ({
      index,
      name: 'Mock GPU',
      memoryMiB: 24576,
      uuid: `MOCK-000${index}`,
      migMode: 'unsupported',
      migDevices: [],
    }));
    const visible: VisibleSettings = { cudaVisibleDevices: '7', nvidiaVisibleDevices: 'GPU-nowhere' };
    const selection = mockSelection(gpus, visible);
    expect(selection).toMatchObject({ by: 'mock', cudaVisibleDevices: '7', nvidiaVisibleDevices: 'GPU-nowhere', nvidiaCheck: 'not checked in mock mode', warnings: [], unusable: [] });
    expect(choices(selection)).toEqual([0, 1, 2].map((i) => [`gpu${i}`, true, 'a mock GPU (GPU_MODE=mock): instances run with --cpu']));
    // selectDevices would refuse the same settings.
    expect(refused(() => selectDevices(gpus, visible)).message).toBe(NVIDIA_MISMATCH);
  });
});

describe('H200 naming', () => {
  it('MIG devices carry their GPU name and profile', () => {
    expect(listDevices(machine('h200-mig7')).devices.map((d) => d.name)).toEqual(Array(7).fill(`${H200} MIG 1g.18gb`));
  });
});
