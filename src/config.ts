import path from 'node:path';
import * as z from 'zod';
import { ConfigError } from './errors.js';
import { CUDA_ENTRY, visibleEntries } from './gpus/placement.js';
import { parseListen } from './instances/comfy-args.js';

// zod compiles each object schema into a function (new Function) on its first parse, which pays off
// only over many parses: gpu-boot parses each of its schemas a few times. Without it the
// configuration parses in ~9 ms instead of ~15 (bench/RESULTS.md), with the same results.
z.config({ jitless: true });

/**
 * The one schema for every setting. Each entry: the variable, its default, what
 * it means. `gpu-boot --help` and the README's table are written from SETTINGS_DOC.
 * Empty strings count as unset: platforms often pass `VAR=` for "not given".
 */
const blankToUndefined = (value: unknown): unknown =>
  typeof value === 'string' && value.trim() === '' ? undefined : value;

const optionalString = z.preprocess(blankToUndefined, z.string().optional());
const wholeNumber = (min: number, max: number) =>
  z.coerce
    .number({ error: 'expected a whole number' })
    .int({ error: 'expected a whole number' })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });
// The blank check must wrap .optional()/.default(): those only see `undefined`, not `''`.
const optionalInt = (min: number, max: number) => z.preprocess(blankToUndefined, wholeNumber(min, max).optional());
const int = (min: number, max: number, fallback: number) =>
  z.preprocess(blankToUndefined, wholeNumber(min, max).default(fallback));

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const EnvSchema = z
  .object({
    GPU_MODE: z.preprocess(
      (v) => (typeof v === 'string' ? blankToUndefined(v.trim().toLowerCase()) : v),
      z.enum(['actual', 'mock'], { error: 'must be "actual" or "mock"' }).default('actual'),
    ),
    NUM_GPUS: optionalInt(1, 64),
    GPU_MEMORY_GB: z.preprocess(
      blankToUndefined,
      z.coerce.number({ error: 'expected a number' }).positive({ error: 'must be a positive number' }).optional(),
    ),
    GPU_MODEL: optionalString,
    // The platform's device restriction. Not blank-to-unset: CUDA reads an empty value as "no device".
    // Its entries are checked below, in actual mode only: mock mode applies neither variable.
    CUDA_VISIBLE_DEVICES: z.string().optional(),
    CUDA_DEVICE_ORDER: optionalString,
    NVIDIA_VISIBLE_DEVICES: z.string().optional(),
    INSTANCES_PER_GPU: int(1, 16, 1),
    MIN_INSTANCE_MEMORY_GB: z.preprocess(
      blankToUndefined,
      z.coerce.number({ error: 'expected a number' }).min(0, { error: 'must be at least 0' }).default(8),
    ),
    WORKSPACE_PATH: z.preprocess(blankToUndefined, z.string().default('/workspace')),
    COMFYUI_PATH: optionalString,
    CUSTOM_NODES_CONFIG: optionalString,
    SECRETS_ENV_FILE: optionalString,
    GPU_BOOT_STATE_DIR: optionalString,
    COMFYUI_PYTHON: z.preprocess(blankToUndefined, z.string().default('python3')),
    // A comma-separated list, as ComfyUI's --listen takes; stored trimmed, IPv6 brackets dropped.
    COMFYUI_LISTEN: z.preprocess(
      blankToUndefined,
      z
        .string()
        .default('0.0.0.0')
        .transform((text, ctx) => {
          const { addresses, problem } = parseListen(text);
          if (problem) ctx.addIssue({ code: 'custom', message: problem });
          return addresses.join(',');
        }),
    ),
    COMFYUI_PORT_START: int(1, 65535, 8188),
    COMFY_ARGS: z.preprocess(blankToUndefined, z.string().default('')),
    COMFYUI_KILL_TIMEOUT_MS: int(100, 600_000, 5000),
    COMFYUI_RESTART_DELAY_MS: int(100, 60_000, 1000),
    SHUTDOWN_TIMEOUT_MS: int(1000, 3_600_000, 8000),
    READY_TIMEOUT_MS: int(1000, 86_400_000, 600_000),
    NVIDIA_SMI_PATH: z.preprocess(blankToUndefined, z.string().default('nvidia-smi')),
    NVIDIA_SMI_TIMEOUT_MS: int(100, 600_000, 10_000),
    LOG_LEVEL: z.preprocess(
      (v) => (typeof v === 'string' ? blankToUndefined(v.trim().toLowerCase()) : v),
      z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
    ),
    PM2_HOME: optionalString,
    SECRETS_TMPFS: z.preprocess(blankToUndefined, z.string().default('auto')),
    COMFYUI_USER: optionalString,
    ALLOW_SHORT_SECRETS: optionalString,
    HEALTH_PORT: int(0, 65535, 9090),
    HEALTH_BIND: z.preprocess(
      blankToUndefined,
      z.string().regex(/^[A-Za-z0-9.:[\]-]+$/, { error: 'must be an IP address or host name' }).default('0.0.0.0'),
    ),
    ROTATION: z.preprocess(
      (v) => (typeof v === 'string' ? blankToUndefined(v.trim().toLowerCase()) : v),
      z.enum(['restart', 'files', 'off'], { error: 'must be "restart", "files" or "off"' }).default('restart'),
    ),
    ROTATION_DEBOUNCE_MS: int(0, 60_000, 500),
    CRASH_LOOP_LIMIT: int(0, 10_000, 5),
    READY_MIN_INSTANCES: z.preprocess(
      (v) => (typeof v === 'string' ? blankToUndefined(v.trim().toLowerCase()) : v),
      z
        .union([z.literal('all'), z.coerce.number({ error: 'expected "all" or a whole number' }).int({ error: 'expected "all" or a whole number' }).min(1, { error: 'must be "all" or at least 1' }).max(1024)])
        .default('all'),
    ),
    HEALTH_ALL_FAILED_MS: int(0, 86_400_000, 600_000),
    HEALTH_EVENT_LOOP_STALL_MS: int(0, 600_000, 5000),
    SUPERVISOR_INTERVAL_MS: int(100, 600_000, 5000),
    HANG_TIMEOUT_MS: int(100, 600_000, 5000),
    HANG_PROBES: int(1, 1000, 3),
    PROMPT_STALL_MS: int(0, 86_400_000, 0),
    RESTART_LIMIT: int(0, 100_000, 10),
    RESTART_WINDOW_MS: int(1000, 86_400_000, 600_000),
    ROTATION_DRAIN_MS: int(0, 86_400_000, 60_000),
    GPU_WATCHDOG_INTERVAL_MS: int(0, 3_600_000, 30_000),
    GPU_WATCHDOG_FAILURES: int(1, 1000, 3),
    SALAD_IMDS_URL: z.preprocess(blankToUndefined, z.string().url({ error: 'must be a URL' }).default('http://169.254.169.254')),
    READY_REQUIRES_NODES: z.preprocess(
      blankToUndefined,
      z
        .string()
        .regex(/^(env|all|none|[^,\s/]+(,[^,\s/]+)*)$/, { error: 'must be "env", "all", "none" or a comma-separated list of node names' })
        .default('env'),
    ),
    COMFYUI_SHARED_FOLDERS: z.preprocess(
      (v) => (typeof v === 'string' ? v.trim().toLowerCase() : v),
      z
        .string()
        .regex(/^((output|input|user)(,(output|input|user))*|none)?$/, { error: 'must be a comma-separated list of output, input, user, or "none"' })
        .default('output,input,user'),
    ),
  })
  .superRefine((env, ctx) => {
    const visible = env.CUDA_VISIBLE_DEVICES;
    if (env.GPU_MODE === 'actual' && visible !== undefined && visible.trim() !== '') {
      const bad = visibleEntries(visible).filter((entry) => !CUDA_ENTRY.test(entry));
      if (bad.length) {
        ctx.addIssue({
          code: 'custom',
          path: ['CUDA_VISIBLE_DEVICES'],
          message: `${bad.map((e) => `"${e}"`).join(', ')} ${bad.length === 1 ? 'is' : 'are'} neither a GPU index nor a GPU-/MIG- UUID (CUDA would ignore it and every entry after it)`,
        });
      }
    }
  })
  .superRefine((env, ctx) => {
    // PM2 must be able to stop an instance gracefully inside the shutdown budget,
    // with time left to wipe the files and stop PM2 itself.
    // The runner keeps max(1000 ms, a quarter of the budget) for the wipe and PM2's own exit.
    const reserve = Math.max(1000, Math.floor(env.SHUTDOWN_TIMEOUT_MS / 4));
    if (env.COMFYUI_KILL_TIMEOUT_MS > env.SHUTDOWN_TIMEOUT_MS - reserve) {
      ctx.addIssue({
        code: 'custom',
        path: ['COMFYUI_KILL_TIMEOUT_MS'],
        message: `must be at most SHUTDOWN_TIMEOUT_MS minus max(1000, SHUTDOWN_TIMEOUT_MS/4) (${env.SHUTDOWN_TIMEOUT_MS - reserve} ms here), so the wipe still fits in the shutdown budget`,
      });
    }
  }, {
    // Zod skips this check when any field failed; run it whenever the two timeouts
    // themselves are valid, so every problem is reported at once.
    when: (payload) =>
      !payload.issues.some((i) => i.path?.[0] === 'COMFYUI_KILL_TIMEOUT_MS' || i.path?.[0] === 'SHUTDOWN_TIMEOUT_MS'),
  });

