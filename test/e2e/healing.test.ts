import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { standInImds } from '../helpers/imds.js';
import { endBoot, FAKE_NVIDIA_SMI, getJson, makeWorkspace, startBoot, waitFor, type Boot, type Workspace } from '../helpers/boot.js';

/**
 * Health and healing end to end: real boots under real PM2 with the stand-in ComfyUI made to fail on
 * demand (a file per failure, `{port}` naming one instance), probed through the health server.
 */

const HF_TOKEN = 'hf_canaryHEALING5e1a';

interface InstanceStatus {
  name: string;
  pid: number | null;
  health: {
    answering: boolean | null;
    hungRestarts: number;
    lastHang: { reason: string } | null;
    restartsInWindow: number;
    out: { kind: string; reason: string } | null;
    queue: { running: number; pending: number; runningPrompt: string | null } | null;
  };
}

interface Status {
  instances: InstanceStatus[];
  degraded: { degraded: boolean; out: Array<{ instance: string; reason: string }> };
  liveness: { live: boolean; reasons: string[] };
  hungRestarts: number;
}

let ws: Workspace | undefined;
let boot: Boot | undefined;
afterEach(async () => {
  await endBoot(boot, 'SIGKILL');
  boot = undefined;
  await ws?.cleanup();
  ws = undefined;
});

async function workspace(instances = 2): Promise<Workspace> {
  ws = await makeWorkspace({ nodes: ['hf_node'], manifest: { custom_nodes: [{ name: 'hf_node', env: { HF_TOKEN: '${HF_TOKEN}' } }] }, gpus: instances });
  return ws;
}

async function http200(port: number, urlPath: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${port}${urlPath}`);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const status = async (w: Workspace): Promise<Status> => (await getJson(w.healthPort, '/status')) as Status;

/** Queue a prompt on the stand-in that runs for `seconds`; its prompt id. */
async function queuePrompt(port: number, seconds: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/prompt`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: { '1': { class_type: 'KSampler', inputs: {} } }, extra_data: { standin_seconds: seconds } }) });
  return ((await response.json()) as { prompt_id: string }).prompt_id;
}

/** Until the stand-in on `port` runs a prompt. */
async function untilRunning(port: number): Promise<void> {
  await waitFor('a prompt running', async () => ((await getJson(port, '/queue')) as { queue_running: unknown[] }).queue_running.length > 0 || undefined);
}

/** Fast probes: a hang is found in about a second, not in fifteen. */
const FAST = { SUPERVISOR_INTERVAL_MS: '300', HANG_TIMEOUT_MS: '1000', HANG_PROBES: '3', COMFYUI_RESTART_DELAY_MS: '100', CRASH_LOOP_LIMIT: '0' };

