import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { alive, freePorts, ROOT, waitFor } from './helpers/boot.js';
import { PYTHON } from './helpers/python.js';

/**
 * The ComfyUI stand-in (demo/workspace/ComfyUI/main.py) run directly, as PM2 runs it, against what
 * the real ComfyUI does (test/fixtures/comfyui/, recorded from it).
 */

const DEMO_COMFYUI = path.join(ROOT, 'demo', 'workspace', 'ComfyUI');
const FIXTURES = path.join(ROOT, 'test', 'fixtures', 'comfyui');
const fixtureJson = async (name: string) => JSON.parse(await readFile(path.join(FIXTURES, name), 'utf8')) as unknown;
const keys = (value: unknown) => Object.keys(value as object).sort();

interface StandIn {
  child: ChildProcess;
  pid: number;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited: () => boolean;
}

const started: StandIn[] = [];
let root = '';
let comfyui = '';

/** A fresh copy of the demo's ComfyUI folder (stand-in, comfy/, custom nodes) for each test. */
async function copyComfyUI(): Promise<string> {
  const dir = await mkdtemp(path.join(root, 'ComfyUI-'));
  await cp(DEMO_COMFYUI, dir, {
    recursive: true,
    filter: (source) => !['__pycache__', 'temp', 'output', 'input', 'user', '.env'].includes(path.basename(source)),
  });
  return dir;
}

/** The process environment without anything that would pick a GPU. */
function baseEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !/^(CUDA_VISIBLE_DEVICES|HIP_VISIBLE_DEVICES|ASCEND_RT_VISIBLE_DEVICES|CUDA_DEVICE_ORDER|NVIDIA_SMI_PATH|FAKE_NVIDIA_SMI_\w+|GPU_\w+|STANDIN_\w+)$/.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

function startStandIn(dir: string, args: string[], env: Record<string, string> = {}): StandIn {
  const child = spawn(PYTHON, ['main.py', ...args], { cwd: dir, env: baseEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let done = false;
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      done = true;
      resolve({ code, signal });
    }),
  );
  const standIn = { child, pid: child.pid!, stdout: () => out, stderr: () => err, exited, hasExited: () => done };
  started.push(standIn);
  return standIn;
}

/** Run to completion (for the runs that exit by themselves). */
async function runStandIn(dir: string, args: string[], env: Record<string, string> = {}) {
  const s = startStandIn(dir, args, env);
  const result = await s.exited;
  return { ...result, stdout: s.stdout(), stderr: s.stderr() };
}

async function answers(port: number, host = '127.0.0.1'): Promise<boolean> {
  try {
    const response = await fetch(`http://${host}:${port}/`, { signal: AbortSignal.timeout(1000) });
    return response.status === 200;
  } catch {
    return false;
  }
}

/** Wait until the stand-in answers on its port; fail at once, with its stderr, if it exits first. */
async function untilUp(s: StandIn, port: number, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    `the stand-in on ${port}`,
    async () => {
      if (s.hasExited()) throw new Error(`the stand-in exited before answering:\n${s.stderr()}`);
      return answers(port);
    },
    timeoutMs,
  );
}

async function stop(s: StandIn, signal: NodeJS.Signals = 'SIGINT') {
  s.child.kill(signal);
  return s.exited;
}

async function getJson(port: number, urlPath: string): Promise<unknown> {
  const response = await fetch(`http://127.0.0.1:${port}${urlPath}`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/^application\/json/);
  return response.json();
}

const lines = (text: string) => text.replace(/\n$/, '').split('\n');

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'gpu-boot-standin-'));
});

beforeEach(async () => {
  comfyui = await copyComfyUI();
});