const HINT_SETTINGS = ['NUM_GPUS', 'GPU_MEMORY_GB'];

export type RawSettings = z.infer<typeof EnvSchema>;

/** The names the schema reads: the README and --help must document exactly these. */
export const SETTING_NAMES: readonly string[] = Object.keys(EnvSchema.shape);

/** The basic process variables: who and where the process is. Never a secret. */
export const PROCESS_VARIABLES: readonly string[] = ['HOME', 'PATH', 'USER', 'LOGNAME', 'SHELL', 'PWD', 'LANG', 'LANGUAGE', 'TZ', 'TERM', 'HOSTNAME', 'TMPDIR'];

const NEVER_SECRET = new Set([...SETTING_NAMES, ...PROCESS_VARIABLES]);

/**
 * gpu-boot's settings an instance may use too: where things are (the workspace, ComfyUI, PM2's
 * folder, nvidia-smi), the log level, and the devices' variables (the instances get their own CUDA_* anyway).
 */
const SETTINGS_FOR_INSTANCES = new Set(['WORKSPACE_PATH', 'COMFYUI_PATH', 'PM2_HOME', 'NVIDIA_SMI_PATH', 'LOG_LEVEL', 'CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER', 'NVIDIA_VISIBLE_DEVICES']);

/**
 * gpu-boot's own settings that no instance is given (HEALTH_PORT, GPU_MODE, COMFY_ARGS...): they are
 * gpu-boot's, and every variable in an instance's environment costs each node's load_dotenv()
 * (python-dotenv copies the whole environment for every key it reads: bench/RESULTS.md).
 */
