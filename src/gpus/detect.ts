import { access, constants } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { NoGpuError } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { attachMigDevices, NVIDIA_SMI_LIST_ARGS, NVIDIA_SMI_QUERY_ARGS, NvidiaSmiError, parseNvidiaSmiCsv, parseNvidiaSmiList, type GpuInfo } from './nvidia-smi.js';
import { mockSelection, selectDevices, type DeviceChoice, type Selection, type VisibleSettings } from './placement.js';

export { attachMigDevices, NVIDIA_SMI_LIST_ARGS, NVIDIA_SMI_QUERY_ARGS, NvidiaSmiError, parseNvidiaSmiCsv, parseNvidiaSmiList, type GpuInfo } from './nvidia-smi.js';
export type { Device, DeviceChoice, Selection } from './placement.js';

export interface HostInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
}

/** CPU and memory from systeminformation (what it does well: /proc, no GPU tools needed); null if it fails or is slow. */
export async function detectHost(timeoutMs = 3000): Promise<HostInfo | null> {
  const query = (async () => {
    const si = await import('systeminformation');
    const [cpu, mem] = await Promise.all([si.cpu(), si.mem()]);
    return {
      cpu: `${cpu.manufacturer} ${cpu.brand}`.trim(),
      cores: cpu.cores,
      memoryGiB: Math.round((mem.total / 1024 ** 3) * 10) / 10,
    };
  })().catch(() => null);
  return (await withTimeout(query, timeoutMs)) ?? null;
}

export type GpuSource = 'nvidia-smi' | 'systeminformation' | 'mock';

export interface GpuDetection {
  count: number;
  model: string;
  /** Memory of one GPU (the smallest, when they differ), GiB with one decimal. */
  memoryGb: number;
  driver: string | null;
  source: GpuSource;
  gpus: GpuInfo[];
  /** CPU and memory of the machine, from systeminformation; null when it could not tell. */
  host?: HostInfo | null;
  /** Which devices (whole GPUs, MIG devices) are used, which not, and why. */
  selection: Selection;
  /** The devices used, in nvidia-smi's order: one or more instances each. */
  used: DeviceChoice[];
}

// execa is imported where it is used: `start` in mock mode never needs it (~20 ms and ~2 MB saved).
async function runNvidiaSmi(config: Config, args: readonly string[]): Promise<string> {
  const result = await (await import('execa')).execa(config.nvidiaSmiPath, [...args], {
    timeout: config.nvidiaSmiTimeoutMs,
    reject: false,
    stdin: 'ignore',
    // Kill the whole call, not just ask: a hung driver ignores SIGTERM.
    killSignal: 'SIGKILL',
    env: { LC_ALL: 'C' },
  });
  const call = args[0] === '-L' ? `${config.nvidiaSmiPath} -L` : config.nvidiaSmiPath;
  if (result.timedOut) {
    throw new NvidiaSmiError(`${call} did not answer within NVIDIA_SMI_TIMEOUT_MS=${config.nvidiaSmiTimeoutMs}`);
  }
  if (result.failed) {
    const code = (result as { code?: string }).code;
    if (code === 'ENOENT') throw new NvidiaSmiError(`${config.nvidiaSmiPath} was not found on PATH`);
    const firstLine = `${result.stdout}\n${result.stderr}`.trim().split('\n')[0]?.slice(0, 200) ?? '';
    throw new NvidiaSmiError(
      `${call} failed (exit ${result.exitCode ?? result.signal ?? 'unknown'})${firstLine ? `: ${firstLine}` : ''}`,
    );
  }
  return result.stdout;
}

/** The GPU query; then, only when a GPU is in MIG mode, `-L` for its MIG devices (the query lists none). */
async function queryNvidiaSmi(config: Config): Promise<{ gpus: GpuInfo[]; driver: string | null }> {
  const { gpus, driver } = parseNvidiaSmiCsv(await runNvidiaSmi(config, NVIDIA_SMI_QUERY_ARGS));
  if (gpus.some((g) => g.migMode === 'enabled')) {
    try {
      attachMigDevices(gpus, parseNvidiaSmiList(await runNvidiaSmi(config, NVIDIA_SMI_LIST_ARGS)));
    } catch (error) {
      if (!(error instanceof NvidiaSmiError)) throw error;
      // The GPUs not in MIG mode still work: only those in MIG mode are lost, with the reason.
      for (const gpu of gpus) if (gpu.migMode === 'enabled') gpu.migError = error.message;
    }
  }
  return { gpus, driver };
}

