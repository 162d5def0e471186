import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { parseComfyArgs, reservedFlagProblems } from './comfy-args.js';
import type { GpuDetection } from '../gpus/detect.js';

export { parseComfyArgs, probeHost } from './comfy-args.js';

/**
 * The plan: which instances run, on which GPU and port, with which arguments.
 * It holds no secret: it is written to the state folder for ecosystem.config.cjs
 * (the one place PM2 apps are declared) and printed by `gpu-boot plan`.
 */

export const APP_PREFIX = 'comfyui-gpu';
export const PLAN_FILE_NAME = 'plan.json';

/** The launcher that puts declared keys in an instance's environment without passing them through PM2. */
export const LAUNCHER = fileURLToPath(new URL('../../launcher/exec-with-env.py', import.meta.url));

export interface ProcessEnvSource {
  /** A node's .env */
  file: string;
  keys: string[];
}

export interface PlanOptions {
  /** The user the instances run as (gpu-boot as root); absent: as gpu-boot. */
  owner?: { uid: number; gid: number };
  processEnv?: ProcessEnvSource[];
}

/** A ComfyUI folder of one instance: shared by all instances (in COMFYUI_PATH) or its own. */
export interface InstanceFolder {
  path: string;
  shared: boolean;
}

export const INSTANCE_FOLDERS = ['output', 'input', 'user'] as const;
export type SharedFolderName = (typeof INSTANCE_FOLDERS)[number];

/** The folders an instance uses; `root` ($WORKSPACE_PATH/instances/<name>) is what --temp-directory names. */
export interface InstanceFolders {
  root: string;
  /** Always the instance's own: `<root>/temp` (ComfyUI empties it at start and exit). */
  temp: InstanceFolder;
  output: InstanceFolder;
  input: InstanceFolder;
  user: InstanceFolder;
}

export const INSTANCES_FOLDER = 'instances';

/** $WORKSPACE_PATH/instances/<name>: the folder of one instance's own ComfyUI folders. */
export function instanceRoot(workspacePath: string, name: string): string {
  return path.join(workspacePath, INSTANCES_FOLDER, name);
}

export function instanceFolders(config: Pick<Config, 'workspacePath' | 'comfyuiPath' | 'sharedFolders'>, name: string): InstanceFolders {
  const root = instanceRoot(config.workspacePath, name);
  const folder = (which: SharedFolderName): InstanceFolder =>
    config.sharedFolders.has(which) ? { path: path.join(config.comfyuiPath, which), shared: true } : { path: path.join(root, which), shared: false };
  return { root, temp: { path: path.join(root, 'temp'), shared: false }, output: folder('output'), input: folder('input'), user: folder('user') };
}

/** The folder flags gpu-boot passes: --temp-directory always, one per folder that is not shared. */
export function folderArgs(folders: InstanceFolders): string[] {
  const args = ['--temp-directory', folders.root];
  for (const which of INSTANCE_FOLDERS) if (!folders[which].shared) args.push(`--${which}-directory`, folders[which].path);
  return args;
}

export interface InstancePlan {
  name: string;
  gpuIndex: number;
  port: number;
  cwd: string;
  script: string;
  interpreter: string;
  args: string[];
  /** Its temp folder (its own), and its output, input and user folders (shared or its own). */
  folders: InstanceFolders;
  /** Added to the instance's environment; nothing else from the plan reaches it. */
  env: Record<string, string>;
  uid?: number;
  gid?: number;
}

export interface Plan {
  version: 1;
  mode: 'actual' | 'mock';
  pm2: {
    killTimeoutMs: number;
    restartDelayMs: number;
    /** Up this long counts as a stable start (resets PM2's unstable-restart count). */
    minUptimeMs: number;
    maxRestarts: number;
  };
  /** Names (never values) of the variables that carried secrets: filtered out of every instance's environment. */
  withheldVariables: string[];
  instances: InstancePlan[];
}

export function buildPlan(config: Config, gpus: GpuDetection, withheldVariables: string[], options: PlanOptions = {}): Plan {
  const main = path.join(config.comfyuiPath, 'main.py');
  const sources = (options.processEnv ?? []).filter((s) => s.keys.length > 0);
  // With keys to pass, the launcher runs first and execs main.py; the values never appear in the plan.
  const launch = sources.length
    ? { script: LAUNCHER, prefix: [...sources.flatMap((s) => ['--from', `${s.file}:${s.keys.join(',')}`]), '--', main] }
    : { script: main, prefix: [] as string[] };
  const problems: string[] = [];
  let extra: string[] = [];
  try {
    extra = parseComfyArgs(config.comfyArgs);
    // The flags gpu-boot sets itself: argparse keeps the last of a flag given twice, so COMFY_ARGS would win.
    problems.push(...reservedFlagProblems(extra));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(...error.problems);
  }
  const lastPort = config.portStart + gpus.count - 1;
  if (lastPort > 65535) problems.push(`COMFYUI_PORT_START: ${gpus.count} instances need ports up to ${lastPort}, above 65535`);
  if (problems.length) throw new ConfigError('invalid configuration', problems);
  const instances = gpus.gpus.map((gpu, i): InstancePlan => {
    const port = config.portStart + i;
    const device = config.gpuMode === 'mock' ? ['--cpu'] : ['--cuda-device', String(gpu.index)];
    const name = `${APP_PREFIX}${i}`;
    const folders = instanceFolders(config, name);
    return {
      name,
      gpuIndex: gpu.index,
      port,
      cwd: config.comfyuiPath,
      script: launch.script,
      interpreter: config.comfyuiPython,
      args: [...launch.prefix, '--listen', config.comfyuiListen, '--port', String(port), ...device, ...folderArgs(folders), ...extra],
      folders,
      ...(options.owner ? { uid: options.owner.uid, gid: options.owner.gid } : {}),
      env: {
        // nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is fastest first.
        CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
        CUDA_VISIBLE_DEVICES: config.gpuMode === 'mock' ? '' : String(gpu.index),
        GPU_INDEX: String(gpu.index),
        GPU_MODEL: gpu.name,
        GPU_MEMORY_GB: String(Math.round((gpu.memoryMiB / 1024) * 10) / 10),
        COMFYUI_PORT: String(port),
      },
    };
  });
  return {
    version: 1,
    mode: config.gpuMode,
    pm2: {
      killTimeoutMs: config.killTimeoutMs,
      restartDelayMs: config.restartDelayMs,
      minUptimeMs: 10_000,
      maxRestarts: 1_000_000,
    },
    withheldVariables,
    instances,
  };
}

export function planPath(stateDir: string): string {
  return path.join(stateDir, PLAN_FILE_NAME);
}