export const SETTINGS_NOT_FOR_INSTANCES: readonly string[] = SETTING_NAMES.filter((name) => !SETTINGS_FOR_INSTANCES.has(name));

/**
 * gpu-boot's own settings and the basic process variables (LC_* included) are never secrets, even when
 * the manifest references them: never withheld from the instances as secrets (gpu-boot's settings are
 * left out of them all the same: SETTINGS_NOT_FOR_INSTANCES), never masked in logs, never refused as
 * too short to mask.
 */
export function isNeverSecret(name: string): boolean {
  // The locale categories: LC_ALL, LC_CTYPE, LC_MESSAGES... (LC_ALL_FILE is not one).
  return NEVER_SECRET.has(name) || /^LC_[A-Z]+$/.test(name);
}

export interface Config {
  gpuMode: 'actual' | 'mock';
  numGpusHint: number | undefined;
  gpuMemoryGbHint: number | undefined;
  gpuModelHint: string | undefined;
  /** The incoming CUDA_VISIBLE_DEVICES (undefined: not set): the devices to use. */
  cudaVisibleDevices: string | undefined;
  /** The incoming CUDA_DEVICE_ORDER: how CUDA_VISIBLE_DEVICES' indices were meant (the instances always get PCI_BUS_ID). */
  cudaDeviceOrder: string | undefined;
  /** The incoming NVIDIA_VISIBLE_DEVICES: a cross-check of what nvidia-smi lists, never a filter. */
  nvidiaVisibleDevices: string | undefined;
  /** Instances on each device (whole GPU or MIG device). */
  instancesPerGpu: number;
  /** GiB of device memory an instance needs: below it, more than one instance per device is refused (one is a warning). */
  minInstanceMemoryGb: number;
  workspacePath: string;
  comfyuiPath: string;
  customNodesPath: string;
  manifestPath: string;
  /** false when CUSTOM_NODES_CONFIG was not set: a missing default manifest means no node needs secrets. */
  manifestExplicit: boolean;
  secretsEnvFile: string | undefined;
  stateDir: string;
  comfyuiPython: string;
  /** The listen addresses, comma-separated (trimmed, IPv6 brackets dropped): what --listen gets. */
  comfyuiListen: string;
  portStart: number;
  comfyArgs: string;
  killTimeoutMs: number;
  restartDelayMs: number;
  shutdownTimeoutMs: number;
  readyTimeoutMs: number;
  nvidiaSmiPath: string;
  nvidiaSmiTimeoutMs: number;
  logLevel: (typeof LOG_LEVELS)[number];
  pm2Home: string | undefined;
  /** 'auto' (a writable tmpfs: /dev/shm, then /run), 'off' (files in place), or a folder. */
  secretsTmpfs: string;
  comfyuiUser: string | undefined;
  /** 0: no health server. */
  healthPort: number;
  healthBind: string;
  /** restart: rewrite changed files and roll the instances; files: rewrite only; off: ignore changes. */
  rotation: 'restart' | 'files' | 'off';
  rotationDebounceMs: number;
  /** Identical failures at start of every instance after which the boot gives up with 78 (0: never). */
  crashLoopLimit: number;
  /** /ready's rule: every instance, or at least N of them. */
  readyMinInstances: number | 'all';
  healthAllFailedMs: number;
  healthEventLoopStallMs: number;
  supervisorIntervalMs: number;
  hangTimeoutMs: number;
  hangProbes: number;
  promptStallMs: number;
  restartLimit: number;
  restartWindowMs: number;
  rotationDrainMs: number;
  /** 0: no GPU watchdog. */
  gpuWatchdogIntervalMs: number;
  gpuWatchdogFailures: number;
  saladImdsUrl: string;
  /** Whose failed import keeps /ready at 503: nodes that declare env, all installed manifest nodes, none, or these names. */
  readyRequiresNodes: { kind: 'env' | 'all' | 'none' } | { kind: 'list'; nodes: string[] };
  /** ComfyUI folders every instance shares in COMFYUI_PATH; the others are per instance. temp is always per instance. */
  sharedFolders: ReadonlySet<'output' | 'input' | 'user'>;
  /** Problems that do not stop the boot (a malformed platform hint in actual mode). */
  warnings: string[];
  /** Variables whose values may be shorter than 4 characters ('*' for all). */
  allowShortSecrets: ReadonlySet<string>;
}

