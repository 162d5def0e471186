import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { SecretMasker, silentLogger } from '../src/log.js';
import { readiness, statusReport, startHealthServer } from '../src/health/health.js';
import {
  classifyLine,
  describeCrashLoop,
  InstanceMonitor,
  normalizeFailure,
  parseNodeLine,
  TRACEBACK_MAX_LINES,
  TracebackGrouper,
  type LogEntry,
} from '../src/instances/instance-output.js';
import type { InstancePlan } from '../src/instances/plan.js';
import { BootState, requiredNodesFailed } from '../src/health/state.js';

/** A fixture's lines as ComfyUI printed them (the recorder's `rc=N` annotation is not output). */
function fixture(name: string): string[] {
  return readFileSync(new URL(`./fixtures/comfyui/${name}`, import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '' && !/^rc=\d+$/.test(l));
}

function group(lines: string[]): LogEntry[] {
  const grouper = new TracebackGrouper();
  return [...lines.flatMap((l) => grouper.push(l)), ...grouper.flush()];
}

/** A monitor over a fresh state, with a clock the test moves. */
function monitorFor(instances: string[], options: { masker?: SecretMasker; envNodes?: string[] } = {}) {
  const state = new BootState();
  let now = Date.parse('2026-01-10T12:00:00Z');
  const masker = options.masker ?? new SecretMasker();
  const monitor = new InstanceMonitor(state.instanceRecords, {
    mask: (t) => masker.mask(t),
    envNodes: () => options.envNodes ?? [],
    instances: () => instances,
    now: () => now,
  });
  return { state, monitor, tick: (ms: number) => (now += ms) };
}

/** One run of `instance` printing `lines` on stderr and exiting with `code`. */
function run(m: ReturnType<typeof monitorFor>, instance: string, lines: string[], code: number | null, signal: string | null = null) {
  m.monitor.started(instance);
  const logs = lines.flatMap((l) => m.monitor.line(instance, 'stderr', l));
  m.tick(500);
  m.monitor.exited(instance, { code, signal });
  const settled = m.monitor.settle(instance);
  return { logs: [...logs, ...settled.logs], settled };
}

describe('severity of relayed lines', () => {
  it('startup.log: the traceback is one error entry (msg: its exception line, the frames in a field), Cannot import and IMPORT FAILED are errors, the rest info', () => {
    const entries = group(fixture('startup.log'));
    const errors = entries.filter((e) => e.level === 'error');
    expect(errors.map((e) => e.msg)).toEqual([
      "ModuleNotFoundError: No module named 'not_a_real_module_xyz'",
      "Cannot import /workspace/ComfyUI/custom_nodes/broken_node module for custom nodes: No module named 'not_a_real_module_xyz'",
      '   0.0 seconds (IMPORT FAILED): /workspace/ComfyUI/custom_nodes/broken_node',
    ]);
    const traceback = errors[0]!;
    expect(traceback.fields.node).toBe('broken_node');
    expect(traceback.fields.traceback).toEqual([
      'Traceback (most recent call last):',
      '  File "/workspace/ComfyUI/nodes.py", line 1881, in load_custom_node',
      '    module_spec.loader.exec_module(module)',
      '  File "<frozen importlib._bootstrap_external>", line 940, in exec_module',
      '  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed',
      '  File "/workspace/ComfyUI/custom_nodes/broken_node/__init__.py", line 1, in <module>',
      '    import not_a_real_module_xyz',
    ]);
    // No line is lost or logged twice: 7 traceback lines became one entry.
    expect(entries.length).toBe(fixture('startup.log').length - 7);
    expect(entries.find((e) => e.msg.startsWith('Using sub quadratic'))?.level).toBe('info');
    expect(entries.find((e) => e.msg === 'Starting server')?.level).toBe('info');
    expect(entries.find((e) => e.msg.startsWith('[secret_probe]'))?.level).toBe('info');
    expect(entries.filter((e) => e.level === 'warn')).toEqual([]);
  });

  it('unknown-flag.log: argparse\'s usage is info, its "error:" line an error; port-in-use.log: the OSError traceback is one error entry', () => {
    const argparse = group(fixture('unknown-flag.log'));
    expect(argparse.filter((e) => e.level === 'error').map((e) => e.msg)).toEqual(['main.py: error: unrecognized arguments: --no-such-flag']);
    expect(argparse[0]).toMatchObject({ level: 'info', msg: expect.stringMatching(/^usage: main.py/) });
    const port = group(fixture('port-in-use.log'));
    const errors = port.filter((e) => e.level === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]!.msg).toBe("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 18312): address already in use");
    expect((errors[0]!.fields.traceback as string[]).length).toBe(15);
    // Carets under a frame's code are indented: part of the traceback, not lines of their own.
    expect(port.some((e) => e.msg.includes('^^^'))).toBe(false);
  });

  it('classifies Error/error:/WARNING/Warning lines, keeps a chained traceback\'s second part together, flushes one cut short and caps a huge one', () => {
    expect(classifyLine('ERROR: something broke')).toBe('error');
    expect(classifyLine('RuntimeError: CUDA out of memory')).toBe('error');
    expect(classifyLine('Error loading model foo')).toBe('error');
    expect(classifyLine('pip: error: no such option')).toBe('error');
    expect(classifyLine('WARNING: torch not compiled with CUDA')).toBe('warn');
    expect(classifyLine('/x.py:3: UserWarning: TypedStorage is deprecated')).toBe('warn');
    expect(classifyLine('Warning: low VRAM')).toBe('warn');
    expect(classifyLine('0 errors, stderr is fine, Errors are counted')).toBe('info');
    expect(classifyLine('Total VRAM 24105 MB, total RAM 24105 MB')).toBe('info');

    const chained = group([
      'Traceback (most recent call last):',
      '  File "a.py", line 1, in <module>',
      "KeyError: 'x'",
      'During handling of the above exception, another exception occurred:',
      'Traceback (most recent call last):',
      '  File "a.py", line 3, in <module>',
      'ValueError: y',
      'next line',
    ]);
    expect(chained.map((e) => [e.level, e.msg])).toEqual([
      ['error', "KeyError: 'x'"],
      ['error', 'ValueError: y'],
      ['info', 'next line'],
    ]);
    expect(chained[1]!.fields.traceback).toEqual(['During handling of the above exception, another exception occurred:', 'Traceback (most recent call last):', '  File "a.py", line 3, in <module>']);

    const cut = group(['Traceback (most recent call last):', '  File "/w/custom_nodes/n1/x.py", line 1']);
    expect(cut).toEqual([{ level: 'error', msg: 'File "/w/custom_nodes/n1/x.py", line 1 (traceback cut short)', fields: { traceback: ['Traceback (most recent call last):', '  File "/w/custom_nodes/n1/x.py", line 1'], node: 'n1', incomplete: true } }]);

    const frames = Array.from({ length: 5000 }, (_, i) => `  File "f.py", line ${i}, in g`);
    const [huge] = group(['Traceback (most recent call last):', ...frames, 'RecursionError: maximum recursion depth exceeded']);
    const kept = huge!.fields.traceback as string[];
    expect(kept.length).toBe(TRACEBACK_MAX_LINES + 1);
    expect(kept[0]).toBe('Traceback (most recent call last):');
    expect(kept).toContain('... 4801 line(s) omitted ...');
    expect(kept[kept.length - 1]).toBe('  File "f.py", line 4999, in g');
  });
});