async function onPath(command: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      await access(path.join(dir, command), constants.X_OK);
      return true;
    } catch {
      // not in this folder
    }
  }
  return false;
}

/**
 * systeminformation finds GPUs through lspci; without lspci it returns none, and
 * it runs nvidia-smi synchronously with no timeout. So it is asked only when
 * nvidia-smi is absent and lspci present (a host with the driver tools missing).
 */
async function querySystemInformation(): Promise<GpuInfo[]> {
  if (!(await onPath('lspci'))) throw new NvidiaSmiError('lspci is not installed, so systeminformation cannot list GPUs');
  const si = await import('systeminformation');
  const graphics = await si.graphics();
  return graphics.controllers
    .filter((c) => /nvidia/i.test(`${c.vendor} ${c.model}`))
    .map((c, index) => ({ index, name: c.model, memoryMiB: c.vram ?? 0, uuid: '', migMode: 'unsupported' as const, migDevices: [] }));
}

export function visibleSettings(config: Config): VisibleSettings {
  return { cudaVisibleDevices: config.cudaVisibleDevices, nvidiaVisibleDevices: config.nvidiaVisibleDevices, cudaDeviceOrder: config.cudaDeviceOrder };
}

/** The detection of `gpus`, with the devices chosen among them (throws ConfigError when the platform's choice does not fit). */
export function summarize(gpus: GpuInfo[], driver: string | null, source: GpuSource, visible: VisibleSettings): GpuDetection {
  const smallest = Math.min(...gpus.map((g) => g.memoryMiB));
  const selection = source === 'mock' ? mockSelection(gpus, visible) : selectDevices(gpus, visible);
  if (!selection.devices.some((d) => d.used)) {
    throw new NoGpuError('no GPU that CUDA can use', selection.unusable.map((u) => `GPU ${u.gpuIndex} (${u.name}, ${u.uuid}) is ${u.why}`));
  }
  return {
    count: gpus.length,
    model: gpus[0]?.name ?? '',
    memoryGb: gib(smallest),
    driver,
    source,
    gpus,
    selection,
    used: selection.devices.filter((d) => d.used),
  };
}

/** MiB to GiB with one decimal, as everything here reports memory. */
export function gib(mib: number): number {
  return Math.round((mib / 1024) * 10) / 10;
}

function mockDetection(config: Config): GpuDetection {
  const count = config.numGpusHint ?? 1;
  const name = config.gpuModelHint ?? 'Mock GPU';
  const memoryMiB = Math.round((config.gpuMemoryGbHint ?? 24) * 1024);
  const gpus = Array.from({ length: count }, (_, index) => ({
    index,
    name,
    memoryMiB,
    uuid: `MOCK-${index.toString().padStart(4, '0')}`,
    migMode: 'unsupported' as const,
    migDevices: [],
  }));
  return summarize(gpus, null, 'mock', visibleSettings(config));
}

/**
 * Compare what the platform says (NUM_GPUS, GPU_MODEL, GPU_MEMORY_GB) with the devices used (whole
 * GPUs or MIG devices, after CUDA_VISIBLE_DEVICES); detection wins.
 */
