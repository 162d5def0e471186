import type { Config } from './config.js';
import type { GpuDetection } from './gpus/detect.js';
import type { PreparedNodes } from './secrets/node-files.js';

/** The `check` report: what would be written and started, with every value masked. */
export interface CheckReport {
  ok: boolean;
  gpus?: GpuDetection;
  nodes: Array<{ name: string; file: string; keys: Array<{ key: string; from: string[] }> }>;
  skipped: string[];
  variables: Array<{ variable: string; source: string }>;
  problems: string[];
  /** What does not fail the check but was not checked (COMFY_ARGS not validated: why). */
  warnings: string[];
  config: Record<string, string | number | undefined>;
}

export function buildCheckReport(config: Config, gpus: GpuDetection | undefined, prepared: PreparedNodes | undefined, problems: string[], warnings: string[] = []): CheckReport {
  const nodes = (prepared?.files ?? []).map((file) => {
    const values = prepared?.resolution.nodes.find((n) => n.name === file.node)?.values ?? [];
    return {
      name: file.node,
      file: file.path,
      keys: values.map((v) => ({ key: v.key, from: v.variables.length ? v.variables : ['manifest text or default'] })),
    };
  });
  return {
    ok: problems.length === 0,
    ...(gpus ? { gpus } : {}),
    nodes,
    skipped: prepared?.skipped ?? [],
    variables: [...(prepared?.resolution.variables.values() ?? [])].map((v) => ({ variable: v.variable, source: v.source })),
    problems,
    warnings,
    config: {
      GPU_MODE: config.gpuMode,
      CUDA_VISIBLE_DEVICES: config.cudaVisibleDevices,
      NVIDIA_VISIBLE_DEVICES: config.nvidiaVisibleDevices,
      INSTANCES_PER_GPU: config.instancesPerGpu,
      WORKSPACE_PATH: config.workspacePath,
      COMFYUI_PATH: config.comfyuiPath,
      CUSTOM_NODES_CONFIG: config.manifestPath,
      SECRETS_ENV_FILE: config.secretsEnvFile,
      GPU_BOOT_STATE_DIR: config.stateDir,
      COMFYUI_LISTEN: config.comfyuiListen,
      COMFYUI_PORT_START: config.portStart,
    },
  };
}

export function formatCheckReport(report: CheckReport): string {
  const lines: string[] = [];
  lines.push(`gpu-boot check: ${report.ok ? 'OK' : `FAILED (${report.problems.length} problem${report.problems.length === 1 ? '' : 's'})`}`);
  lines.push('configuration:');
  for (const [k, v] of Object.entries(report.config)) if (v !== undefined) lines.push(`  ${k}=${v}`);
  if (report.gpus) {
    const g = report.gpus;
    lines.push(`GPUs (${g.source}): ${g.count} x ${g.model}, ${g.memoryGb} GiB each${g.driver ? `, driver ${g.driver}` : ''}`);
    lines.push(`devices used: ${g.used.length} of ${g.selection.devices.length}: ${g.used.map((d) => `${d.id} (${d.uuid})`).join(', ')}`);
    lines.push(`NVIDIA_VISIBLE_DEVICES: ${g.selection.nvidiaCheck}`);
  }
  lines.push(`custom nodes with a .env: ${report.nodes.length}`);
  for (const node of report.nodes) {
    lines.push(`  ${node.name} -> ${node.file}`);
    for (const key of node.keys) lines.push(`    ${key.key}=******** (from ${key.from.join(', ')})`);
  }
  for (const name of report.skipped) lines.push(`  ${name}: not installed, skipped`);
  if (report.variables.length) {
    lines.push('secret sources:');
    for (const v of report.variables) lines.push(`  ${v.variable} <- ${v.source}`);
  }
  if (report.warnings.length) {
    lines.push('warnings:');
    for (const w of report.warnings) lines.push(`  - ${w}`);
  }
  if (report.problems.length) {
    lines.push('problems:');
    for (const p of report.problems) lines.push(`  - ${p}`);
  }
  return `${lines.join('\n')}\n`;
}
