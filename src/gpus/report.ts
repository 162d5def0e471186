import type { GpuDetection } from './detect.js';

/** What `detect --json` prints and /status shows under `gpus`: the machine, and which devices are used and why. */
export function detectionReport(g: GpuDetection) {
  return {
    count: g.count,
    model: g.model,
    memoryGb: g.memoryGb,
    driver: g.driver,
    source: g.source,
    gpus: g.gpus.map((gpu) => ({ index: gpu.index, name: gpu.name, memoryMiB: gpu.memoryMiB, uuid: gpu.uuid, migMode: gpu.migMode, migDevices: gpu.migDevices })),
    devicesBy: g.selection.by,
    cudaVisibleDevices: g.selection.cudaVisibleDevices,
    nvidiaVisibleDevices: { value: g.selection.nvidiaVisibleDevices, check: g.selection.nvidiaCheck },
    devices: g.selection.devices.map((d) => ({
      id: d.id,
      kind: d.kind,
      gpu: d.gpuIndex,
      mig: d.migIndex,
      profile: d.profile,
      uuid: d.uuid,
      name: d.name,
      memoryMiB: d.memoryMiB,
      used: d.used,
      why: d.why,
    })),
    unusable: g.selection.unusable,
    warnings: g.selection.warnings,
  };
}

/** `detect` at a terminal: each GPU, its devices with used or not and why, the cross-check, the verdict. */
export function formatDetection(g: GpuDetection): string {
  const lines = [`${g.count} GPU(s) from ${g.source}${g.driver ? ` (driver ${g.driver})` : ''}:`];
  for (const gpu of g.gpus) {
    const mig = gpu.migMode === 'enabled' ? ', MIG mode' : '';
    lines.push(`  GPU ${gpu.index}: ${gpu.name}, ${gpu.memoryMiB} MiB, ${gpu.uuid || 'no UUID'}${mig}`);
    for (const d of g.selection.devices.filter((x) => x.gpuIndex === gpu.index)) {
      const what = d.kind === 'mig' ? `    ${d.id}: MIG ${d.profile}, ${d.memoryMiB} MiB, ${d.uuid}` : `    ${d.id}: whole GPU`;
      lines.push(`${what}: ${d.used ? 'used' : 'not used'} (${d.why})`);
    }
    for (const u of g.selection.unusable.filter((x) => x.gpuIndex === gpu.index)) lines.push(`    not used: ${u.why}`);
  }
  lines.push(`CUDA_VISIBLE_DEVICES: ${g.selection.cudaVisibleDevices ?? '(not set)'}`);
  lines.push(`NVIDIA_VISIBLE_DEVICES: ${g.selection.nvidiaCheck}`);
  lines.push(describeUse(g, false));
  return `${lines.join('\n')}\n`;
}

/** `2 of 8 device(s) used (CUDA_VISIBLE_DEVICES): gpu1, gpu3`: the detect phase's log line and `detect`'s last line (which names the variable above it). */
export function describeUse(g: GpuDetection, namingTheChoice = true): string {
  const by = namingTheChoice && g.selection.by === 'CUDA_VISIBLE_DEVICES' ? ' (CUDA_VISIBLE_DEVICES)' : '';
  return `${g.used.length} of ${g.selection.devices.length} device(s) used${by}: ${g.used.map((d) => d.id).join(', ')}`;
}
