import path from 'node:path';
import { SETTINGS_NOT_FOR_INSTANCES, type Config } from '../config.js';
import { ConfigError } from '../errors.js';
import { parseComfyArgs, reservedFlagProblems } from './comfy-args.js';
import { gib, type GpuDetection } from '../gpus/detect.js';
import type { Device } from '../gpus/placement.js';
import { PACKAGE_ROOT } from '../package-root.js';

export { parseComfyArgs, probeHost } from './comfy-args.js';

/**
 * The plan: which instances run, on which GPU and port, with which arguments.
 * It holds no secret: it is written to the state folder for ecosystem.config.cjs
 * (the one place PM2 apps are declared) and printed by `gpu-boot plan`.
 */

/** Every instance's name starts so: `comfyui-gpu0`, `comfyui-gpu0-mig3`, `comfyui-gpu1-s0`. */
export const APP_PREFIX = 'comfyui-gpu';
export const PLAN_FILE_NAME = 'plan.json';

/** The launcher that puts declared keys in an instance's environment without passing them through PM2. */
export const LAUNCHER = path.join(PACKAGE_ROOT, 'launcher', 'exec-with-env.py');

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

/** The device an instance is pinned to, as the plan and /status show it. */
export type InstanceDevice = Pick<Device, 'id' | 'kind' | 'gpuIndex' | 'migIndex' | 'profile' | 'uuid' | 'name' | 'memoryMiB'>;

export interface InstancePlan {
  name: string;
  gpuIndex: number;
  device: InstanceDevice;
  /** Its place among the INSTANCES_PER_GPU instances of its device, from 0. */
  slot: number;
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
  /** gpu-boot's own settings (names), left out of every instance's environment: not secrets, just not theirs. */
  ownSettings: readonly string[];
  /** How the instances are laid out on the devices, and what does not fit well. */
  layout: {
    instancesPerGpu: number;
    devices: number;
    minInstanceMemoryGb: number;
    warnings: string[];
  };
  instances: InstancePlan[];
}

/** What INSTANCES_PER_GPU leaves each instance of `device`, against the floor: a problem (refused), a warning, or nothing. */
function memoryFit(config: Config, device: Device): { problem?: string; warning?: string } {
  const floor = config.minInstanceMemoryGb;
  const slots = config.instancesPerGpu;
  const shareGib = device.memoryMiB / 1024 / slots;
  // Mock instances run on CPU: no device memory to share.
  if (floor <= 0 || config.gpuMode === 'mock' || shareGib >= floor) return {};
  // Rounded down, so a share just below the floor never reads as the floor itself.
  const share = Math.floor(shareGib * 10) / 10;
  const what = `${device.id} (${device.name}, ${gib(device.memoryMiB)} GiB)`;
  if (slots > 1) {
    return { problem: `INSTANCES_PER_GPU=${slots}: ${what} leaves ${share} GiB per instance, below MIN_INSTANCE_MEMORY_GB=${floor}; run fewer instances per device, or lower the floor` };
  }
  return { warning: `${what} has less than MIN_INSTANCE_MEMORY_GB=${floor} GiB for its one instance; large models may not fit` };
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
  const slots = config.instancesPerGpu;
  const count = gpus.used.length * slots;
  const lastPort = config.portStart + count - 1;
  if (lastPort > 65535) problems.push(`COMFYUI_PORT_START: ${count} instances need ports up to ${lastPort}, above 65535`);
  const warnings: string[] = [];
  for (const device of gpus.used) {
    const fit = memoryFit(config, device);
    if (fit.problem) problems.push(fit.problem);
    if (fit.warning) warnings.push(fit.warning);
  }
  if (problems.length) throw new ConfigError('invalid configuration', problems);
  const instances = gpus.used.flatMap((device, d) =>
    Array.from({ length: slots }, (_, slot): InstancePlan => {
      const port = config.portStart + d * slots + slot;
      // Pinned by UUID in CUDA_VISIBLE_DEVICES only: ComfyUI's --cuda-device N would overwrite it with N.
      const deviceArgs = config.gpuMode === 'mock' ? ['--cpu'] : [];
      // A device's id starts with `gpu`, so every name starts with APP_PREFIX.
      const name = `comfyui-${device.id}${slots === 1 ? '' : `-s${slot}`}`;
      const folders = instanceFolders(config, name);
      return {
        name,
        gpuIndex: device.gpuIndex,
        device: { id: device.id, kind: device.kind, gpuIndex: device.gpuIndex, migIndex: device.migIndex, profile: device.profile, uuid: device.uuid, name: device.name, memoryMiB: device.memoryMiB },
        slot,
        port,
        cwd: config.comfyuiPath,
        script: launch.script,
        interpreter: config.comfyuiPython,
        args: [...launch.prefix, '--listen', config.comfyuiListen, '--port', String(port), ...deviceArgs, ...folderArgs(folders), ...extra],
        folders,
        ...(options.owner ? { uid: options.owner.uid, gid: options.owner.gid } : {}),
        env: {
          // nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is fastest first.
          CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
          // By UUID; by its index (PCI bus order, as CUDA_DEVICE_ORDER says) only where no UUID is known (systeminformation).
          CUDA_VISIBLE_DEVICES: config.gpuMode === 'mock' ? '' : device.uuid || String(device.gpuIndex),
          GPU_INDEX: String(device.gpuIndex),
          GPU_UUID: device.uuid,
          GPU_DEVICE: device.id,
          GPU_SLOT: String(slot),
          GPU_MODEL: device.name,
          GPU_MEMORY_GB: String(gib(device.memoryMiB)),
          COMFYUI_PORT: String(port),
        },
      };
    }),
  );
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
    ownSettings: SETTINGS_NOT_FOR_INSTANCES,
    layout: { instancesPerGpu: slots, devices: gpus.used.length, minInstanceMemoryGb: config.minInstanceMemoryGb, warnings },
    instances,
  };
}

export function planPath(stateDir: string): string {
  return path.join(stateDir, PLAN_FILE_NAME);
}