afterEach(async () => {
  // Every process this file started, by its pid.
  for (const s of started.splice(0)) {
    if (!s.hasExited() && alive(s.pid)) {
      try {
        process.kill(s.pid, 'SIGKILL');
      } catch {
        // gone
      }
      await s.exited;
    }
  }
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('flags: ComfyUI\'s own argparse parser', () => {
  it('an unknown flag: argparse\'s usage and `error: unrecognized arguments` on stderr, exit 2, before anything else', async () => {
    const result = await runStandIn(comfyui, ['--cpu', '--no-such-flag']);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    const err = lines(result.stderr);
    expect(err[0]).toMatch(/^usage: main\.py \[-h\] \[--listen \[IP\]\] \[--port PORT\]/);
    expect(err.at(-1)).toBe('main.py: error: unrecognized arguments: --no-such-flag');
    expect(result.stderr).not.toContain('Total VRAM');
    // Mutually exclusive flags are refused the same way, as in ComfyUI.
    const both = await runStandIn(comfyui, ['--cpu', '--lowvram']);
    expect(both.code).toBe(2);
    expect(lines(both.stderr).at(-1)).toBe('main.py: error: argument --lowvram: not allowed with argument --cpu');
  });

  it('defines exactly the flags of ComfyUI\'s master of 2026-01 (the fixture list), each a literal first argument of add_argument, each accepted', async () => {
    const fixture = (await readFile(path.join(FIXTURES, 'cli-flags-2026-01.txt'), 'utf8')).split('\n').filter(Boolean).sort();
    const script = String.raw`
import ast, json, os, sys
sys.path.insert(0, os.getcwd())
import comfy.cli_args as c
options = sorted(o for a in c.parser._actions for o in a.option_strings if o not in ("-h", "--help"))
tree = ast.parse(open(os.path.join("comfy", "cli_args.py")).read())
literal = sorted(n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument")
failures = {}
for action in c.parser._actions:
    flag = action.option_strings[0]
    if flag in ("-h", "--help"):
        continue
    argv = [flag]
    if action.nargs not in (0, "?", "*"):
        value = "1" if action.type in (int, float) else os.getcwd() if flag == "--user-directory" else action.choices[0] if action.choices else "x"
        argv.append(str(value))
    try:
        c.finish(c.parser.parse_args(argv))
    except SystemExit as e:
        failures[flag] = e.code
twice = c.parser.parse_args(["--port", "1", "--port", "2", "--listen", "--listen", "10.0.0.1"])
print(json.dumps({"options": options, "literal": literal, "failures": failures, "twice": [twice.port, twice.listen], "bare": c.parser.parse_args(["--listen"]).listen}))
`;
    const result = await runPython(script);
    expect(result.code).toBe(0);
    const out = JSON.parse(result.stdout) as { options: string[]; literal: string[]; failures: Record<string, number>; twice: [number, string]; bare: string };
    expect(out.options).toEqual(fixture);
    expect(out.literal).toEqual(fixture);
    expect(out.failures).toEqual({});
    // A flag given twice keeps the last value; a bare --listen means all IPv4 and IPv6 addresses.
    expect(out.twice).toEqual([2, '10.0.0.1']);
    expect(out.bare).toBe('0.0.0.0,::');
  });

  it('main.py reads its flags from the checkout\'s comfy/cli_args.py, as ComfyUI does: without it, it fails to start (exit 1)', async () => {
    const alone = await mkdtemp(path.join(root, 'alone-'));
    await cp(path.join(comfyui, 'main.py'), path.join(alone, 'main.py'));
    const [withModule, without] = await Promise.all([runStandIn(comfyui, ['--cpu', '--no-such-flag']), runStandIn(alone, ['--cpu', '--no-such-flag'])]);
    expect(withModule.code).toBe(2);
    expect(without.code).toBe(1);
    expect(without.stderr.trim().split('\n').pop()).toBe("ModuleNotFoundError: No module named 'comfy'");
  });
});

async function runPython(script: string) {
  const child = spawn(PYTHON, ['-c', script], { cwd: comfyui, env: baseEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) console.error(stderr);
  return { code, stdout, stderr };
}

describe('a start, as the real ComfyUI prints it', () => {
  it('all on stderr: device lines, the broken node\'s traceback and "Cannot import", the import times, the server\'s address; SIGINT: "Stopped server", exit 0', async () => {
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port)]);
    await untilUp(s, port);
    await waitFor('the GUI line', () => s.stderr().includes('To see the GUI go to:'));
    const result = await stop(s, 'SIGINT');
    expect(result).toEqual({ code: 0, signal: null });
    expect(s.stdout()).toBe('');
    const err = lines(s.stderr());
    const nodes = path.join(comfyui, 'custom_nodes');

    expect(err[0]).toMatch(/^Total VRAM \d+ MB, total RAM \d+ MB$/);
    expect(err.slice(1, 6)).toEqual([
      expect.stringMatching(/^pytorch version: \S+$/),
      'Set vram state to: DISABLED',
      'Device: cpu',
      'VAE dtype: torch.float32',
      'Using sub quadratic optimization for cross attention, if you have memory or speed issues try using: --use-split-cross-attention',
    ]);
    // The failed import: traceback, a blank line, "Cannot import", and the server starts anyway.
    const traceback = err.indexOf('Traceback (most recent call last):');
    const cannot = err.indexOf(`Cannot import ${nodes}/broken_node module for custom nodes: No module named 'not_a_real_module_xyz'`);
    expect(traceback).toBeGreaterThan(5);
    expect(cannot).toBeGreaterThan(traceback);
    expect(err.slice(traceback, cannot)).toContain(`  File "${nodes}/broken_node/__init__.py", line 1, in <module>`);
    expect(err[cannot - 2]).toBe("ModuleNotFoundError: No module named 'not_a_real_module_xyz'");
    expect(err[cannot - 1]).toBe('');
    // The import times block: one line per node, sorted by time.
    const block = err.indexOf('Import times for custom nodes:');
    expect(err[block - 1]).toBe('');
    const end = err.indexOf('', block);
    const times = err.slice(block + 1, end);
    expect(times.sort()).toEqual(
      [
        `(IMPORT FAILED): ${nodes}/broken_node`,
        `: ${nodes}/ComfyUI-Manager`,
        `: ${nodes}/emprops_custom_nodes`,
        `: ${nodes}/no_secrets_node`,
        `: ${nodes}/websocket_image_save.py`,
      ]
        .map((tail) => expect.stringMatching(new RegExp(`^ {3}\\d\\.\\d seconds ?${tail.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`)))
        .sort(),
    );
    expect(times.filter((l) => l.includes('(IMPORT FAILED)'))).toHaveLength(1);
    expect(err.slice(end)).toEqual(['', 'Starting server', '', `To see the GUI go to: http://127.0.0.1:${port}`, '', 'Stopped server']);
  });

  it('GET /gpu-boot/nodes reports each node: loaded or not, with the error; the .env fields as before', async () => {
    await writeFile(path.join(comfyui, 'custom_nodes', 'no_secrets_node', '.env'), 'A_KEY=a value\n');
    await chmod(path.join(comfyui, 'custom_nodes', 'no_secrets_node', '.env'), 0o640);
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port), '--preview-method', 'auto', '--preview-method', 'taesd']);
    await untilUp(s, port);
    const report = (await getJson(port, '/gpu-boot/nodes')) as {
      pid: number;
      port: number;
      cpu: boolean;
      cudaDevice: number | null;
      extraArgs: string[];
      args: Record<string, unknown>;
      env: Record<string, string | null>;
      nodes: Record<string, { envFile: boolean; loaded?: boolean; error?: string; keys?: string[]; sha256?: Record<string, string>; mode?: string }>;
    };
    expect(report).toMatchObject({ pid: s.pid, port, cpu: true, cudaDevice: null, extraArgs: ['--preview-method', 'auto', '--preview-method', 'taesd'] });
    expect(report.args.preview_method).toBe('taesd');
    expect(report.env).toEqual({ CUDA_VISIBLE_DEVICES: null, CUDA_DEVICE_ORDER: null, GPU_INDEX: null, GPU_UUID: null, GPU_DEVICE: null, GPU_SLOT: null, GPU_MODEL: null, GPU_MEMORY_GB: null });
    expect(report.nodes.broken_node).toMatchObject({ envFile: false, loaded: false, error: "No module named 'not_a_real_module_xyz'" });
    expect(report.nodes.no_secrets_node).toMatchObject({ envFile: true, loaded: true, keys: ['A_KEY'], mode: '0o640' });
    expect(report.nodes.no_secrets_node!.sha256).toEqual({ A_KEY: createHash('sha256').update('a value').digest('hex') });
    expect(report.nodes['websocket_image_save.py']).toMatchObject({ loaded: true });
    expect(report.nodes.no_secrets_node!.error).toBeUndefined();
  });
});