describe('custom nodes from the startup output', () => {
  it('parses the import-times block and the Cannot import line by folder name', () => {
    expect(parseNodeLine('   0.0 seconds (IMPORT FAILED): /workspace/ComfyUI/custom_nodes/broken_node')).toEqual({ node: 'broken_node', loaded: false });
    expect(parseNodeLine('   1.5 seconds: /workspace/ComfyUI/custom_nodes/My Node')).toEqual({ node: 'My Node', loaded: true });
    expect(parseNodeLine('Cannot import /w/custom_nodes/x module for custom nodes: boom')).toEqual({ node: 'x', loaded: false, error: 'boom' });
    expect(parseNodeLine('Starting server')).toBeUndefined();
  });

  it('records each instance\'s nodes (error masked), logs a failed node that declares env once, naming node and instance; requiredNodesFailed names them', () => {
    const masker = new SecretMasker();
    masker.add('HF_TOKEN', 'hf_canaryNODES-42');
    const m = monitorFor(['comfyui-gpu0', 'comfyui-gpu1'], { masker, envNodes: ['broken_node'] });
    const startup = fixture('startup.log').map((l) => l.replace("No module named 'not_a_real_module_xyz'", "No module named 'hf_canaryNODES-42'"));
    m.monitor.started('comfyui-gpu0');
    const logs = startup.flatMap((l) => m.monitor.line('comfyui-gpu0', 'stderr', l));
    const record = m.state.instanceRecords.get('comfyui-gpu0')!;
    expect([...record.nodes]).toEqual([
      ['broken_node', { loaded: false, error: "No module named '[masked:HF_TOKEN]'" }],
      ['websocket_image_save.py', { loaded: true }],
      ['secret_probe', { loaded: true }],
    ]);
    const envLogs = logs.filter((l) => l.fields.declaresEnv);
    expect(envLogs).toEqual([{
      level: 'error',
      msg: "custom node broken_node failed to import in comfyui-gpu0: No module named 'hf_canaryNODES-42'; it declares env, and its .env is written but unused",
      fields: { instance: 'comfyui-gpu0', node: 'broken_node', declaresEnv: true },
    }]);
    // What /status keeps is masked (the log is masked by the logger when it writes).
    expect(record.lastOutput).toHaveLength(20);
    expect(JSON.stringify(record)).not.toContain('hf_canary');
    expect(JSON.stringify([...record.nodes])).not.toContain('hf_canary');
    expect(record.lastError).toBe('   0.0 seconds (IMPORT FAILED): /workspace/ComfyUI/custom_nodes/broken_node');

    m.state.requiredNodes = ['broken_node', 'secret_probe', 'websocket_image_save'];
    expect(requiredNodesFailed(m.state)).toEqual([{ instance: 'comfyui-gpu0', node: 'broken_node', error: "No module named '[masked:HF_TOKEN]'" }]);
    expect(requiredNodesFailed(m.state, ['secret_probe'])).toEqual([]);
    expect(requiredNodesFailed(m.state, [])).toEqual([]);

    // The next run's nodes replace the last run's once it prints about them (until then the last run's stay).
    m.monitor.exited('comfyui-gpu0', { code: 1, signal: null });
    m.monitor.settle('comfyui-gpu0');
    m.monitor.started('comfyui-gpu0');
    expect(record.nodes.size).toBe(3);
    m.monitor.line('comfyui-gpu0', 'stderr', 'Import times for custom nodes:');
    m.monitor.line('comfyui-gpu0', 'stderr', '   0.1 seconds: /workspace/ComfyUI/custom_nodes/broken_node');
    expect([...record.nodes]).toEqual([['broken_node', { loaded: true }]]);
    expect(requiredNodesFailed(m.state)).toEqual([]);
  });

  it('keeps no text without a masker (only names and flags)', () => {
    const state = new BootState();
    const monitor = new InstanceMonitor(state.instanceRecords, { instances: () => ['comfyui-gpu0'] });
    for (const l of fixture('startup.log')) monitor.line('comfyui-gpu0', 'stderr', l);
    const record = state.instanceRecords.get('comfyui-gpu0')!;
    expect(record.nodes.get('broken_node')).toEqual({ loaded: false });
    expect(record.lastOutput).toEqual([]);
    expect(record.lastError).toBeUndefined();
    expect(requiredNodesFailed(state, ['broken_node'])).toEqual([{ instance: 'comfyui-gpu0', node: 'broken_node', error: 'IMPORT FAILED' }]);
  });
});