/** Every variable this program reads, its default and meaning: the source of --help and the README table. */
export const SETTINGS_DOC: ReadonlyArray<{ name: string; default: string; doc: string }> = [
  { name: 'GPU_MODE', default: 'actual', doc: '`actual` detects GPUs and fails (exit 69) without one; `mock` runs NUM_GPUS CPU instances' },
  { name: 'NUM_GPUS', default: '1 in mock mode', doc: 'mock: how many instances; actual: the platform\'s hint, checked against detection' },
  { name: 'GPU_MEMORY_GB', default: '(none)', doc: 'platform hint, per GPU or in total; a mismatch with detection is a warning' },
  { name: 'GPU_MODEL', default: '(none)', doc: 'platform hint; a mismatch with detection is a warning' },
  { name: 'CUDA_VISIBLE_DEVICES', default: '(not set: every device)', doc: 'the platform\'s choice of devices: GPU indices (nvidia-smi\'s, PCI bus order) or `GPU-`/`MIG-` UUIDs, comma-separated; a GPU in MIG mode means its MIG devices. A device nvidia-smi does not list, or an empty value, is refused (78). Each instance gets its own device\'s UUID instead. Not applied in mock mode' },
  { name: 'CUDA_DEVICE_ORDER', default: '(not set)', doc: 'read only to warn: indices in CUDA_VISIBLE_DEVICES are taken in nvidia-smi\'s (PCI bus) order, and without `PCI_BUS_ID` here CUDA\'s own order differs on a machine of several models. The instances always get `PCI_BUS_ID`' },
  { name: 'NVIDIA_VISIBLE_DEVICES', default: '(not set)', doc: 'read, never applied: the NVIDIA runtime already applied it. A list of indices or UUIDs must match what nvidia-smi lists, in UUIDs and in count (else 78); `all`, `none`, `void`, empty as the runtime documents them; another form (a device plugin\'s path, a CDI name) is a warning' },
  { name: 'INSTANCES_PER_GPU', default: '1', doc: 'ComfyUI instances on each device (a whole GPU or a MIG device), 1 to 16: names `comfyui-gpu<N>[-mig<M>]-s<slot>`, consecutive ports; they share the device\'s memory' },
  { name: 'MIN_INSTANCE_MEMORY_GB', default: '8', doc: 'device memory (GiB) one instance needs: INSTANCES_PER_GPU above 1 that leaves less per instance is refused (78); one instance on a smaller device is a warning; 0 turns the check off; not checked in mock mode' },
  { name: 'WORKSPACE_PATH', default: '/workspace', doc: 'root of the workspace' },
  { name: 'COMFYUI_PATH', default: '$WORKSPACE_PATH/ComfyUI', doc: 'ComfyUI checkout (main.py, custom_nodes/)' },
  { name: 'CUSTOM_NODES_CONFIG', default: '$WORKSPACE_PATH/config_nodes.json', doc: 'the manifest: which node gets which keys' },
  { name: 'SECRETS_ENV_FILE', default: '(none)', doc: 'a dotenv file rendered by an agent (Vault Agent), one more secret source' },
  { name: 'GPU_BOOT_STATE_DIR', default: '$WORKSPACE_PATH/.gpu-boot', doc: 'the plan and the record of written files (no secrets)' },
  { name: 'COMFYUI_PYTHON', default: 'python3', doc: 'interpreter that runs ComfyUI\'s main.py' },
  { name: 'COMFYUI_LISTEN', default: '0.0.0.0', doc: 'address each instance listens on (--listen): IPv4, IPv6 or a host name, or a comma-separated list of them as ComfyUI takes it (`0.0.0.0,::` for all); readiness probes 127.0.0.1 for 0.0.0.0, ::1 for ::, else the first address' },
  { name: 'COMFYUI_PORT_START', default: '8188', doc: 'port of the first instance; the others follow one by one, device by device and slot by slot (see GPUs and placement)' },
  { name: 'COMFY_ARGS', default: '(empty)', doc: 'extra ComfyUI arguments, shell-quoted, appended to every instance. Refused (78): a flag gpu-boot sets (--port, --listen, --cuda-device, --cpu, --temp-directory, --output-directory, --input-directory, --user-directory, --base-directory, also as --flag=value or abbreviated; the message names the setting to use), and a flag that comfy/cli_args.py in COMFYUI_PATH does not define (parsed by COMFYUI_PYTHON, never imported; unreadable: a warning)' },
  { name: 'COMFYUI_KILL_TIMEOUT_MS', default: '5000', doc: 'PM2 kill_timeout: SIGINT, then SIGKILL after this long' },
  { name: 'COMFYUI_RESTART_DELAY_MS', default: '1000', doc: 'first PM2 restart delay after a crash; grows x1.5 up to 15 s' },
  { name: 'SHUTDOWN_TIMEOUT_MS', default: '8000', doc: 'budget from SIGTERM to exit (Docker kills at 10 s)' },
  { name: 'READY_TIMEOUT_MS', default: '600000', doc: 'how long to wait for instances to answer before warning' },
  { name: 'NVIDIA_SMI_PATH', default: 'nvidia-smi', doc: 'nvidia-smi executable (looked up on PATH)' },
  { name: 'NVIDIA_SMI_TIMEOUT_MS', default: '10000', doc: 'nvidia-smi is killed after this long' },
  { name: 'LOG_LEVEL', default: 'info', doc: LOG_LEVELS.join(', ') },
  { name: 'PM2_HOME', default: '~/.pm2', doc: 'PM2\'s folder (socket, logs); `pm2 ls` with the same value lists the instances' },
  { name: 'SECRETS_TMPFS', default: 'auto', doc: '`auto`: .env contents live on a tmpfs (/dev/shm, else /run), in a fresh folder per run, each .env a link to its file; `off`: files in place; or a folder to make that run folder in' },
  { name: 'COMFYUI_USER', default: 'owner of COMFYUI_PATH', doc: 'when gpu-boot runs as root: the user (name or uid) the instances run as and the .env files belong to' },
  { name: 'HEALTH_PORT', default: '9090', doc: 'port of the health server (/health, /ready, /status, /metrics); 0 turns it off' },
  { name: 'HEALTH_BIND', default: '0.0.0.0', doc: 'address the health server listens on' },
  { name: 'ROTATION', default: 'restart', doc: 'on a changed secret source or SIGHUP: `restart` rewrites changed files and restarts instances one at a time; `files` only rewrites; `off` ignores changes and SIGHUP' },
  { name: 'ROTATION_DEBOUNCE_MS', default: '500', doc: 'quiet time after the last change event before re-reading the sources' },
  { name: 'CRASH_LOOP_LIMIT', default: '5', doc: 'after this many identical failures at start of every instance (the same exit code and message), the boot stops with exit 78 instead of restarting forever; 0 never gives up' },
  { name: 'READY_MIN_INSTANCES', default: 'all', doc: '/ready\'s rule: `all` instances ready, or at least N (a platform that routes per container keeps 7 of 8 GPUs in service with 7); each instance also has `/ready/<instance>`' },
  { name: 'HEALTH_ALL_FAILED_MS', default: '600000', doc: '/health turns 503 once no instance has answered for this long while the boot runs (0: never)' },
  { name: 'HEALTH_EVENT_LOOP_STALL_MS', default: '5000', doc: '/health turns 503 while gpu-boot\'s event loop was blocked longer than this in the last 30 s (0: never)' },
  { name: 'SUPERVISOR_INTERVAL_MS', default: '5000', doc: 'how often each instance is probed (/system_stats, /queue) for hangs, the restart budget and /health' },
  { name: 'HANG_TIMEOUT_MS', default: '5000', doc: 'an instance whose /system_stats does not answer within this long fails a probe' },
  { name: 'HANG_PROBES', default: '3', doc: 'probes failed in a row (PM2 online, the instance served since its start) after which it is hung and restarted, one instance at a time' },
  { name: 'PROMPT_STALL_MS', default: '0 (off)', doc: 'an instance whose running prompt (/queue) has not changed for this long is hung and restarted: in effect the longest a prompt may run, since /queue tells which prompt runs and not its progress' },
  { name: 'RESTART_LIMIT', default: '10', doc: 'restarts (crashes and hangs) within RESTART_WINDOW_MS after which the instance is failed: stopped and reported, no more restarts (0: PM2 restarts forever)' },
  { name: 'RESTART_WINDOW_MS', default: '600000', doc: 'the window of RESTART_LIMIT' },
  { name: 'ROTATION_DRAIN_MS', default: '60000', doc: 'before a rotation restarts an instance, it leaves readiness and its queue may empty for this long (0: no drain); prompts cut off are listed in /status' },
  { name: 'GPU_WATCHDOG_INTERVAL_MS', default: '30000', doc: 'GPU_MODE=actual: how often nvidia-smi is asked about each GPU in use (utilization, memory, temperature, power, ECC, pending pages); 0 turns the watchdog off' },
  { name: 'GPU_WATCHDOG_FAILURES', default: '3', doc: 'failed watchdog checks in a row after which a GPU is cordoned (its instances stopped); a GPU nvidia-smi reports lost is cordoned at once' },
  { name: 'SALAD_IMDS_URL', default: 'http://169.254.169.254', doc: 'SaladCloud\'s instance metadata service: on SaladCloud, when no GPU or instance is left, gpu-boot asks it to reallocate the container to another machine before it exits 71' },
  { name: 'READY_REQUIRES_NODES', default: 'env', doc: 'which custom nodes must have loaded for /ready to say 200: `env` (those that declare env), `all` (every installed manifest node), `none`, or a comma-separated list of node names' },
  { name: 'COMFYUI_SHARED_FOLDERS', default: 'output,input,user', doc: 'the ComfyUI folders all instances share in COMFYUI_PATH (output, input, user; `none` for none); each other one is per instance under $WORKSPACE_PATH/instances/<instance>/; temp is always per instance' },
  { name: 'ALLOW_SHORT_SECRETS', default: '(none)', doc: 'variables (comma-separated, or `*`) whose values may be shorter than 4 characters, which cannot be masked in logs' },
];

