import { describe, expect, it } from 'vitest';
import * as z from 'zod';
import { isNeverSecret, loadConfig, loadConfigBestEffort, SETTING_NAMES, type Config } from '../src/config.js';
import { ConfigError } from '../src/errors.js';
import { expectConfigError } from './helpers/errors.js';

function configError(env: NodeJS.ProcessEnv): ConfigError {
  return expectConfigError(() => loadConfig(env));
}

const killProblem = (limit: number) =>
  `COMFYUI_KILL_TIMEOUT_MS: must be at most SHUTDOWN_TIMEOUT_MS minus max(1000, SHUTDOWN_TIMEOUT_MS/4) (${limit} ms here), so the wipe still fits in the shutdown budget`;

const DEFAULTS: Config = {
  gpuMode: 'actual',
  numGpusHint: undefined,
  gpuMemoryGbHint: undefined,
  gpuModelHint: undefined,
  cudaVisibleDevices: undefined,
  cudaDeviceOrder: undefined,
  nvidiaVisibleDevices: undefined,
  instancesPerGpu: 1,
  minInstanceMemoryGb: 8,
  workspacePath: '/workspace',
  comfyuiPath: '/workspace/ComfyUI',
  customNodesPath: '/workspace/ComfyUI/custom_nodes',
  manifestPath: '/workspace/config_nodes.json',
  manifestExplicit: false,
  secretsEnvFile: undefined,
  stateDir: '/workspace/.gpu-boot',
  comfyuiPython: 'python3',
  comfyuiListen: '0.0.0.0',
  portStart: 8188,
  comfyArgs: '',
  killTimeoutMs: 5000,
  restartDelayMs: 1000,
  shutdownTimeoutMs: 8000,
  readyTimeoutMs: 600_000,
  nvidiaSmiPath: 'nvidia-smi',
  nvidiaSmiTimeoutMs: 10_000,
  logLevel: 'info',
  pm2Home: undefined,
  secretsTmpfs: 'auto',
  comfyuiUser: undefined,
  allowShortSecrets: new Set<string>(),
  healthPort: 9090,
  healthBind: '0.0.0.0',
  rotation: 'restart',
  rotationDebounceMs: 500,
  crashLoopLimit: 5,
  readyMinInstances: 'all',
  healthAllFailedMs: 600_000,
  healthEventLoopStallMs: 5000,
  supervisorIntervalMs: 5000,
  hangTimeoutMs: 5000,
  hangProbes: 3,
  promptStallMs: 0,
  restartLimit: 10,
  restartWindowMs: 600_000,
  rotationDrainMs: 60_000,
  gpuWatchdogIntervalMs: 30_000,
  gpuWatchdogFailures: 3,
  saladImdsUrl: 'http://169.254.169.254',
  readyRequiresNodes: { kind: 'env' },
  sharedFolders: new Set(['output', 'input', 'user']),
  warnings: [],
};

describe('zod', () => {
  it('parses without compiling schemas into functions (jitless: faster for the few parses a boot makes)', () => {
    // Set by src/config.ts as it loads (imported above), for every schema of the process.
    expect(z.config().jitless).toBe(true);
  });
});

describe('loadConfig defaults', () => {
  it('gives the documented defaults for an empty environment', () => {
    expect(loadConfig({}, '/somewhere/else')).toEqual(DEFAULTS);
  });

  it('treats empty and blank strings as unset, for every kind of setting', () => {
    const blank: NodeJS.ProcessEnv = {};
    for (const name of [
      'GPU_MODE',
      'NUM_GPUS',
      'GPU_MEMORY_GB',
      'GPU_MODEL',
      'WORKSPACE_PATH',
      'COMFYUI_PATH',
      'CUSTOM_NODES_CONFIG',
      'SECRETS_ENV_FILE',
      'GPU_BOOT_STATE_DIR',
      'COMFYUI_PYTHON',
      'COMFYUI_LISTEN',
      'COMFY_ARGS',
      'NVIDIA_SMI_PATH',
      'LOG_LEVEL',
      'PM2_HOME',
    ]) {
      blank[name] = '';
    }
    // Integer settings, with and without a default.
    for (const name of [
      'COMFYUI_PORT_START',
      'COMFYUI_KILL_TIMEOUT_MS',
      'COMFYUI_RESTART_DELAY_MS',
      'SHUTDOWN_TIMEOUT_MS',
      'READY_TIMEOUT_MS',
      'NVIDIA_SMI_TIMEOUT_MS',
    ]) {
      blank[name] = '  ';
    }
    expect(loadConfig(blank, '/cwd')).toEqual(DEFAULTS);
  });

  it('treats an empty NUM_GPUS as unset', () => {
    expect(loadConfig({ NUM_GPUS: '' }).numGpusHint).toBeUndefined();
    expect(loadConfig({ NUM_GPUS: '4' }).numGpusHint).toBe(4);
  });
});

