import { ConfigError } from '../errors.js';
import type { GpuInfo } from './nvidia-smi.js';

/**
 * Which devices gpu-boot may use, and why. A device is what one CUDA process is pinned to: a whole
 * GPU, or one MIG device of a GPU in MIG mode. Pure: detection in, choices out.
 */

export interface Device {
  /** `gpu0`, or `gpu0-mig3` for MIG device 3 of GPU 0: the middle of an instance's name. */
  id: string;
  kind: 'gpu' | 'mig';
  gpuIndex: number;
  gpuUuid: string;
  /** nvidia-smi's `Device N` of a MIG device; null for a whole GPU. */
  migIndex: number | null;
  /** A MIG device's profile (`1g.10gb`); null for a whole GPU. */
  profile: string | null;
  /** What the instance's CUDA_VISIBLE_DEVICES holds: `GPU-...` or `MIG-...`. */
  uuid: string;
  /** The GPU's name; a MIG device's: `<GPU name> MIG <profile>`. */
  name: string;
  memoryMiB: number;
}

export interface DeviceChoice extends Device {
  used: boolean;
  why: string;
}

/** A GPU in MIG mode with no MIG device: CUDA cannot run anything on it. */
export interface UnusableGpu {
  gpuIndex: number;
  uuid: string;
  name: string;
  why: string;
}

export interface Selection {
  /** Every device nvidia-smi lists, in its order (GPU index, then MIG device), used or not. */
  devices: DeviceChoice[];
  unusable: UnusableGpu[];
  /** What decided: every device, the platform's CUDA_VISIBLE_DEVICES, or mock GPUs. */
  by: 'all' | 'CUDA_VISIBLE_DEVICES' | 'mock';
  cudaVisibleDevices: string | null;
  nvidiaVisibleDevices: string | null;
  /** What the NVIDIA_VISIBLE_DEVICES cross-check found, in a sentence. */
  nvidiaCheck: string;
  warnings: string[];
}

export interface VisibleSettings {
  /** The incoming CUDA_VISIBLE_DEVICES, as given (undefined: not set; '' means no device for CUDA). */
  cudaVisibleDevices: string | undefined;
  nvidiaVisibleDevices: string | undefined;
  /** The incoming CUDA_DEVICE_ORDER: the order CUDA_VISIBLE_DEVICES' indices were meant in. */
  cudaDeviceOrder?: string | undefined;
}

const NO_MIG_DEVICE = 'in MIG mode with no MIG device: CUDA cannot use it (create MIG devices, or turn MIG mode off)';

/** The devices of the machine: each GPU not in MIG mode, and each MIG device of the GPUs in MIG mode. */
export function listDevices(gpus: GpuInfo[]): { devices: Device[]; unusable: UnusableGpu[] } {
  const devices: Device[] = [];
  const unusable: UnusableGpu[] = [];
  for (const gpu of gpus) {
    if (gpu.migMode !== 'enabled') {
      devices.push({ id: `gpu${gpu.index}`, kind: 'gpu', gpuIndex: gpu.index, gpuUuid: gpu.uuid, migIndex: null, profile: null, uuid: gpu.uuid, name: gpu.name, memoryMiB: gpu.memoryMiB });
      continue;
    }
    if (gpu.migError) unusable.push({ gpuIndex: gpu.index, uuid: gpu.uuid, name: gpu.name, why: `in MIG mode, and its MIG devices are not known: ${gpu.migError}` });
    else if (gpu.migDevices.length === 0) unusable.push({ gpuIndex: gpu.index, uuid: gpu.uuid, name: gpu.name, why: NO_MIG_DEVICE });
    for (const mig of [...gpu.migDevices].sort((a, b) => a.index - b.index)) {
      devices.push({
        id: `gpu${gpu.index}-mig${mig.index}`,
        kind: 'mig',
        gpuIndex: gpu.index,
        gpuUuid: gpu.uuid,
        migIndex: mig.index,
        profile: mig.profile,
        uuid: mig.uuid,
        name: `${gpu.name} MIG ${mig.profile}`,
        memoryMiB: mig.memoryMiB,
      });
    }
  }
  return { devices, unusable };
}

/** The entries of a device list: comma-separated, each trimmed. */
export function visibleEntries(value: string): string[] {
  return value.split(',').map((entry) => entry.trim());
}

/** An entry CUDA_VISIBLE_DEVICES can hold: an index (nvidia-smi's, PCI bus order) or a GPU or MIG UUID. */
export const CUDA_ENTRY = /^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$/;

/** A UUID matches as CUDA matches it: whole, or by a prefix no other device shares; any case. */
function byUuid<T>(items: T[], uuidOf: (item: T) => string, entry: string): T[] {
  const wanted = entry.toLowerCase();
  const exact = items.filter((item) => uuidOf(item).toLowerCase() === wanted);
  return exact.length ? exact : items.filter((item) => uuidOf(item).toLowerCase().startsWith(wanted));
}

/**
 * The devices an incoming CUDA_VISIBLE_DEVICES names. An index or GPU UUID names a GPU: the whole
 * GPU, or all its MIG devices when it is in MIG mode. A MIG UUID names one MIG device.
 */