describe('endpoints, shaped like the real ones', () => {
  it('/system_stats, /queue, /prompt, /object_info (built-ins and every loaded custom node), / and a 404 for anything else', async () => {
    // A custom node with a class of its own.
    await mkdir(path.join(comfyui, 'custom_nodes', 'echo_node'));
    await writeFile(
      path.join(comfyui, 'custom_nodes', 'echo_node', '__init__.py'),
      [
        'class StandInEcho:',
        '    @classmethod',
        '    def INPUT_TYPES(cls):',
        '        return {"required": {"text": ("STRING", {"default": ""})}}',
        '    RETURN_TYPES = ("STRING",)',
        '    FUNCTION = "echo"',
        '    CATEGORY = "utils"',
        'NODE_CLASS_MAPPINGS = {"StandInEcho": StandInEcho}',
        'NODE_DISPLAY_NAME_MAPPINGS = {"StandInEcho": "Echo"}',
        '',
      ].join('\n'),
    );
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port)]);
    await untilUp(s, port);

    const stats = (await getJson(port, '/system_stats')) as { system: object; devices: Array<Record<string, unknown>> };
    const statsFixture = (await fixtureJson('system_stats.json')) as { system: object; devices: object[] };
    expect(keys(stats)).toEqual(keys(statsFixture));
    expect(keys(stats.system)).toEqual(keys(statsFixture.system));
    expect(stats.devices).toHaveLength(1);
    expect(keys(stats.devices[0])).toEqual(keys(statsFixture.devices[0]));
    expect(stats.devices[0]).toMatchObject({ name: 'cpu', type: 'cpu', index: null });
    expect(stats.devices[0]!.vram_total).toBeGreaterThan(0);

    expect(await getJson(port, '/queue')).toEqual(await fixtureJson('queue.json'));
    expect(await getJson(port, '/prompt')).toEqual(await fixtureJson('prompt.json'));

    const info = (await getJson(port, '/object_info')) as Record<string, Record<string, unknown>>;
    const infoFixture = (await fixtureJson('object_info.json')) as Record<string, Record<string, unknown>>;
    const builtins = Object.keys(info).filter((name) => info[name]!.python_module === 'nodes');
    expect(builtins.length).toBeGreaterThanOrEqual(5);
    for (const name of builtins) {
      // Each built-in as the fixture has it, plus python_module (which newer ComfyUIs send for every class).
      const { python_module: _module, ...rest } = info[name]!;
      expect({ name, info: rest }).toEqual({ name, info: infoFixture[name] });
    }
    const { python_module: wsModule, ...ws } = info.SaveImageWebsocket!;
    expect(wsModule).toBe('custom_nodes.websocket_image_save');
    expect(ws).toEqual(infoFixture.SaveImageWebsocket);
    expect(info.StandInEcho).toEqual({
      input: { required: { text: ['STRING', { default: '' }] } },
      output: ['STRING'],
      output_is_list: [false],
      output_name: ['STRING'],
      name: 'StandInEcho',
      display_name: 'Echo',
      description: '',
      category: 'utils',
      output_node: false,
      python_module: 'custom_nodes.echo_node',
    });
    const modules = new Set(Object.values(info).map((i) => i.python_module));
    expect([...modules].sort()).toEqual(['custom_nodes.echo_node', 'custom_nodes.websocket_image_save', 'nodes']);
    for (const name of Object.keys(info)) expect(keys(info[name])).toEqual([...keys(infoFixture.KSampler), 'python_module'].sort());
    expect(await getJson(port, '/object_info/StandInEcho')).toEqual({ StandInEcho: info.StandInEcho });

    const page = await fetch(`http://127.0.0.1:${port}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    const missing = await fetch(`http://127.0.0.1:${port}/no/such/path`);
    expect(missing.status).toBe(404);
    expect(await missing.text()).toBe('404: Not Found');
    const wrongMethod = await fetch(`http://127.0.0.1:${port}/queue`, { method: 'DELETE' });
    expect(wrongMethod.status).toBe(405);
  });

  it('on a GPU (--cuda-device N): cuda:0 in /system_stats (torch numbers the visible devices from 0), CUDA_VISIBLE_DEVICES overwritten with N', async () => {
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--listen', '127.0.0.1', '--port', String(port), '--cuda-device', '3'], { CUDA_VISIBLE_DEVICES: 'GPU-0123', GPU_MODEL: 'NVIDIA H200', GPU_MEMORY_GB: '140.4' });
    await untilUp(s, port);
    const stats = (await getJson(port, '/system_stats')) as { devices: Array<Record<string, unknown>> };
    expect(stats.devices).toEqual([
      { name: 'cuda:0 NVIDIA H200 : cudaMallocAsync', type: 'cuda', index: 0, vram_total: expect.any(Number), vram_free: expect.any(Number), torch_vram_total: 0, torch_vram_free: 0 },
    ]);
    expect(stats.devices[0]!.vram_total).toBe(Math.trunc(140.4 * 1024 ** 3));
    const report = (await getJson(port, '/gpu-boot/nodes')) as Record<string, unknown>;
    expect(report).toMatchObject({ cpu: false, cudaDevice: 3, device: 'cuda:0', visibleDevices: '3', env: { CUDA_VISIBLE_DEVICES: 'GPU-0123', GPU_INDEX: null, GPU_MODEL: 'NVIDIA H200', GPU_MEMORY_GB: '140.4' } });
    expect(s.stderr()).toContain('Set cuda device to: 3\n');
    expect(s.stderr()).toContain('Device: cuda:0 NVIDIA H200 : cudaMallocAsync\n');
    expect(await stop(s)).toEqual({ code: 0, signal: null });

    // No visible GPU and no --cpu: torch's error, exit 1, nothing bound.
    const none = await runStandIn(comfyui, ['--listen', '127.0.0.1', '--port', String(port)], { CUDA_VISIBLE_DEVICES: '' });
    expect(none.code).toBe(1);
    expect(lines(none.stderr).at(-1)).toBe('RuntimeError: No CUDA GPUs are available');
  });

  it('with nvidia-smi: torch sees CUDA_VISIBLE_DEVICES applied to what it lists, as CUDA applies it; --cuda-device undoes a UUID pin', async () => {
    const port = await freePorts(1);
    const smi = { NVIDIA_SMI_PATH: path.resolve('test/fixtures/nvidia-smi'), FAKE_NVIDIA_SMI_MODE: 'mig-mixed' };
    const mig1 = 'MIG-7c1e0001-5d3a-5b8e-a1f2-0c9d8e7f6a01';
    const gpu1 = 'GPU-6a7b8c9d-1b2d-4c6e-9f0a-3b7c2d1e4f61';
    const devicesOf = async (args: string[], env: Record<string, string>) => {
      const s = startStandIn(comfyui, ['--listen', '127.0.0.1', '--port', String(port), ...args], { ...smi, ...env });
      await untilUp(s, port);
      const report = (await getJson(port, '/gpu-boot/nodes')) as { cudaDevices: Array<{ uuid: string; name: string; memoryMiB: number }>; visibleDevices: string };
      const stats = (await getJson(port, '/system_stats')) as { devices: Array<{ name: string; vram_total: number }> };
      expect(await stop(s)).toEqual({ code: 0, signal: null });
      return { devices: report.cudaDevices, visible: report.visibleDevices, device: stats.devices[0] };
    };
    // A MIG device by its UUID: the slice, with its profile's memory.
    expect(await devicesOf([], { CUDA_VISIBLE_DEVICES: mig1 })).toEqual({
      devices: [{ uuid: mig1, name: 'NVIDIA H100 80GB HBM3 MIG 2g.20gb', memoryMiB: 20480 }],
      visible: mig1,
      device: expect.objectContaining({ name: 'cuda:0 NVIDIA H100 80GB HBM3 MIG 2g.20gb : cudaMallocAsync', vram_total: 20480 * 1024 ** 2 }),
    });
    // A prefix, and an entry that names nothing ends the list (CUDA's rule).
    expect((await devicesOf([], { CUDA_VISIBLE_DEVICES: `${mig1.slice(0, 12)},${gpu1.toUpperCase()},GPU-ffff,${gpu1.slice(0, -1)}0` })).devices.map((d) => d.uuid)).toEqual([mig1, gpu1]);
    // --cuda-device 1 replaces the pin with an index: GPU 1, not the MIG device gpu-boot chose.
    const overwritten = await devicesOf(['--cuda-device', '1'], { CUDA_VISIBLE_DEVICES: mig1 });
    expect(overwritten.visible).toBe('1');
    expect(overwritten.devices).toEqual([{ uuid: gpu1, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559 }]);
    // No device: a GPU in MIG mode named by index, or a UUID nvidia-smi does not list.
    for (const visible of ['0', 'GPU-00000000-0000-4000-8000-000000000000']) {
      const none = await runStandIn(comfyui, ['--listen', '127.0.0.1', '--port', String(port)], { ...smi, CUDA_VISIBLE_DEVICES: visible });
      expect(none.code).toBe(1);
      expect(lines(none.stderr).at(-1)).toBe('RuntimeError: No CUDA GPUs are available');
    }
  });

  it('--listen with several addresses binds each of them', async () => {
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1,127.0.0.2', '--port', String(port)]);
    await untilUp(s, port);
    await waitFor('both addresses', () => s.stderr().includes(`To see the GUI go to: http://127.0.0.2:${port}`));
    expect(await answers(port, '127.0.0.2')).toBe(true);
    expect(lines(s.stderr()).filter((l) => l === 'Starting server')).toHaveLength(2);
  });
});