export function hintMismatches(config: Config, detected: GpuDetection): string[] {
  const warnings: string[] = [];
  const used = detected.used;
  const gpusUsed = new Set(used.map((d) => d.gpuIndex)).size;
  const usedText = used.length === gpusUsed ? `${used.length} GPU(s) are used` : `${used.length} device(s) on ${gpusUsed} GPU(s) are used`;
  if (config.numGpusHint !== undefined && config.numGpusHint !== used.length && config.numGpusHint !== gpusUsed) {
    warnings.push(`NUM_GPUS=${config.numGpusHint} but ${usedText}; using ${used.length}`);
  }
  if (config.gpuModelHint !== undefined) {
    const hint = config.gpuModelHint.toLowerCase().replace(/^nvidia\s+/, '');
    const other = used.filter((d) => !d.name.toLowerCase().includes(hint));
    if (other.length) {
      const names = [...new Set(other.map((d) => d.name))].map((n) => `"${n}"`).join(', ');
      warnings.push(`GPU_MODEL="${config.gpuModelHint}" but ${other.length} of ${used.length} device(s) used are ${names} (${other.map((d) => d.id).join(', ')}); using the detected ones`);
    }
  }
  if (config.gpuMemoryGbHint !== undefined && used.length) {
    // Platforms give either per-device or total memory, in GB or GiB: allow 10%.
    const close = (a: number, b: number): boolean => Math.abs(a - b) <= 0.1 * Math.max(a, b);
    const fits = (gb: number): boolean => close(config.gpuMemoryGbHint!, gb) || close(config.gpuMemoryGbHint!, gb * 1.074);
    const total = used.reduce((sum, d) => sum + gib(d.memoryMiB), 0);
    const other = used.filter((d) => !fits(gib(d.memoryMiB)));
    if (other.length && !fits(total)) {
      const figures = [...new Set(other.map((d) => gib(d.memoryMiB)))].join(', ');
      warnings.push(`GPU_MEMORY_GB=${config.gpuMemoryGbHint} but ${other.length} of ${used.length} device(s) used have ${figures} GiB (${other.map((d) => d.id).join(', ')}), ${Math.round(total * 10) / 10} GiB in all; using the detected figures`);
    }
  }
  return warnings;
}

/**
 * `withHost`: also ask systeminformation for CPU and memory (detect, check). `start`
 * leaves it out: it costs ~40 ms of imports and /proc reads on the boot's hot path.
 */
export async function detectGpus(config: Config, logger: Logger, withHost = true): Promise<GpuDetection> {
  const host = withHost ? detectHost() : undefined;
  const gpus = await detectGpuList(config, logger);
  return host ? { ...gpus, host: await host } : gpus;
}

async function detectGpuList(config: Config, logger: Logger): Promise<GpuDetection> {
  if (config.gpuMode === 'mock') return mockDetection(config);

  const attempts: string[] = [];
  let nvidiaSmiMissing = false;
  try {
    const { gpus, driver } = await queryNvidiaSmi(config);
    const detected = summarize(gpus, driver, 'nvidia-smi', visibleSettings(config));
    for (const warning of [...detected.selection.warnings, ...hintMismatches(config, detected)]) logger.warn(warning);
    return detected;
  } catch (error) {
    if (!(error instanceof NvidiaSmiError)) throw error;
    attempts.push(error.message);
    nvidiaSmiMissing = /not found on PATH/.test(error.message);
  }

  if (nvidiaSmiMissing) {
    try {
      const gpus = await querySystemInformation();
      if (gpus.length > 0) {
        const detected = summarize(gpus, null, 'systeminformation', visibleSettings(config));
        for (const warning of [...detected.selection.warnings, ...hintMismatches(config, detected)]) logger.warn(warning);
        return detected;
      }
      attempts.push('systeminformation (lspci) listed no NVIDIA controller');
    } catch (error) {
      attempts.push(error instanceof Error ? error.message : String(error));
    }
  } else {
    attempts.push('systeminformation was not asked: it would call the same failing nvidia-smi without a timeout');
  }

  const exposed = config.nvidiaVisibleDevices?.trim().toLowerCase();
  if (exposed === 'none' || exposed === 'void' || exposed === '') {
    attempts.push(`NVIDIA_VISIBLE_DEVICES=${config.nvidiaVisibleDevices?.trim() ?? ''}: the container runtime was told to give this container no GPU`);
  }
  throw new NoGpuError('no GPU found (GPU_MODE=actual). Set GPU_MODE=mock to run without a GPU', attempts);
}
