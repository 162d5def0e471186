import { summarize, type GpuDetection, type GpuInfo, type GpuSource } from '../../src/gpus/detect.js';

/** `count` whole GPUs (not in MIG mode) named `name`, with `memoryMiB` each and UUIDs `GPU-<index>`. */
export function gpuList(count: number, name = 'NVIDIA H100 80GB HBM3', memoryMiB = 81559): GpuInfo[] {
  return Array.from({ length: count }, (_, index) => ({ index, name, memoryMiB, uuid: `GPU-${index}`, migMode: 'disabled' as const, migDevices: [] }));
}

/** What buildPlan gets from detection: `count` H100s as nvidia-smi reports them (or `gpus`), every device used unless `visible` says otherwise. */
export function detection(count: number, options: { gpus?: GpuInfo[]; source?: GpuSource; cudaVisibleDevices?: string; nvidiaVisibleDevices?: string } = {}): GpuDetection {
  const source = options.source ?? 'nvidia-smi';
  return summarize(options.gpus ?? gpuList(count), source === 'mock' ? null : '580.159.04', source, {
    cudaVisibleDevices: options.cudaVisibleDevices,
    nvidiaVisibleDevices: options.nvidiaVisibleDevices,
  });
}