describe('failures the way ComfyUI fails', () => {
  it('a port another process holds: the full start, then asyncio\'s bind error as the last line, exit 1', async () => {
    const port = await freePorts(1);
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen({ port, host: '127.0.0.1', exclusive: true }, resolve));
    try {
      const result = await runStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port)]);
      expect(result.code).toBe(1);
      const err = lines(result.stderr);
      expect(err.at(-1)).toBe(`OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', ${port}): address already in use`);
      expect(err).toContain('Traceback (most recent call last):');
      // The start was a full one (nodes imported), and no server line came.
      expect(err.indexOf('Import times for custom nodes:')).toBeLessThan(err.lastIndexOf('Traceback (most recent call last):'));
      expect(result.stderr).not.toContain('Starting server');
      expect(result.stderr).not.toContain('To see the GUI');
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it('--extra-model-paths-config naming a missing file, and a missing --user-directory, fail as in ComfyUI', async () => {
    const port = await freePorts(1);
    const missing = path.join(root, 'no-such.yaml');
    const yaml = await runStandIn(comfyui, ['--cpu', '--port', String(port), '--extra-model-paths-config', missing]);
    expect(yaml.code).toBe(1);
    expect(lines(yaml.stderr).at(-1)).toBe(`FileNotFoundError: [Errno 2] No such file or directory: '${missing}'`);
    const user = await runStandIn(comfyui, ['--cpu', '--port', String(port), '--user-directory', path.join(root, 'no-such-user')]);
    expect(user.code).toBe(2);
    expect(lines(user.stderr).at(-1)).toBe(`main.py: error: argument --user-directory: The path '${path.join(root, 'no-such-user')}' does not exist.`);
  });
});