describe('loadConfig paths', () => {
  it('derives every path from WORKSPACE_PATH', () => {
    const c = loadConfig({ WORKSPACE_PATH: '/data/ws' });
    expect(c.workspacePath).toBe('/data/ws');
    expect(c.comfyuiPath).toBe('/data/ws/ComfyUI');
    expect(c.customNodesPath).toBe('/data/ws/ComfyUI/custom_nodes');
    expect(c.manifestPath).toBe('/data/ws/config_nodes.json');
    expect(c.stateDir).toBe('/data/ws/.gpu-boot');
  });

  it('COMFYUI_PATH moves custom_nodes with it; an explicit manifest is marked as such', () => {
    const c = loadConfig({ WORKSPACE_PATH: '/data/ws', COMFYUI_PATH: '/opt/comfy', CUSTOM_NODES_CONFIG: '/etc/nodes.json' });
    expect(c.comfyuiPath).toBe('/opt/comfy');
    expect(c.customNodesPath).toBe('/opt/comfy/custom_nodes');
    expect(c.manifestPath).toBe('/etc/nodes.json');
    expect(c.manifestExplicit).toBe(true);
    expect(c.stateDir).toBe('/data/ws/.gpu-boot');
  });

  it('resolves relative paths against the cwd argument', () => {
    const c = loadConfig(
      {
        WORKSPACE_PATH: 'ws',
        COMFYUI_PATH: '../comfy',
        CUSTOM_NODES_CONFIG: 'conf/nodes.json',
        SECRETS_ENV_FILE: './secrets.env',
        GPU_BOOT_STATE_DIR: 'state',
        PM2_HOME: '.pm2',
      },
      '/srv/app',
    );
    expect(c.workspacePath).toBe('/srv/app/ws');
    expect(c.comfyuiPath).toBe('/srv/comfy');
    expect(c.customNodesPath).toBe('/srv/comfy/custom_nodes');
    expect(c.manifestPath).toBe('/srv/app/conf/nodes.json');
    expect(c.secretsEnvFile).toBe('/srv/app/secrets.env');
    expect(c.stateDir).toBe('/srv/app/state');
    expect(c.pm2Home).toBe('/srv/app/.pm2');
  });

  it('a relative WORKSPACE_PATH carries into the derived paths', () => {
    const c = loadConfig({ WORKSPACE_PATH: 'ws' }, '/srv/app');
    expect(c.comfyuiPath).toBe('/srv/app/ws/ComfyUI');
    expect(c.manifestPath).toBe('/srv/app/ws/config_nodes.json');
    expect(c.stateDir).toBe('/srv/app/ws/.gpu-boot');
  });
});

describe('loadConfig values', () => {
  it('reads GPU_MODE and LOG_LEVEL case-insensitively', () => {
    expect(loadConfig({ GPU_MODE: 'MOCK' }).gpuMode).toBe('mock');
    expect(loadConfig({ GPU_MODE: ' Actual ' }).gpuMode).toBe('actual');
    expect(loadConfig({ LOG_LEVEL: 'DEBUG' }).logLevel).toBe('debug');
  });

  it('reads the numbers and hints', () => {
    const c = loadConfig({
      NUM_GPUS: '8',
      GPU_MEMORY_GB: '79.6',
      GPU_MODEL: '  NVIDIA H100 80GB HBM3 ',
      COMFYUI_PORT_START: '9000',
      COMFYUI_KILL_TIMEOUT_MS: '2000',
      SHUTDOWN_TIMEOUT_MS: '3000',
      NVIDIA_SMI_TIMEOUT_MS: '300',
    });
    expect(c.numGpusHint).toBe(8);
    expect(c.gpuMemoryGbHint).toBe(79.6);
    expect(c.gpuModelHint).toBe('NVIDIA H100 80GB HBM3');
    expect(c.portStart).toBe(9000);
    expect(c.killTimeoutMs).toBe(2000);
    expect(c.shutdownTimeoutMs).toBe(3000);
    expect(c.nvidiaSmiTimeoutMs).toBe(300);
  });
});

