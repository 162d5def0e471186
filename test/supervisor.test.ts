import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { BootState } from '../src/health/state.js';
import type { InstancePlan } from '../src/instances/plan.js';
import { Supervisor } from '../src/instances/supervisor.js';
import { freePorts } from './helpers/boot.js';
import { captureLogger } from './helpers/logger.js';

/**
 * The supervisor's rounds against a real HTTP server on loopback (what ComfyUI answers: /system_stats,
 * /queue): while the boot's readiness still waits, an instance that has not served since its start is
 * readiness's to watch, and is not probed; once readiness is done, it is.
 */
let server: http.Server | undefined;
afterEach(async () => {
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  server = undefined;
});

describe('Supervisor', () => {
  it('does not probe an instance that has not served while readiness waits for it; probes it after, and one that served at once', async () => {
    const port = await freePorts(1);
    const asked: string[] = [];
    server = http.createServer((req, res) => {
      asked.push(req.url ?? '');
      res.setHeader('Content-Type', 'application/json');
      res.end(req.url === '/queue' ? '{"queue_running":[],"queue_pending":[]}' : '{"system":{}}');
    });
    await new Promise<void>((resolve) => server!.listen(port, '127.0.0.1', resolve));
    const state = new BootState();
    state.instances = [{ name: 'comfyui-gpu0', gpuIndex: 0, port } as InstancePlan];
    state.phase = 'running';
    let waiting = true;
    const supervisor = new Supervisor({
      logger: captureLogger().logger,
      state,
      probeHost: '127.0.0.1',
      settings: { intervalMs: 60_000, hangTimeoutMs: 2000, hangProbes: 3, promptStallMs: 0, restartLimit: 0, restartWindowMs: 60_000 },
      list: async () => [{ name: 'comfyui-gpu0', pid: process.pid, status: 'online', restarts: 2, startedAt: Date.now() }],
      restart: async () => undefined,
      stop: async () => undefined,
      onNothingLeft: () => undefined,
      readinessWaiting: () => waiting,
    });
    await supervisor.checkOnce();
    const health = state.health.get('comfyui-gpu0')!;
    // Its pid and PM2's count are taken; no request reached it.
    expect(asked).toEqual([]);
    expect(health.pid).toBe(process.pid);
    expect(health.pm2Restarts).toBe(2);
    expect(health.answering).toBeNull();
    // Readiness saw it serve: from then on the rounds probe it, readiness waiting or not.
    supervisor.markServing('comfyui-gpu0');
    await supervisor.checkOnce();
    expect(asked).toEqual(['/system_stats', '/queue']);
    // One that has not served (a restart since) is probed once readiness is done.
    health.servedSinceStart = false;
    await supervisor.checkOnce();
    expect(asked).toHaveLength(2);
    waiting = false;
    await supervisor.checkOnce();
    expect(asked).toEqual(['/system_stats', '/queue', '/system_stats', '/queue']);
    expect(health.servedSinceStart).toBe(true);
    expect(health.answering).toBe(true);
    await supervisor.close();
  });
});