describe('folders', () => {
  it('temp is emptied at start and removed at exit (<ComfyUI>/temp by default); SIGTERM stops it like SIGINT', async () => {
    const temp = path.join(comfyui, 'temp');
    await mkdir(path.join(temp, 'sub'), { recursive: true });
    await writeFile(path.join(temp, 'stale.png'), 'x');
    await writeFile(path.join(temp, 'sub', 'deeper.png'), 'x');
    const port = await freePorts(1);
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port)]);
    await untilUp(s, port);
    expect(await readdir(temp)).toEqual([]);
    const report = (await getJson(port, '/gpu-boot/nodes')) as { folders: Record<string, string> };
    expect(report.folders).toEqual({ temp, output: path.join(comfyui, 'output'), input: path.join(comfyui, 'input'), user: path.join(comfyui, 'user') });
    await writeFile(path.join(temp, 'preview.png'), 'x');
    expect(await stop(s, 'SIGTERM')).toEqual({ code: 0, signal: null });
    expect(lines(s.stderr()).at(-1)).toBe('Stopped server');
    expect(existsSync(temp)).toBe(false);
  });

  it('--temp-directory D uses D/temp; --output-directory and --input-directory are created; --user-directory is used', async () => {
    const base = await mkdtemp(path.join(root, 'folders-'));
    const tempRoot = path.join(base, 'instance0');
    await mkdir(path.join(tempRoot, 'temp'), { recursive: true });
    await writeFile(path.join(tempRoot, 'temp', 'stale.png'), 'x');
    await writeFile(path.join(tempRoot, 'kept.txt'), 'x');
    await mkdir(path.join(base, 'user'));
    const port = await freePorts(1);
    const folders = { temp: path.join(tempRoot, 'temp'), output: path.join(base, 'out'), input: path.join(base, 'in'), user: path.join(base, 'user') };
    const s = startStandIn(comfyui, [
      '--cpu', '--listen', '127.0.0.1', '--port', String(port),
      '--temp-directory', tempRoot, '--output-directory', folders.output, '--input-directory', folders.input, '--user-directory', folders.user,
    ]);
    await untilUp(s, port);
    expect(((await getJson(port, '/gpu-boot/nodes')) as { folders: unknown }).folders).toEqual(folders);
    expect(await readdir(folders.temp)).toEqual([]);
    for (const dir of [folders.output, folders.input]) expect(existsSync(dir)).toBe(true);
    expect(s.stderr()).toContain(`Setting temp directory to: ${folders.temp}\n`);
    expect(s.stderr()).toContain(`Setting output directory to: ${folders.output}\n`);
    expect(existsSync(path.join(comfyui, 'temp'))).toBe(false);
    expect(await stop(s)).toEqual({ code: 0, signal: null });
    expect(existsSync(folders.temp)).toBe(false);
    expect(await readFile(path.join(tempRoot, 'kept.txt'), 'utf8')).toBe('x');
  });
});

describe('a slow start on request', () => {
  it('STANDIN_START_DELAY_MS=1500 delays the first answer by at least that long', async () => {
    const port = await freePorts(1);
    const t0 = Date.now();
    const s = startStandIn(comfyui, ['--cpu', '--listen', '127.0.0.1', '--port', String(port)], { STANDIN_START_DELAY_MS: '1500' });
    await untilUp(s, port);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
  });
});