function resolveCudaVisible(value: string, gpus: GpuInfo[], devices: Device[], unusable: UnusableGpu[]): Map<string, string> {
  const problems: string[] = [];
  const named = new Map<string, string>();
  const entries = visibleEntries(value);
  if (value.trim() === '') {
    throw new ConfigError('no device to use', [
      'CUDA_VISIBLE_DEVICES is set but empty: CUDA would see no GPU. Unset it to use every GPU nvidia-smi lists, or set GPU_MODE=mock to run on CPU',
    ]);
  }
  const listed = (): string =>
    [...gpus.map((g) => `${g.index} (${g.uuid})`), ...devices.filter((d) => d.kind === 'mig').map((d) => d.uuid)].join(', ');
  for (const entry of entries) {
    if (!CUDA_ENTRY.test(entry)) {
      problems.push(`CUDA_VISIBLE_DEVICES: "${entry}" is neither a GPU index nor a GPU-/MIG- UUID`);
      continue;
    }
    let gpu: GpuInfo[] = [];
    let mig: Device[] = [];
    if (/^\d+$/.test(entry)) gpu = gpus.filter((g) => g.index === Number(entry));
    else if (entry.startsWith('GPU-')) gpu = byUuid(gpus, (g) => g.uuid, entry);
    else mig = byUuid(devices.filter((d) => d.kind === 'mig'), (d) => d.uuid, entry);
    const found = gpu.length + mig.length;
    if (found === 0) {
      problems.push(`CUDA_VISIBLE_DEVICES names ${entry}, which nvidia-smi does not list (it lists: ${listed()})`);
      continue;
    }
    if (found > 1) {
      problems.push(`CUDA_VISIBLE_DEVICES: ${entry} is the start of ${found} UUIDs; give more of it`);
      continue;
    }
    const chosen = gpu[0] ? devices.filter((d) => d.gpuIndex === gpu[0]!.index) : mig;
    if (gpu[0] && chosen.length === 0) {
      const empty = unusable.find((u) => u.gpuIndex === gpu[0]!.index);
      problems.push(`CUDA_VISIBLE_DEVICES names GPU ${gpu[0].index} (${entry}), which is ${empty?.why ?? NO_MIG_DEVICE}`);
      continue;
    }
    for (const device of chosen) {
      if (named.has(device.id)) {
        problems.push(`CUDA_VISIBLE_DEVICES names ${device.kind === 'mig' ? `MIG device ${device.uuid}` : `GPU ${device.gpuIndex}`} twice (${named.get(device.id)} and ${entry})`);
        continue;
      }
      named.set(device.id, entry);
    }
  }
  if (problems.length) throw new ConfigError('CUDA_VISIBLE_DEVICES does not fit this machine', problems);
  return named;
}

/** `NVIDIA_VISIBLE_DEVICES`' words, as the NVIDIA container runtime documents them. */
const NVIDIA_WORDS: Record<string, string> = {
  all: 'all: the runtime exposed every GPU of the host',
  none: 'none: the runtime exposes no GPU, only the driver',
  void: 'void: the runtime exposes nothing, as runc would',
};

/**
 * The NVIDIA container runtime consumed NVIDIA_VISIBLE_DEVICES when the container was created: inside,
 * nvidia-smi lists only those GPUs, renumbered from 0, with their real UUIDs. So it is a cross-check,
 * never a filter: the UUIDs it lists must be here, and as many GPUs as it names.
 */
