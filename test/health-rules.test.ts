import { describe, expect, it } from 'vitest';
import { liveness, readiness, type HealthDeps } from '../src/health/health.js';
import { BootState } from '../src/health/state.js';
import type { WatchdogSnapshot } from '../src/gpus/watchdog.js';
import { newInstanceHealth } from '../src/instances/supervisor.js';
import type { InstancePlan } from '../src/instances/plan.js';
import { captureLogger } from './helpers/logger.js';

/** The rules of /health and /ready on a BootState set by hand: no instance runs, nothing is probed. */
function deps(overrides: Partial<HealthDeps> = {}): HealthDeps & { state: BootState } {
  const state = new BootState();
  state.phase = 'running';
  return { state, logger: captureLogger().logger, probeHost: '127.0.0.1', listInstances: async () => [], ...overrides };
}

const gpu = (index: number, state: WatchdogSnapshot['gpus'][number]['state'], reason: string | null = null): WatchdogSnapshot['gpus'][number] => ({
  index,
  uuid: `GPU-${index}`,
  state,
  consecutiveFailures: state === 'healthy' ? 0 : 3,
  reason,
  cordonedAt: state === 'cordoned' ? 1 : null,
  sample: null,
});

const snapshot = (gpus: WatchdogSnapshot['gpus']): WatchdogSnapshot => ({ intervalMs: 30_000, running: false, checks: 3, failedChecks: 0, skippedTicks: 0, lastCheckAt: null, lastDurationMs: null, lastError: null, gpus });

describe('liveness (/health)', () => {
  it('200 while all is well, and always while starting or stopping', async () => {
    const d = deps();
    expect(await liveness(d)).toEqual({ live: true, reasons: [] });
    d.state.phase = 'starting';
    d.state.eventLoopLagMs = 60_000;
    expect((await liveness({ ...d, listInstances: async () => undefined })).live).toBe(true);
    d.state.phase = 'stopping';
    expect((await liveness({ ...d, listInstances: async () => undefined })).live).toBe(true);
  });

  it('PM2 does not answer (undefined, or a rejection)', async () => {
    expect(await liveness(deps({ listInstances: async () => undefined }))).toEqual({ live: false, reasons: ['PM2 does not answer'] });
    expect(await liveness(deps({ listInstances: () => Promise.reject(new Error('socket closed')) }))).toEqual({ live: false, reasons: ['PM2 does not answer'] });
  });

  it('the event loop stalled beyond HEALTH_EVENT_LOOP_STALL_MS; 0 turns the rule off', async () => {
    const d = deps({ rules: { readyMinInstances: 'all', allFailedMs: 0, eventLoopStallMs: 5000 } });
    d.state.eventLoopLagMs = 4999;
    expect((await liveness(d)).live).toBe(true);
    d.state.eventLoopLagMs = 7250.4;
    expect(await liveness(d)).toEqual({ live: false, reasons: ['the event loop stalled for 7250 ms (HEALTH_EVENT_LOOP_STALL_MS=5000)'] });
    expect((await liveness({ ...d, rules: { readyMinInstances: 'all', allFailedMs: 0, eventLoopStallMs: 0 } })).live).toBe(true);
  });

  it('no healthy GPU left: every GPU cordoned; one failing (a single failed check) or not checked yet is not enough', async () => {
    expect((await liveness(deps({ gpuHealth: () => snapshot([gpu(0, 'unknown'), gpu(1, 'unknown')]) }))).live).toBe(true);
    expect((await liveness(deps({ gpuHealth: () => snapshot([gpu(0, 'cordoned', 'GPU is lost'), gpu(1, 'healthy')]) }))).live).toBe(true);
    expect((await liveness(deps({ gpuHealth: () => snapshot([gpu(0, 'cordoned', 'GPU is lost'), gpu(1, 'failing', 'uncorrected ECC errors rose')]) }))).live).toBe(true);
    expect(await liveness(deps({ gpuHealth: () => snapshot([gpu(0, 'cordoned', 'GPU is lost'), gpu(1, 'cordoned', 'uncorrected ECC errors rose')]) }))).toEqual({
      live: false,
      reasons: ['no healthy GPU left (GPU 0 cordoned: GPU is lost; GPU 1 cordoned: uncorrected ECC errors rose)'],
    });
  });

  it('no instance has answered for longer than HEALTH_ALL_FAILED_MS', async () => {
    const d = deps({ rules: { readyMinInstances: 'all', allFailedMs: 60_000, eventLoopStallMs: 0 } });
    d.state.allDownSince = Date.now() - 30_000;
    expect((await liveness(d)).live).toBe(true);
    d.state.allDownSince = Date.now() - 90_500;
    expect(await liveness(d)).toEqual({ live: false, reasons: ['no instance has answered for 91 s (HEALTH_ALL_FAILED_MS=60000)'] });
  });
});

describe('readiness (/ready) rules without a running instance', () => {
  it('an instance out of service is not ready, with its reason; the rule counts the others', async () => {
    const d = deps({ rules: { readyMinInstances: 1, allFailedMs: 0, eventLoopStallMs: 0 } });
    d.state.instances = [{ name: 'comfyui-gpu0', gpuIndex: 0, port: 1 } as InstancePlan];
    const health = newInstanceHealth({ name: 'comfyui-gpu0', gpuIndex: 0 });
    health.out = { kind: 'cordoned', reason: 'GPU 0 cordoned: GPU is lost', at: 'now' };
    d.state.health.set('comfyui-gpu0', health);
    const r = await readiness(d);
    expect(r.ready).toBe(false);
    expect(r.notReady).toEqual({ 'comfyui-gpu0': 'out of service (cordoned): GPU 0 cordoned: GPU is lost' });
    expect(r.counts).toEqual({ ready: 0, total: 1, required: 1 });
    expect(r.reason).toBe('comfyui-gpu0 out of service (cordoned): GPU 0 cordoned: GPU is lost');
  });
});