describe('readiness per instance, the READY_MIN_INSTANCES rule, and a hung instance restarted', () => {
  it('one of two instances hangs: /ready/<it> 503, /ready 200 with READY_MIN_INSTANCES=1, degraded; restarted as hung, then ready again', async () => {
    const w = await workspace(2);
    const hang = path.join(w.root, 'hang-{port}');
    const hangSecond = hang.replace('{port}', String(w.portStart + 1));
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, READY_MIN_INSTANCES: '1', STANDIN_HANG_FILE: hang, ...FAST, HANG_PROBES: '4' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    expect((await http200(w.healthPort, '/ready/comfyui-gpu1')).status).toBe(200);
    const firstPid = (await status(w)).instances[1]!.pid;
    await writeFile(hangSecond, '');
    // Out of readiness first, while the supervisor counts its failed probes.
    const one = await waitFor('gpu1 not ready', async () => {
      const r = await http200(w.healthPort, '/ready/comfyui-gpu1');
      return r.status === 503 ? r : undefined;
    });
    expect(one.body).toEqual({ ready: false, instance: 'comfyui-gpu1', reason: 'not answering' });
    expect(await http200(w.healthPort, '/ready/comfyui-gpu0')).toEqual({ status: 200, body: { ready: true, instance: 'comfyui-gpu0', reason: 'answers' } });
    const all = await http200(w.healthPort, '/ready');
    expect(all.status).toBe(200);
    expect(all.body.reason).toMatch(/^1 of 2 instances ready \(READY_MIN_INSTANCES=1\): not answering: comfyui-gpu1$/);
    expect(all.body.counts).toEqual({ ready: 1, total: 2, required: 1 });
    expect((await http200(w.healthPort, '/ready/no-such')).status).toBe(404);
    // Then restarted as hung: logged, counted, in /status.
    const hungLine = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('instance comfyui-gpu1 is hung'), 'hang restart', 30_000);
    expect(hungLine.msg).toBe('instance comfyui-gpu1 is hung (alive, but /system_stats did not answer within 1000 ms 4 times in a row): restarting it');
    await rm(hangSecond);
    const back = await waitFor('gpu1 ready again', async () => {
      const s = await status(w);
      const gpu1 = s.instances[1]!;
      return gpu1.health.answering && gpu1.pid !== firstPid ? s : undefined;
    }, 30_000);
    expect(back.hungRestarts).toBe(1);
    expect(back.instances[1]!.health).toMatchObject({ hungRestarts: 1, lastHang: { reason: 'alive, but /system_stats did not answer within 1000 ms 4 times in a row' }, out: null });
    expect(back.instances[0]!.health.hungRestarts).toBe(0);
    expect((await http200(w.healthPort, '/ready')).status).toBe(200);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('with READY_MIN_INSTANCES=all (the default), one instance down is /ready 503 and /status degraded; /health stays 200', async () => {
    const w = await workspace(2);
    const hang = path.join(w.root, 'hang-{port}');
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, STANDIN_HANG_FILE: hang, ...FAST, HANG_PROBES: '1000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    await writeFile(hang.replace('{port}', String(w.portStart)), '');
    const down = await waitFor('ready 503', async () => {
      const r = await http200(w.healthPort, '/ready');
      return r.status === 503 ? r : undefined;
    });
    expect(down.body).toMatchObject({ ready: false, reason: 'not answering: comfyui-gpu0', counts: { ready: 1, total: 2, required: 2 }, notReady: { 'comfyui-gpu0': 'not answering' } });
    const s = await waitFor('degraded', async () => {
      const x = await status(w);
      return x.degraded.degraded ? x : undefined;
    });
    expect(s.degraded.out).toEqual([{ instance: 'comfyui-gpu0', reason: 'not answering' }]);
    expect(await http200(w.healthPort, '/health')).toEqual({ status: 200, body: { ok: true, phase: 'running' } });
    // The metrics say it too, in the Prometheus text format a maintained parser reads.
    const families = parsePrometheusTextFormat(await (await fetch(`http://127.0.0.1:${w.healthPort}/metrics`)).text());
    const byName = new Map(families.map((f) => [f.name, f]));
    expect(byName.get('gpu_boot_degraded')?.metrics[0]?.value).toBe('1');
    expect(byName.get('gpu_boot_ready')?.metrics[0]?.value).toBe('0');
    expect(byName.get('gpu_boot_instance_ready')?.metrics.map((m) => [m.labels?.app, m.value])).toEqual([
      ['comfyui-gpu0', '0'],
      ['comfyui-gpu1', '1'],
    ]);
    expect(byName.get('gpu_boot_instance_restarts_total')?.type).toBe('COUNTER');
    expect(byName.get('gpu_boot_instance_up')?.metrics.map((m) => m.labels)).toEqual([
      { app: 'comfyui-gpu0', gpu: '0', uuid: 'MOCK-0000', device: 'gpu0' },
      { app: 'comfyui-gpu1', gpu: '1', uuid: 'MOCK-0001', device: 'gpu1' },
    ]);
    // One prefix, never doubled; counters end in _total.
    expect(families.filter((f) => !f.name.startsWith('gpu_boot_') || f.name.includes('process_process'))).toEqual([]);
    expect(families.filter((f) => f.type === 'COUNTER' && !f.name.endsWith('_total')).map((f) => f.name)).toEqual([]);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});

describe('liveness that can fail', () => {
  it('every instance hung longer than HEALTH_ALL_FAILED_MS: /health 503 with the reason', async () => {
    const w = await workspace(2);
    const hang = path.join(w.root, 'hang-all');
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, STANDIN_HANG_FILE: hang, ...FAST, HANG_PROBES: '1000', HEALTH_ALL_FAILED_MS: '1000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    expect((await http200(w.healthPort, '/health')).status).toBe(200);
    await writeFile(hang, '');
    const dead = await waitFor('health 503', async () => {
      const r = await http200(w.healthPort, '/health');
      return r.status === 503 ? r : undefined;
    }, 30_000);
    expect(dead.body.ok).toBe(false);
    expect(dead.body.reasons).toEqual([expect.stringMatching(/^no instance has answered for \d+ s \(HEALTH_ALL_FAILED_MS=1000\)$/)]);
    await rm(hang);
    await waitFor('health 200 again', async () => ((await http200(w.healthPort, '/health')).status === 200 ? true : undefined), 30_000);
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});

describe('a restart budget, and the exit when nothing is left', () => {
  it('an instance that crashes at every start is failed after RESTART_LIMIT restarts: stopped, in /status, the other serves; the last one failed ends the boot with 71 (no reallocation: no GPU failed)', async () => {
    const w = await workspace(2);
    // A loopback stand-in for SaladCloud's instance metadata service.
    const imds = await standInImds((res) => res.writeHead(202, { 'Content-Type': 'application/json' }).end('{}'));
    onTestFinished(imds.close);
    const calls = imds.seen;
    const fail = path.join(w.root, 'fail-{port}');
    await writeFile(fail.replace('{port}', String(w.portStart + 1)), '');
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, STANDIN_FAIL_FILE: fail, ...FAST, RESTART_LIMIT: '2', RESTART_WINDOW_MS: '60000', READY_TIMEOUT_MS: '2000', SALAD_MACHINE_ID: 'test-machine', SALAD_CONTAINER_GROUP_ID: 'test-group', SALAD_IMDS_URL: imds.url });
    const failed = await waitFor('gpu1 failed', async () => {
      const s = await status(w).catch(() => undefined);
      return s?.instances[1]?.health.out ? s : undefined;
    }, 60_000);
    expect(failed.instances[1]!.health.out).toMatchObject({ kind: 'failed', reason: expect.stringMatching(/^restarted \d+ times within 60 s \(RESTART_LIMIT=2\); last exit code 1: RuntimeError: CUDA error: an illegal memory access was encountered$/) });
    expect(failed.instances[0]!.health.out).toBeNull();
    expect((await http200(w.healthPort, '/ready/comfyui-gpu1')).body.reason).toMatch(/^out of service \(failed\): restarted/);
    expect(failed.degraded.out.map((o) => o.instance)).toEqual(['comfyui-gpu1']);
    // Stopped: PM2 restarts it no more.
    const stopped = await waitFor('gpu1 stopped', async () => {
      const s = (await status(w)) as Status & { instances: Array<InstanceStatus & { state: string }> };
      return s.instances[1]!.state === 'stopped' ? s : undefined;
    });
    expect(stopped.instances[1]!.pid === null || stopped.instances[1]!.pid === 0).toBe(true);
    expect(calls).toEqual([]);
    // The other one fails too: nothing is left, and the machine is given back.
    await writeFile(fail.replace('{port}', String(w.portStart)), '');
    await fetch(`http://127.0.0.1:${w.portStart}/system_stats`);
    const { execa } = await import('execa');
    const pids = (await status(w)).instances[0]!.pid;
    if (pids) await execa('kill', ['-9', String(pids)], { reject: false });
    const result = await boot.child;
    expect(result.exitCode).toBe(71);
    const line = boot.logs().find((l) => typeof l.msg === 'string' && l.msg.includes('this machine cannot serve'));
    expect(line?.msg).toBe('no instance left in service: comfyui-gpu0 failed, comfyui-gpu1 failed: this machine cannot serve; stopping (exit 71)');
    // Instances that crash are no GPU fault: no other machine is asked for.
    expect(calls).toEqual([]);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
    expect(result.all ?? '').not.toContain(HF_TOKEN);
  });
});

describe('drain before a stop', () => {
  it('SIGTERM while a prompt runs: it finishes within the budget, then the instances stop and the files are wiped', async () => {
    const w = await workspace(1);
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, SHUTDOWN_TIMEOUT_MS: '12000', COMFYUI_KILL_TIMEOUT_MS: '3000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const id = await queuePrompt(w.portStart, 2);
    await untilRunning(w.portStart);
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(result.exitCode).toBe(0);
    const drain = boot.logs().find((l) => l.phase === 'drain');
    expect(drain).toMatchObject({ msg: 'drained: no prompt running', cut: 0 });
    expect(Number(drain!.ms)).toBeGreaterThan(500);
    // The prompt ran to its end in the instance (its own log line), before the stop.
    expect(boot.lines.some((l) => l.includes('Prompt executed in'))).toBe(true);
    expect(boot.logs().some((l) => typeof l.msg === 'string' && l.msg.includes(id))).toBe(false);
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });

  it('a drain that runs out of the budget: the prompt cut off is named in the log', async () => {
    const w = await workspace(1);
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, SHUTDOWN_TIMEOUT_MS: '8000', COMFYUI_KILL_TIMEOUT_MS: '3000' });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const id = await queuePrompt(w.portStart, 120);
    const pending = await queuePrompt(w.portStart, 1);
    await untilRunning(w.portStart);
    const started = Date.now();
    boot.child.kill('SIGTERM');
    const result = await boot.child;
    expect(result.exitCode).toBe(0);
    const cut = boot.logs().find((l) => typeof l.msg === 'string' && l.msg.includes('still queued when the drain ran out'));
    expect(cut).toMatchObject({ instance: 'comfyui-gpu0', prompts: [id, pending], msg: 'comfyui-gpu0: 2 prompt(s) still queued when the drain ran out of the shutdown budget; the stop cuts them off' });
    expect(boot.logs().find((l) => l.phase === 'drain')).toMatchObject({ msg: 'drain ran out of time', cut: 2 });
    // Within the shutdown budget.
    expect(Date.now() - started).toBeLessThan(8000 + 5000);
  });
});

describe('the GPU watchdog', () => {
  const gpuEnv = (w: Workspace, state: string, extra: Record<string, string> = {}): Record<string, string> => {
    const env: Record<string, string> = {
      ...w.env,
      HF_TOKEN,
      GPU_MODE: 'actual',
      NVIDIA_SMI_PATH: FAKE_NVIDIA_SMI,
      FAKE_NVIDIA_SMI_MODE: 'h200x2',
      FAKE_NVIDIA_SMI_STATE: state,
      GPU_WATCHDOG_INTERVAL_MS: '300',
      GPU_WATCHDOG_FAILURES: '2',
      NVIDIA_SMI_TIMEOUT_MS: '1500',
      ...FAST,
      ...extra,
    };
    delete env.NUM_GPUS;
    return env;
  };

  it('a GPU lost mid-run is cordoned (its instance stopped, the other serves); uncorrected ECC errors cordon the last one: SaladCloud asked for another machine, exit 71', async () => {
    const w = await workspace(2);
    const state = path.join(w.root, 'smi-state');
    await writeFile(state, '');
    // A loopback stand-in for SaladCloud's instance metadata service.
    const imds = await standInImds((res) => res.writeHead(202, { 'Content-Type': 'application/json' }).end('{}'));
    onTestFinished(imds.close);
    const calls = imds.seen;
    const salad = { SALAD_MACHINE_ID: 'test-machine', SALAD_CONTAINER_GROUP_ID: 'test-group', SALAD_IMDS_URL: imds.url };
    boot = startBoot(['start'], gpuEnv(w, state, { READY_MIN_INSTANCES: '1', ...salad }));
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const first = await waitFor('watchdog sampled both', async () => {
      const s = (await getJson(w.healthPort, '/status')) as { gpuWatchdog: { gpus: Array<{ index: number; state: string }> } | null };
      return s.gpuWatchdog?.gpus.every((g) => g.state === 'healthy') ? s : undefined;
    });
    expect(first.gpuWatchdog!.gpus.map((g) => g.index)).toEqual([0, 1]);
    await writeFile(state, 'FAKE_NVIDIA_SMI_GPU_LOST=1\n');
    const cordoned = await waitFor('gpu1 cordoned', async () => {
      const s = (await getJson(w.healthPort, '/status')) as Status & { gpuWatchdog: { gpus: Array<{ index: number; state: string; reason: string | null }> } };
      return s.instances[1]?.health.out ? s : undefined;
    }, 30_000);
    expect(cordoned.instances[1]!.health.out).toMatchObject({ kind: 'cordoned', reason: expect.stringMatching(/^GPU 1 cordoned: .*lost/i) });
    expect(cordoned.gpuWatchdog.gpus.find((g) => g.index === 1)).toMatchObject({ state: 'cordoned', reason: expect.stringMatching(/lost/i) });
    expect(cordoned.instances[0]!.health.out).toBeNull();
    expect((await http200(w.healthPort, '/ready')).status).toBe(200);
    expect((await http200(w.healthPort, '/ready/comfyui-gpu1')).body.reason).toMatch(/^out of service \(cordoned\): GPU 1 cordoned/);
    const metrics = parsePrometheusTextFormat(await (await fetch(`http://127.0.0.1:${w.healthPort}/metrics`)).text());
    const cordonedMetric = metrics.find((f) => f.name === 'gpu_boot_gpu_cordoned');
    expect(cordonedMetric?.metrics.map((m) => [m.labels?.index, m.labels?.uuid, m.value])).toEqual([
      ['0', 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d', '0'],
      ['1', 'GPU-9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5e', '1'],
    ]);
    expect(metrics.find((f) => f.name === 'gpu_boot_gpu_temperature_celsius')?.metrics.length).toBeGreaterThan(0);
    // The last GPU starts reporting uncorrected ECC errors: failing, then cordoned; nothing left.
    await writeFile(state, 'FAKE_NVIDIA_SMI_GPU_LOST=1\nFAKE_NVIDIA_SMI_ECC=0:7\n');
    const result = await boot.child;
    expect(result.exitCode).toBe(71);
    const line = boot.logs().find((l) => typeof l.msg === 'string' && l.msg.includes('this machine cannot serve'));
    expect(line?.msg).toMatch(/^no healthy GPU left \(GPU 0: .*ECC.*\): this machine cannot serve; stopping \(exit 71\)$/i);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ method: 'POST', url: '/v1/reallocate', headers: expect.objectContaining({ metadata: 'true' }) });
    expect(JSON.parse(calls[0]!.body)).toEqual({ reason: expect.stringMatching(/^no healthy GPU left/) });
    expect(existsSync(w.envFile('hf_node'))).toBe(false);
  });

  it('a hung nvidia-smi is killed and counts as a failed check for every GPU: both cordoned after GPU_WATCHDOG_FAILURES, exit 71', async () => {
    const w = await workspace(2);
    const state = path.join(w.root, 'smi-state');
    await writeFile(state, '');
    boot = startBoot(['start'], gpuEnv(w, state, { NVIDIA_SMI_TIMEOUT_MS: '2000' }));
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    await writeFile(state, 'FAKE_NVIDIA_SMI_WATCH_HANG=1\n');
    const result = await boot.child;
    expect(result.exitCode).toBe(71);
    const cordons = boot.logs().filter((l) => typeof l.msg === 'string' && /^GPU \d cordoned: /.test(l.msg));
    expect(cordons.map((l) => l.gpu).sort()).toEqual([0, 1]);
    expect(String(cordons[0]!.msg)).toMatch(/did not answer within 2000 ms/);
  });
});

