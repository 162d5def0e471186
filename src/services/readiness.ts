import { setMaxListeners } from 'node:events';
import http from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { probeHost, type InstancePlan } from './plan.js';

/**
 * An instance is ready when it answers HTTP on its port (ComfyUI cannot send
 * PM2's IPC 'ready'). Any HTTP status counts: the server is up and serving.
 */
export function probeHttp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get({ host, port, path: '/', timeout: timeoutMs, agent: false }, (response) => {
      response.resume();
      resolve(true);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/**
 * Poll until the port answers or the deadline passes: every 20 ms for the first
 * 2 s (a growing interval let a 140 ms start be noticed up to 80 ms late), then
 * growing to 500 ms, so a slow instance is not hammered.
 */
export async function waitForHttp(
  host: string,
  port: number,
  deadline: number,
  signal?: AbortSignal,
): Promise<boolean> {
  const started = Date.now();
  let interval = 20;
  while (!signal?.aborted) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    if (await probeHttp(host, port, Math.min(2000, left))) return true;
    try {
      await delay(Math.min(interval, Math.max(0, deadline - Date.now())), undefined, { signal });
    } catch {
      return false;
    }
    if (Date.now() - started > 2000) interval = Math.min(500, Math.round(interval * 1.5));
  }
  return false;
}

/**
 * Log each instance as it answers, then `ready` once all do (with the boot's duration). Past
 * READY_TIMEOUT_MS it warns and keeps watching, reporting a late instance when it answers.
 */
export async function reportReadiness(
  logger: Logger,
  config: Pick<Config, 'readyTimeoutMs' | 'comfyuiListen'>,
  instances: InstancePlan[],
  bootStarted: number,
  signal: AbortSignal,
  onReady: (ms: number) => void = () => undefined,
): Promise<void> {
  const started = performance.now();
  const deadline = Date.now() + config.readyTimeoutMs;
  const host = probeHost(config.comfyuiListen);
  // Each instance's wait listens on the one signal: 16 GPUs are 16 listeners, not a leak.
  setMaxListeners(Math.max(10, instances.length + 2), signal);
  const results = await Promise.all(
    instances.map(async (instance) => {
      const ok = await waitForHttp(host, instance.port, deadline, signal);
      if (ok) logger.info({ instance: instance.name, port: instance.port, gpu: instance.gpuIndex }, `${instance.name} answers on port ${instance.port}`);
      return ok;
    }),
  );
  if (signal.aborted) return;
  const ms = Math.round((performance.now() - started) * 10) / 10;
  if (results.every(Boolean)) {
    const bootMs = Math.round(performance.now() - bootStarted);
    logger.info({ phase: 'ready', ms, bootMs, instances: instances.length }, `all ${instances.length} instance(s) answer; boot took ${bootMs} ms`);
    onReady(ms);
    return;
  }
  const late = instances.filter((_, i) => !results[i]);
  logger.warn(
    { phase: 'ready', instances: late.map((i) => i.name) },
    `instances not answering after READY_TIMEOUT_MS=${config.readyTimeoutMs}: ${late.map((i) => i.name).join(', ')}; still waiting`,
  );
  await Promise.all(
    late.map(async (instance) => {
      if (await waitForHttp(host, instance.port, Number.POSITIVE_INFINITY, signal)) {
        logger.info({ instance: instance.name, port: instance.port, late: true }, `${instance.name} answers on port ${instance.port}, late`);
      }
    }),
  );
}