type SettingsResult = ReturnType<typeof EnvSchema.safeParse>;

/** The schema's verdict; in actual mode a malformed platform hint is dropped with a warning. */
function readSettings(env: NodeJS.ProcessEnv): { parsed: SettingsResult; warnings: string[] } {
  let parsed = EnvSchema.safeParse(env);
  // In actual mode NUM_GPUS and GPU_MEMORY_GB are only the platform's hints and detection decides:
  // a malformed hint is a warning, not a reason to refuse a machine whose GPUs work.
  const warnings: string[] = [];
  const mode = String(env.GPU_MODE ?? '').trim().toLowerCase();
  if (!parsed.success && (mode === '' || mode === 'actual')) {
    const hintIssues = parsed.error.issues.filter((i) => HINT_SETTINGS.includes(String(i.path[0])));
    if (hintIssues.length) {
      const withoutBadHints = { ...env };
      for (const issue of hintIssues) {
        delete withoutBadHints[String(issue.path[0])];
        warnings.push(`${String(issue.path[0])}: ${issue.message}; ignored (a platform hint: detection decides)`);
      }
      parsed = EnvSchema.safeParse(withoutBadHints);
    }
  }
  return { parsed, warnings };
}

/** Parse every setting; all problems are reported together, each naming its variable, never a value. */
export function loadConfig(env: NodeJS.ProcessEnv, cwd = process.cwd()): Config {
  const { parsed, warnings } = readSettings(env);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || 'environment'}: ${issue.message}`);
    throw new ConfigError(`invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'})`, problems);
  }
  return toConfig(parsed.data, warnings, cwd);
}

