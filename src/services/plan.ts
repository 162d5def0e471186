import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseShellWords } from 'shell-quote';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import type { GpuDetection } from './hardware.js';

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

export interface InstancePlan {
  name: string;
  gpuIndex: number;
  port: number;
  cwd: string;
  script: string;
  interpreter: string;
  args: string[];
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

export function parseComfyArgs(text: string): string[] {
  const words = parseShellWords(text);
  const args: string[] = [];
  for (const word of words) {
    if (typeof word !== 'string') {
      throw new ConfigError('invalid configuration', [
        'COMFY_ARGS: contains shell operators or comments; give plain arguments (quote them as in a shell)',
      ]);
    }
    args.push(word);
  }
  return args;
}

/** Probe address for a listen address: a wildcard listener is reached on loopback. */
export function probeHost(listen: string): string {
  if (listen === '0.0.0.0') return '127.0.0.1';
  if (listen === '::' || listen === '[::]') return '::1';
  return listen.replace(/^\[(.*)\]$/, '$1');
}

export function buildPlan(config: Config, gpus: GpuDetection, withheldVariables: string[], options: PlanOptions = {}): Plan {
  const main = path.join(config.comfyuiPath, 'main.py');
  const sources = (options.processEnv ?? []).filter((s) => s.keys.length > 0);
  // With keys to pass, the launcher runs first and execs main.py; the values never appear in the plan.
  const launch = sources.length
    ? { script: LAUNCHER, prefix: [...sources.flatMap((s) => ['--from', `${s.file}:${s.keys.join(',')}`]), '--', main] }
    : { script: main, prefix: [] as string[] };
  const extra = parseComfyArgs(config.comfyArgs);
  const lastPort = config.portStart + gpus.count - 1;
  if (lastPort > 65535) {
    throw new ConfigError('invalid configuration', [
      `COMFYUI_PORT_START: ${gpus.count} instances need ports up to ${lastPort}, above 65535`,
    ]);
  }
  const instances = gpus.gpus.map((gpu, i): InstancePlan => {
    const port = config.portStart + i;
    const device = config.gpuMode === 'mock' ? ['--cpu'] : ['--cuda-device', String(gpu.index)];
    return {
      name: `${APP_PREFIX}${i}`,
      gpuIndex: gpu.index,
      port,
      cwd: config.comfyuiPath,
      script: launch.script,
      interpreter: config.comfyuiPython,
      args: [...launch.prefix, '--listen', config.comfyuiListen, '--port', String(port), ...device, ...extra],
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