describe('loadConfig problems', () => {
  it('reports every problem at once, each starting with its variable', () => {
    const error = configError({ GPU_MODE: 'gpu', COMFYUI_PORT_START: '70000', NUM_GPUS: 'zero', LOG_LEVEL: 'loud' });
    expect(error.message).toBe('invalid configuration (4 problems)');
    expect([...error.problems].sort()).toEqual([
      'COMFYUI_PORT_START: must be at most 65535',
      'GPU_MODE: must be "actual" or "mock"',
      'LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent',
      'NUM_GPUS: expected a whole number',
    ]);
  });

  it('says "1 problem" for one', () => {
    const error = configError({ GPU_MODE: 'mock', NUM_GPUS: '0' });
    expect(error.message).toBe('invalid configuration (1 problem)');
    expect(error.problems).toEqual(['NUM_GPUS: must be at least 1']);
  });

  it('refuses fractions where a whole number is needed', () => {
    expect(configError({ GPU_MODE: 'mock', NUM_GPUS: '1.5' }).problems).toEqual(['NUM_GPUS: expected a whole number']);
    expect(configError({ GPU_MODE: 'mock', GPU_MEMORY_GB: '-8' }).problems).toEqual(['GPU_MEMORY_GB: must be a positive number']);
  });

  it('refuses a kill timeout that leaves less than max(1 s, a quarter) of the shutdown budget', () => {
    expect(configError({ COMFYUI_KILL_TIMEOUT_MS: '6001' }).problems).toEqual([killProblem(6000)]);
    expect(loadConfig({ COMFYUI_KILL_TIMEOUT_MS: '6000' }).killTimeoutMs).toBe(6000);
    expect(configError({ COMFYUI_KILL_TIMEOUT_MS: '2001', SHUTDOWN_TIMEOUT_MS: '3000' }).problems).toEqual([killProblem(2000)]);
    expect(loadConfig({ COMFYUI_KILL_TIMEOUT_MS: '2000', SHUTDOWN_TIMEOUT_MS: '3000' }).killTimeoutMs).toBe(2000);
  });

  it('reports the kill-timeout problem together with problems in other variables', () => {
    const error = configError({ GPU_MODE: 'mock', COMFYUI_KILL_TIMEOUT_MS: '7500', NUM_GPUS: 'x' });
    expect(error.problems).toEqual(['NUM_GPUS: expected a whole number', killProblem(6000)]);
  });

  it('does not compare timeouts when one of them is itself invalid', () => {
    expect(configError({ COMFYUI_KILL_TIMEOUT_MS: 'soon', SHUTDOWN_TIMEOUT_MS: '2000' }).problems).toEqual([
      'COMFYUI_KILL_TIMEOUT_MS: expected a whole number',
    ]);
  });

  it('never echoes the offending value', () => {
    const canary = 's3cr3t-canary';
    const error = configError({
      COMFYUI_PORT_START: canary,
      GPU_MODE: canary,
      NUM_GPUS: canary,
      GPU_MEMORY_GB: canary,
      COMFYUI_LISTEN: `${canary} !`,
      LOG_LEVEL: canary,
      NVIDIA_SMI_TIMEOUT_MS: canary,
    });
    expect(error.problems).toHaveLength(7);
    for (const problem of error.problems) expect(problem).not.toContain(canary);
    expect(error.message).not.toContain(canary);
    expect(error.problems).toContain('COMFYUI_PORT_START: expected a whole number');
  });
});

describe('platform hints in actual mode', () => {
  it('a malformed NUM_GPUS or GPU_MEMORY_GB is a warning, not a refusal: detection decides', () => {
    const config = loadConfig({ NUM_GPUS: '0', GPU_MEMORY_GB: '80GB' });
    expect(config.numGpusHint).toBeUndefined();
    expect(config.gpuMemoryGbHint).toBeUndefined();
    expect(config.warnings).toEqual([
      'NUM_GPUS: must be at least 1; ignored (a platform hint: detection decides)',
      'GPU_MEMORY_GB: expected a number; ignored (a platform hint: detection decides)',
    ]);
  });

  it('other problems are still reported', () => {
    expect(configError({ NUM_GPUS: '0', COMFYUI_PORT_START: '0' }).problems).toEqual(['COMFYUI_PORT_START: must be at least 1']);
  });
});