/**
 * The configuration with every invalid setting at its default: after loadConfig refused the
 * environment, `check` and `start` still read the manifest and the secrets with it, so that one
 * report lists every problem. Never used to start anything.
 */
export function loadConfigBestEffort(env: NodeJS.ProcessEnv, cwd = process.cwd()): Config {
  let trial: NodeJS.ProcessEnv = { ...env };
  for (;;) {
    const { parsed, warnings } = readSettings(trial);
    if (parsed.success) return toConfig(parsed.data, warnings, cwd);
    const invalid = parsed.error.issues.map((i) => String(i.path[0])).filter((name) => trial[name] !== undefined);
    // Defaults that still clash (a kill timeout against a short SHUTDOWN_TIMEOUT_MS): every default, then.
    if (invalid.length === 0) trial = {};
    for (const name of invalid) delete trial[name];
  }
}

function toConfig(s: RawSettings, warnings: string[], cwd: string): Config {
  const abs = (p: string): string => path.resolve(cwd, p);
  const workspacePath = abs(s.WORKSPACE_PATH);
  const comfyuiPath = abs(s.COMFYUI_PATH ?? path.join(workspacePath, 'ComfyUI'));
  return {
    gpuMode: s.GPU_MODE,
    numGpusHint: s.NUM_GPUS,
    gpuMemoryGbHint: s.GPU_MEMORY_GB,
    gpuModelHint: s.GPU_MODEL?.trim(),
    cudaVisibleDevices: s.CUDA_VISIBLE_DEVICES,
    cudaDeviceOrder: s.CUDA_DEVICE_ORDER,
    nvidiaVisibleDevices: s.NVIDIA_VISIBLE_DEVICES,
    instancesPerGpu: s.INSTANCES_PER_GPU,
    minInstanceMemoryGb: s.MIN_INSTANCE_MEMORY_GB,
    workspacePath,
    comfyuiPath,
    customNodesPath: path.join(comfyuiPath, 'custom_nodes'),
    manifestPath: abs(s.CUSTOM_NODES_CONFIG ?? path.join(workspacePath, 'config_nodes.json')),
    manifestExplicit: s.CUSTOM_NODES_CONFIG !== undefined,
    secretsEnvFile: s.SECRETS_ENV_FILE === undefined ? undefined : abs(s.SECRETS_ENV_FILE),
    stateDir: abs(s.GPU_BOOT_STATE_DIR ?? path.join(workspacePath, '.gpu-boot')),
    comfyuiPython: s.COMFYUI_PYTHON,
    comfyuiListen: s.COMFYUI_LISTEN,
    portStart: s.COMFYUI_PORT_START,
    comfyArgs: s.COMFY_ARGS,
    killTimeoutMs: s.COMFYUI_KILL_TIMEOUT_MS,
    restartDelayMs: s.COMFYUI_RESTART_DELAY_MS,
    shutdownTimeoutMs: s.SHUTDOWN_TIMEOUT_MS,
    readyTimeoutMs: s.READY_TIMEOUT_MS,
    nvidiaSmiPath: s.NVIDIA_SMI_PATH,
    nvidiaSmiTimeoutMs: s.NVIDIA_SMI_TIMEOUT_MS,
    logLevel: s.LOG_LEVEL,
    pm2Home: s.PM2_HOME === undefined ? undefined : abs(s.PM2_HOME),
    secretsTmpfs: ['auto', 'off'].includes(s.SECRETS_TMPFS.toLowerCase()) ? s.SECRETS_TMPFS.toLowerCase() : abs(s.SECRETS_TMPFS),
    comfyuiUser: s.COMFYUI_USER?.trim(),
    healthPort: s.HEALTH_PORT,
    healthBind: s.HEALTH_BIND,
    rotation: s.ROTATION,
    rotationDebounceMs: s.ROTATION_DEBOUNCE_MS,
    crashLoopLimit: s.CRASH_LOOP_LIMIT,
    readyMinInstances: s.READY_MIN_INSTANCES,
    healthAllFailedMs: s.HEALTH_ALL_FAILED_MS,
    healthEventLoopStallMs: s.HEALTH_EVENT_LOOP_STALL_MS,
    supervisorIntervalMs: s.SUPERVISOR_INTERVAL_MS,
    hangTimeoutMs: s.HANG_TIMEOUT_MS,
    hangProbes: s.HANG_PROBES,
    promptStallMs: s.PROMPT_STALL_MS,
    restartLimit: s.RESTART_LIMIT,
    restartWindowMs: s.RESTART_WINDOW_MS,
    rotationDrainMs: s.ROTATION_DRAIN_MS,
    gpuWatchdogIntervalMs: s.GPU_WATCHDOG_INTERVAL_MS,
    gpuWatchdogFailures: s.GPU_WATCHDOG_FAILURES,
    saladImdsUrl: s.SALAD_IMDS_URL,
    readyRequiresNodes: ['env', 'all', 'none'].includes(s.READY_REQUIRES_NODES)
      ? { kind: s.READY_REQUIRES_NODES as 'env' | 'all' | 'none' }
      : { kind: 'list', nodes: s.READY_REQUIRES_NODES.split(',') },
    sharedFolders: new Set(s.COMFYUI_SHARED_FOLDERS === 'none' || s.COMFYUI_SHARED_FOLDERS === '' ? [] : (s.COMFYUI_SHARED_FOLDERS.split(',') as Array<'output' | 'input' | 'user'>)),
    warnings,
    allowShortSecrets: new Set((s.ALLOW_SHORT_SECRETS ?? '').split(/[\s,]+/).filter(Boolean)),
  };
}