export function checkNvidiaVisible(value: string | undefined, gpus: GpuInfo[], devices: Device[]): { verdict: string; warnings: string[] } {
  if (value === undefined) return { verdict: 'not set: nothing to cross-check (Docker --gpus, CDI and device plugins need not set it)', warnings: [] };
  const word = value.trim().toLowerCase();
  const listedGpus = `nvidia-smi lists ${gpus.length} GPU(s)`;
  if (word === 'all') return { verdict: `${NVIDIA_WORDS.all}; ${listedGpus}`, warnings: [] };
  if (word === '' || word === 'none' || word === 'void') {
    const meaning = word === '' ? 'empty: the runtime exposes nothing, as runc would' : NVIDIA_WORDS[word]!;
    return {
      verdict: `${meaning}; yet ${listedGpus}`,
      warnings: [`NVIDIA_VISIBLE_DEVICES=${value.trim()} exposes no GPU, yet ${listedGpus}: they came another way (Docker --gpus, CDI, a device plugin); using what nvidia-smi lists`],
    };
  }
  const entries = visibleEntries(value);
  // Forms that name no device here: the device plugin's volume-mounts path, CDI names. Nothing to count.
  const unreadable = entries.filter((e) => !/^(\d+|\d+:\d+|GPU-\S+|MIG-\S+)$/i.test(e));
  if (unreadable.length) {
    return {
      verdict: `${value.trim()}: not a device list (${unreadable.map((e) => `"${e}"`).join(', ')}), not checked`,
      warnings: [`NVIDIA_VISIBLE_DEVICES=${value.trim()} is not a list of indices or UUIDs (a device plugin's path, a CDI name): not cross-checked; using what nvidia-smi lists`],
    };
  }
  const problems: string[] = [];
  const gpuEntries = new Set<string>();
  for (const entry of entries) {
    if (/^\d+$/.test(entry)) gpuEntries.add(`index ${entry}`);
    else if (/^\d+:\d+$/.test(entry)) gpuEntries.add(`index ${entry.split(':')[0]}`);
    else if (/^GPU-/i.test(entry)) {
      const gpu = gpus.find((g) => g.uuid.toLowerCase() === entry.toLowerCase());
      if (gpu) gpuEntries.add(gpu.uuid);
      else problems.push(`NVIDIA_VISIBLE_DEVICES lists ${entry}, which nvidia-smi does not list: the runtime did not give this container that GPU`);
    } else if (/^MIG-/i.test(entry)) {
      const mig = devices.find((d) => d.kind === 'mig' && d.uuid.toLowerCase() === entry.toLowerCase());
      if (mig) gpuEntries.add(mig.gpuUuid);
      else problems.push(`NVIDIA_VISIBLE_DEVICES lists ${entry}, which nvidia-smi -L does not list: the runtime did not give this container that MIG device`);
    }
  }
  // A GPU named by index and by UUID counts twice here; a runtime that was given both would refuse it anyway.
  if (problems.length === 0 && gpuEntries.size !== gpus.length) {
    problems.push(
      `NVIDIA_VISIBLE_DEVICES names ${gpuEntries.size} GPU(s) but ${listedGpus}: the runtime did not apply it as given. Use CUDA_VISIBLE_DEVICES to choose among the GPUs this container has`,
    );
  }
  if (problems.length) throw new ConfigError('NVIDIA_VISIBLE_DEVICES does not match what nvidia-smi lists', problems);
  return { verdict: `${value.trim()}: matches (${gpuEntries.size} GPU(s), and every UUID it lists is here)`, warnings: [] };
}

/** The devices to use: all of them, or those CUDA_VISIBLE_DEVICES names; NVIDIA_VISIBLE_DEVICES cross-checked. */
export function selectDevices(gpus: GpuInfo[], visible: VisibleSettings): Selection {
  const { devices, unusable } = listDevices(gpus);
  const nvidia = checkNvidiaVisible(visible.nvidiaVisibleDevices, gpus, devices);
  const warnings = [...nvidia.warnings, ...unusable.map((u) => `GPU ${u.gpuIndex} (${u.name}, ${u.uuid}) is ${u.why}; it gets no instance`)];
  const base = {
    unusable,
    cudaVisibleDevices: visible.cudaVisibleDevices ?? null,
    nvidiaVisibleDevices: visible.nvidiaVisibleDevices ?? null,
    nvidiaCheck: nvidia.verdict,
    warnings,
  };
  if (visible.cudaVisibleDevices === undefined) {
    return { ...base, by: 'all', devices: devices.map((d) => ({ ...d, used: true, why: 'CUDA_VISIBLE_DEVICES is not set: every device nvidia-smi lists' })) };
  }
  const named = resolveCudaVisible(visible.cudaVisibleDevices, gpus, devices, unusable);
  // Indices are read in nvidia-smi's order (PCI bus). CUDA's own default is fastest first: the same on
  // a machine of one model, not on one of several.
  const byIndex = visibleEntries(visible.cudaVisibleDevices).some((e) => /^\d+$/.test(e));
  if (byIndex && visible.cudaDeviceOrder?.trim() !== 'PCI_BUS_ID' && new Set(gpus.map((g) => g.name)).size > 1) {
    warnings.push(
      `CUDA_VISIBLE_DEVICES=${visible.cudaVisibleDevices} names GPUs by index, read in nvidia-smi's (PCI bus) order; without CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA numbers this machine's GPUs of several models fastest first, so the platform may have meant others. Give UUIDs to be sure`,
    );
  }
  return {
    ...base,
    by: 'CUDA_VISIBLE_DEVICES',
    devices: devices.map((d) => {
      const entry = named.get(d.id);
      if (entry === undefined) return { ...d, used: false, why: 'not in CUDA_VISIBLE_DEVICES' };
      const why = d.kind === 'mig' && !/^MIG-/i.test(entry) ? `its GPU is in CUDA_VISIBLE_DEVICES (as ${entry})` : `in CUDA_VISIBLE_DEVICES (as ${entry})`;
      return { ...d, used: true, why };
    }),
  };
}

/** Mock GPUs: every one used; CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES are not applied to pretend devices. */
export function mockSelection(gpus: GpuInfo[], visible: VisibleSettings): Selection {
  const { devices } = listDevices(gpus);
  return {
    devices: devices.map((d) => ({ ...d, used: true, why: 'a mock GPU (GPU_MODE=mock): instances run with --cpu' })),
    unusable: [],
    by: 'mock',
    cudaVisibleDevices: visible.cudaVisibleDevices ?? null,
    nvidiaVisibleDevices: visible.nvidiaVisibleDevices ?? null,
    nvidiaCheck: 'not checked in mock mode',
    warnings: [],
  };
}