describe('loadConfigBestEffort: the valid settings, and the default of each invalid one', () => {
  it('keeps the valid settings and puts defaults in place of the invalid ones', () => {
    const config = loadConfigBestEffort({ WORKSPACE_PATH: '/ws', COMFYUI_PORT_START: 'abc', GPU_MODE: 'gpu', CUSTOM_NODES_CONFIG: '/m.json', ALLOW_SHORT_SECRETS: 'A' });
    expect(config).toEqual({
      ...DEFAULTS,
      workspacePath: '/ws',
      comfyuiPath: '/ws/ComfyUI',
      customNodesPath: '/ws/ComfyUI/custom_nodes',
      manifestPath: '/m.json',
      manifestExplicit: true,
      stateDir: '/ws/.gpu-boot',
      allowShortSecrets: new Set(['A']),
    });
  });

  it('gives up a pair of settings that clash even at their defaults', () => {
    // COMFYUI_KILL_TIMEOUT_MS at its default (5000) still leaves no room in a 2000 ms budget.
    const config = loadConfigBestEffort({ COMFYUI_KILL_TIMEOUT_MS: '9000', SHUTDOWN_TIMEOUT_MS: '2000', WORKSPACE_PATH: '/ws' });
    expect([config.killTimeoutMs, config.shutdownTimeoutMs]).toEqual([5000, 8000]);
  });

  it('is loadConfig on a valid environment', () => {
    expect(loadConfigBestEffort({ GPU_MODE: 'mock', NUM_GPUS: '3' })).toEqual(loadConfig({ GPU_MODE: 'mock', NUM_GPUS: '3' }));
  });
});

describe('isNeverSecret', () => {
  it('is true for every setting the schema reads and the basic process variables', () => {
    expect(SETTING_NAMES).toContain('WORKSPACE_PATH');
    for (const name of [...SETTING_NAMES, 'HOME', 'PATH', 'USER', 'LOGNAME', 'SHELL', 'PWD', 'LANG', 'LANGUAGE', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TERM', 'HOSTNAME', 'TMPDIR']) {
      expect({ name, neverSecret: isNeverSecret(name) }).toEqual({ name, neverSecret: true });
    }
  });

  it('is false for anything else', () => {
    for (const name of ['HF_TOKEN', 'STAGE', 'HOME_FILE', 'PATH_ENCODED', 'LC_ALL_FILE', 'home', 'LC_']) {
      expect({ name, neverSecret: isNeverSecret(name) }).toEqual({ name, neverSecret: false });
    }
  });
});

describe('issue 11 settings', () => {
  it('READY_REQUIRES_NODES: env, all, none or names; COMFYUI_SHARED_FOLDERS: a subset or none; CRASH_LOOP_LIMIT: a count', () => {
    expect(loadConfig({ READY_REQUIRES_NODES: 'a_node,b-node' }).readyRequiresNodes).toEqual({ kind: 'list', nodes: ['a_node', 'b-node'] });
    expect(loadConfig({ READY_REQUIRES_NODES: 'none' }).readyRequiresNodes).toEqual({ kind: 'none' });
    expect([...loadConfig({ COMFYUI_SHARED_FOLDERS: 'output' }).sharedFolders]).toEqual(['output']);
    expect([...loadConfig({ COMFYUI_SHARED_FOLDERS: 'none' }).sharedFolders]).toEqual([]);
    expect(loadConfig({ CRASH_LOOP_LIMIT: '0' }).crashLoopLimit).toBe(0);
    expect(() => loadConfig({ COMFYUI_SHARED_FOLDERS: 'output,temp', READY_REQUIRES_NODES: 'a, b', CRASH_LOOP_LIMIT: '-1' })).toThrow(
      expect.objectContaining({
        problems: expect.arrayContaining([
          'COMFYUI_SHARED_FOLDERS: must be a comma-separated list of output, input, user, or "none"',
          'READY_REQUIRES_NODES: must be "env", "all", "none" or a comma-separated list of node names',
          expect.stringMatching(/^CRASH_LOOP_LIMIT: /),
        ]),
      }),
    );
  });
});