describe('crash loops', () => {
  it('every instance exiting at start with argparse\'s exit 2 is one finding naming COMFY_ARGS and quoting ComfyUI; failures count the rounds', () => {
    const m = monitorFor(['comfyui-gpu0', 'comfyui-gpu1']);
    const usage = fixture('unknown-flag.log');
    const first = run(m, 'comfyui-gpu0', usage, 2);
    // One instance alone is not "every instance".
    expect(first.settled.crashLoop).toBeUndefined();
    expect(m.state.instanceRecords.get('comfyui-gpu0')!.lastExit).toEqual({ code: 2, signal: null, at: '2026-01-10T12:00:00.500Z' });
    const second = run(m, 'comfyui-gpu1', usage, 2);
    const message = 'every instance (2) exits at start with exit code 2: ComfyUI says "main.py: error: unrecognized arguments: --no-such-flag"; exit code 2 is argparse refusing its arguments: check COMFY_ARGS';
    expect(second.settled.finding).toMatchObject({ message, code: 2, signal: null, line: 'main.py: error: unrecognized arguments: --no-such-flag', instances: ['comfyui-gpu0', 'comfyui-gpu1'], failures: 1 });
    // Found once: the next rounds carry the count, not a new finding.
    for (let round = 2; round <= 4; round += 1) {
      const a = run(m, 'comfyui-gpu0', usage, 2);
      expect(a.settled.finding).toBeUndefined();
      expect(a.settled.crashLoop?.failures).toBe(round - 1);
      const b = run(m, 'comfyui-gpu1', usage, 2);
      expect(b.settled.finding).toBeUndefined();
      expect(b.settled.crashLoop?.failures).toBe(round);
    }
    const record = m.state.instanceRecords.get('comfyui-gpu1')!;
    expect(record.exits).toBe(4);
    expect(record.lastOutput[record.lastOutput.length - 1]).toBe('main.py: error: unrecognized arguments: --no-such-flag');
  });

  it('numbers that differ between instances (their ports) do not make failures different; another exit code or message does', () => {
    const m = monitorFor(['comfyui-gpu0', 'comfyui-gpu1']);
    const port = fixture('port-in-use.log');
    run(m, 'comfyui-gpu0', port, 1);
    const other = run(m, 'comfyui-gpu1', port.map((l) => l.replace('18312', '18313')), 1);
    expect(other.settled.finding?.message).toBe(`every instance (2) exits at start with exit code 1: ComfyUI says "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 18312): address already in use"`);
    expect(normalizeFailure("('127.0.0.1', 18312)")).toBe(normalizeFailure("('127.0.0.1', 18313)"));

    const n = monitorFor(['comfyui-gpu0', 'comfyui-gpu1']);
    run(n, 'comfyui-gpu0', fixture('unknown-flag.log'), 2);
    expect(run(n, 'comfyui-gpu1', fixture('unknown-flag.log'), 1).settled.crashLoop).toBeUndefined();
    expect(run(n, 'comfyui-gpu1', ['main.py: error: unrecognized arguments: --other'], 2).settled.crashLoop).toBeUndefined();
    // A signal is its own kind of failure.
    expect(describeCrashLoop(1, null, 'SIGKILL', 'Killed')).toBe('every instance (1) exits at start killed by SIGKILL: ComfyUI says "Killed"');
  });

  it('an instance that came up (its server listens, or it ran past the start window) breaks the loop; an exit on purpose is not a failure', () => {
    const m = monitorFor(['comfyui-gpu0', 'comfyui-gpu1']);
    const usage = fixture('unknown-flag.log');
    run(m, 'comfyui-gpu0', usage, 2);
    // gpu1 starts properly, then crashes later: not at start.
    m.monitor.started('comfyui-gpu1');
    m.monitor.line('comfyui-gpu1', 'stderr', 'To see the GUI go to: http://127.0.0.1:8189');
    m.monitor.exited('comfyui-gpu1', { code: 2, signal: null });
    expect(m.monitor.settle('comfyui-gpu1').crashLoop).toBeUndefined();
    // Both fail at start again: a loop.
    run(m, 'comfyui-gpu0', usage, 2);
    expect(run(m, 'comfyui-gpu1', usage, 2).settled.finding?.failures).toBe(1);
    // gpu0 restarts and runs on past the window without its GUI line: no longer a loop.
    m.monitor.started('comfyui-gpu0');
    m.tick(200_000);
    expect(m.monitor.crashLoop()).toBeUndefined();
    // An exit after the window is not at start, and resets its count.
    m.monitor.exited('comfyui-gpu0', { code: 2, signal: null });
    expect(m.monitor.settle('comfyui-gpu0').crashLoop).toBeUndefined();
    // A restart on purpose (rotation) is recorded but judged no failure.
    m.monitor.started('comfyui-gpu1');
    m.monitor.exited('comfyui-gpu1', { code: 0, signal: null, onPurpose: true });
    expect(m.monitor.settle('comfyui-gpu1').crashLoop).toBeUndefined();
    expect(m.state.instanceRecords.get('comfyui-gpu1')!.lastExit?.code).toBe(0);
  });
});

