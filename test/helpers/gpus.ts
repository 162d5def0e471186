import type { GpuDetection } from '../../src/gpus/detect.js';

/** `count` H100s as nvidia-smi reports them: what buildPlan gets from detection. */
export const detection = (count: number): GpuDetection => ({
  count,
  model: 'NVIDIA H100 80GB HBM3',
  memoryGb: 79.6,
  driver: '580.159.04',
  source: 'nvidia-smi',
  gpus: Array.from({ length: count }, (_, index) => ({ index, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, uuid: `GPU-${index}` })),
});