describe('a prompt that makes no progress, and a rotation that drains first', () => {
  it('PROMPT_STALL_MS: a running prompt that does not change is a hang (its worker died): restarted, the reason names the prompt', async () => {
    const w = await workspace(1);
    const dead = path.join(w.root, 'worker-dead');
    boot = startBoot(['start'], { ...w.env, HF_TOKEN, ...FAST, PROMPT_STALL_MS: '1500', STANDIN_WORKER_DEAD_FILE: dead });
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    const id = await queuePrompt(w.portStart, 600);
    await untilRunning(w.portStart);
    // The rule is in effect a longest prompt time: /queue tells which prompt runs, not its progress.
    await writeFile(dead, '');
    const line = await boot.waitForLog((l) => typeof l.msg === 'string' && l.msg.startsWith('instance comfyui-gpu0 is hung'), 'stall restart', 30_000);
    expect(line.msg).toMatch(new RegExp(`^instance comfyui-gpu0 is hung \\(prompt ${id} has been running for \\d+ s with no progress \\(PROMPT_STALL_MS=1500\\)\\): restarting it$`));
    await rm(dead);
    const back = await waitFor('answering again', async () => {
      const s = await status(w);
      return s.instances[0]!.health.answering && s.hungRestarts === 1 && s.instances[0]!.health.queue ? s : undefined;
    }, 30_000);
    expect(back.instances[0]!.health.queue).toEqual({ running: 0, pending: 0, runningPrompt: null });
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });

  it('a rotation drains an instance first: out of readiness while its prompt finishes, then restarted', async () => {
    const w = await workspace(1);
    const secret = path.join(w.secrets, 'hf');
    await writeFile(secret, 'hf_first_value_1234\n');
    // The prompt is held running (the worker stalls) until the drain has been seen, then let finish.
    const hold = path.join(w.root, 'hold');
    await writeFile(hold, '');
    const env: Record<string, string> = { ...w.env, HF_TOKEN_FILE: secret, ROTATION_DEBOUNCE_MS: '100', ROTATION_DRAIN_MS: '30000', STANDIN_WORKER_DEAD_FILE: hold };
    boot = startBoot(['start'], env);
    await boot.waitForLog((l) => l.phase === 'ready', 'ready');
    await rm(hold);
    await queuePrompt(w.portStart, 0.5);
    await untilRunning(w.portStart);
    await writeFile(hold, '');
    await writeFile(secret, 'hf_second_value_5678\n');
    const draining = await waitFor('draining', async () => {
      const r = await http200(w.healthPort, '/ready/comfyui-gpu0');
      return r.status === 503 && r.body.reason === 'draining: a rotation restarts it' ? r : undefined;
    }, 20_000);
    expect(draining.body).toEqual({ ready: false, instance: 'comfyui-gpu0', reason: 'draining: a rotation restarts it' });
    // Still the old process, its prompt still running.
    expect(((await getJson(w.portStart, '/queue')) as { queue_running: unknown[] }).queue_running).toHaveLength(1);
    await rm(hold);
    const rotated = await boot.waitForLog((l) => l.phase === 'rotation', 'rotation', 30_000);
    expect(rotated.instances).toEqual(['comfyui-gpu0']);
    expect(boot.lines.some((l) => l.includes('Prompt executed in'))).toBe(true);
    expect((await status(w)) as unknown as { cutPrompts: unknown[] }).toMatchObject({ cutPrompts: [] });
    boot.child.kill('SIGTERM');
    expect((await boot.child).exitCode).toBe(0);
  });
});