describe('/ready, /status and /metrics report nodes and crash loops', () => {
  it('503 naming node and instance when a required node failed; /status per instance: nodes, lastExit, lastError, lastOutput (masked); node_loaded metric', async () => {
    const server = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as AddressInfo).port;
    const masker = new SecretMasker();
    masker.add('HF_TOKEN', 'hf_canaryREADY-99');
    const m = monitorFor(['comfyui-gpu0'], { masker });
    m.state.instances = [{ name: 'comfyui-gpu0', gpuIndex: 0, port, slot: 0, device: { id: 'gpu0', uuid: 'GPU-0' } } as InstancePlan];
    m.state.phase = 'running';
    const deps = { state: m.state, logger: silentLogger(), probeHost: '127.0.0.1', listInstances: async () => [{ name: 'comfyui-gpu0', pid: process.pid, status: 'online', restarts: 0, startedAt: Date.now() }] };
    try {
      m.monitor.started('comfyui-gpu0');
      for (const l of fixture('startup.log')) m.monitor.line('comfyui-gpu0', 'stderr', l);
      m.monitor.line('comfyui-gpu0', 'stderr', 'token hf_canaryREADY-99 in a line');
      expect(await readiness(deps)).toEqual({ ready: true, reason: 'all instances answer', instances: { 'comfyui-gpu0': true }, counts: { ready: 1, total: 1, required: 1 } });
      m.state.requiredNodes = ['broken_node', 'secret_probe'];
      const r = await readiness(deps);
      expect(r.ready).toBe(false);
      expect(r.reason).toBe("custom node broken_node failed to import in comfyui-gpu0: No module named 'not_a_real_module_xyz'");
      expect(r.failedNodes).toEqual([{ instance: 'comfyui-gpu0', node: 'broken_node', error: "No module named 'not_a_real_module_xyz'" }]);

      const health = await startHealthServer(0, '127.0.0.1', deps);
      try {
        const ready = await fetch(`http://127.0.0.1:${health.port}/ready`);
        expect(ready.status).toBe(503);
        const status = (await (await fetch(`http://127.0.0.1:${health.port}/status`)).json()) as {
          instances: Array<{ nodes: unknown; lastExit: unknown; lastError: string; lastOutput: string[] }>;
          requiredNodes: string[];
          crashLoop: unknown;
          lastError: unknown;
        };
        expect(status.instances[0]!.nodes).toEqual([
          { name: 'broken_node', loaded: false, error: "No module named 'not_a_real_module_xyz'" },
          { name: 'secret_probe', loaded: true },
          { name: 'websocket_image_save.py', loaded: true },
        ]);
        expect(status.instances[0]!.lastExit).toBeNull();
        expect(status.instances[0]!.lastOutput.at(-1)).toBe('token [masked:HF_TOKEN] in a line');
        expect(status.requiredNodes).toEqual(['broken_node', 'secret_probe']);
        expect(status.crashLoop).toBeNull();
        expect(status.lastError).toBeNull();
        const metrics = await (await fetch(`http://127.0.0.1:${health.port}/metrics`)).text();
        expect(metrics).toContain('gpu_boot_instance_node_loaded{app="comfyui-gpu0",node="broken_node"} 0');
        expect(metrics).toContain('gpu_boot_instance_node_loaded{app="comfyui-gpu0",node="secret_probe"} 1');
        expect(metrics).toContain('gpu_boot_ready 0');
      } finally {
        await health.close();
      }
    } finally {
      server.close();
    }
  });

  it('a crash loop is in /status (crashLoop, lastError, each instance\'s lastExit) and in /ready\'s reason', async () => {
    const m = monitorFor(['comfyui-gpu0']);
    m.state.instances = [{ name: 'comfyui-gpu0', gpuIndex: 0, port: 1, slot: 0, device: { id: 'gpu0', uuid: 'GPU-0' } } as InstancePlan];
    m.state.phase = 'running';
    const { settled } = run(m, 'comfyui-gpu0', fixture('unknown-flag.log'), 2);
    m.state.crashLoop = settled.crashLoop;
    const deps = { state: m.state, logger: silentLogger(), probeHost: '127.0.0.1', listInstances: async () => [{ name: 'comfyui-gpu0', pid: process.pid, status: 'online', restarts: 0, startedAt: Date.now() }] };
    const status = (await statusReport(deps)) as { crashLoop: { message: string; exitCode: number; failures: number }; lastError: string; instances: Array<{ lastExit: { code: number; signal: null; at: string }; lastError: string }> };
    expect(status.crashLoop).toMatchObject({ exitCode: 2, failures: 1 });
    expect(status.lastError).toBe(status.crashLoop.message);
    expect(status.lastError).toContain('COMFY_ARGS');
    expect(status.instances[0]!.lastExit).toEqual({ code: 2, signal: null, at: '2026-01-10T12:00:00.500Z' });
    expect(status.instances[0]!.lastError).toBe('main.py: error: unrecognized arguments: --no-such-flag');
    const r = await readiness(deps);
    expect(r.reason).toBe(`not answering: comfyui-gpu0; ${status.crashLoop.message}`);
  });
});
