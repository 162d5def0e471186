import { setMaxListeners } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { probeHost, type InstancePlan } from './plan.js';
import { describeHolders, portOwner, type PortHolder } from './ports.js';
import { withTimeout } from '../timeout.js';

/**
 * An instance is ready when it answers HTTP on its port (ComfyUI cannot send
 * PM2's IPC 'ready'). Any HTTP status counts: the server is up and serving.
 */
export async function probeHttp(host: string, port: number, timeoutMs: number): Promise<boolean> {
  // A port that refuses connections (the instance still importing its nodes) is told by a bare TCP
  // connect, a third of an HTTP request's CPU: 16 instances polled every 20 ms while they start
  // took ~0.6 s of gpu-boot's CPU from them with HTTP alone (bench/RESULTS.md).
  if (!(await accepts(host, port, timeoutMs))) return false;
  return new Promise((resolve) => {
    const request = http.get({ host, port, path: '/', timeout: timeoutMs, agent: false }, (response) => {
      response.resume();
      resolve(true);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/** Does `port` accept a TCP connection (within `timeoutMs`)? The connection is closed at once. */
function accepts(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Subscribes to "the instance says it serves now" (ComfyUI's `To see the GUI go to:` line); returns
 * the function that unsubscribes.
 */
export type WakeSource = (listener: () => void) => () => void;

/** The longest gap between two probes while the instance's own line is waited for too (a ComfyUI run with --dont-print-server). */
export const WOKEN_POLL_MAX_MS = 250;

/**
 * Poll until the port answers or the deadline passes: every 20 ms for the first
 * 2 s (a growing interval let a 140 ms start be noticed up to 80 ms late), then
 * growing to 500 ms, so a slow instance is not hammered.
 *
 * With `wake`, the port is asked at once each time the instance says it serves, and the polls
 * grow from 20 ms to WOKEN_POLL_MAX_MS at once: 16 instances polled every 20 ms while they start
 * cost gpu-boot's one thread about 0.45 ms a refused connection, CPU the instances need
 * (bench/RESULTS.md).
 */
export async function waitForHttp(
  host: string,
  port: number,
  deadline: number,
  signal?: AbortSignal,
  wake?: WakeSource,
  /** The first gap between polls, and the longest with `wake` (tests make them long, to see the wake alone answer). */
  poll: { firstMs: number; wokenMaxMs: number } = { firstMs: 20, wokenMaxMs: WOKEN_POLL_MAX_MS },
): Promise<boolean> {
  const started = Date.now();
  let interval = poll.firstMs;
  let woken = false;
  let onWake: (() => void) | undefined;
  const unsubscribe = wake?.(() => {
    woken = true;
    onWake?.();
  });
  try {
    while (!signal?.aborted) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      woken = false;
      if (await probeHttp(host, port, Math.min(2000, left))) return true;
      if (!woken && !(await pause(Math.min(interval, Math.max(0, deadline - Date.now())), signal, (resume) => (onWake = resume)))) return false;
      onWake = undefined;
      if (wake) interval = Math.min(poll.wokenMaxMs, Math.round(interval * 1.5));
      else if (Date.now() - started > 2000) interval = Math.min(500, Math.round(interval * 1.5));
    }
    return false;
  } finally {
    unsubscribe?.();
  }
}

/** Wait `ms`, or less when `setResume`'s function is called; false when `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined, setResume: (resume: () => void) => void): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', aborted);
      resolve(ok);
    };
    const aborted = () => finish(false);
    const timer = setTimeout(() => finish(true), ms);
    signal?.addEventListener('abort', aborted, { once: true });
    setResume(() => finish(true));
  });
}

/** What a port's answer is worth: this instance serving it, or someone else who took the port. */
export type PortIdentity = { owner: 'instance' | 'other' | 'unknown' | 'none'; holders: PortHolder[] };

/**
 * Does `port` serve this instance? The listening socket's holder must be the process PM2 started
 * for it (or its child). Where the holder cannot be seen from here, what the endpoint answers
 * decides: ComfyUI's /system_stats (a `system` object and a `devices` list).
 */
export async function servesInstance(host: string, port: number, pid: number | undefined): Promise<PortIdentity> {
  const identity = portOwner(port, pid, net.isIPv6(host) ? 6 : 4);
  // 'none' right after an answer: the socket tables are behind or unreadable; the answer itself decides.
  if (identity.owner === 'instance' || identity.owner === 'other') return identity;
  return (await answersLikeComfyUi(host, port)) ? { owner: 'instance', holders: [] } : identity;
}

async function answersLikeComfyUi(host: string, port: number): Promise<boolean> {
  const stats = (await getJson(host, port, '/system_stats', 2000, 64 * 1024)) as { system?: unknown; devices?: unknown } | undefined;
  return typeof stats?.system === 'object' && stats.system !== null && Array.isArray(stats.devices);
}

/** GET `path` as JSON: the parsed body of a 200 answer of at most `maxBytes`, else undefined. */
export function getJson(host: string, port: number, path: string, timeoutMs: number, maxBytes = 1024 * 1024): Promise<unknown> {
  return new Promise((resolve) => {
    const request = http.get({ host, port, path, timeout: timeoutMs, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size <= maxBytes) chunks.push(chunk);
      });
      response.on('end', () => {
        if (response.statusCode !== 200 || size > maxBytes) return resolve(undefined);
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch {
          resolve(undefined);
        }
      });
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(undefined));
  });
}

/**
 * Wait until `port` answers HTTP and is served by this instance (pidOf gives PM2's pid for it).
 * An answer from a process that is not the instance (a port someone else holds: the real ComfyUI
 * then crash-loops on "address already in use") is reported once through `onForeign`, not taken
 * for readiness.
 */
export async function waitForInstance(
  host: string,
  port: number,
  deadline: number,
  signal: AbortSignal | undefined,
  pidOf: (() => Promise<number | undefined>) | undefined,
  onForeign: (holders: PortHolder[]) => void = () => undefined,
  onServing: () => void = () => undefined,
  wake?: WakeSource,
): Promise<boolean> {
  let reported = false;
  while (!signal?.aborted) {
    if (!(await waitForHttp(host, port, deadline, signal, wake))) return false;
    if (!pidOf) return true;
    // PM2 that does not answer must not hold readiness (or the shutdown after it) forever.
    const pid = await Promise.race([withTimeout(pidOf(), 2000), new Promise<undefined>((resolve) => signal?.addEventListener('abort', () => resolve(undefined), { once: true }))]);
    if (signal?.aborted) return false;
    const identity = await servesInstance(host, port, pid);
    if (identity.owner === 'instance') {
      onServing();
      return true;
    }
    if (identity.owner === 'other' && !reported) {
      reported = true;
      onForeign(identity.holders);
    }
    try {
      await delay(Math.min(500, Math.max(0, deadline - Date.now())), undefined, { signal });
    } catch {
      return false;
    }
    if (Date.now() >= deadline) return false;
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
  /** PM2's pid for an instance: with it, only an answer from that process (or its child) counts. */
  pidOf?: (name: string) => Promise<number | undefined>,
  /** An instance served its port (it came up, whatever it printed). */
  onServing: (name: string) => void = () => undefined,
  /** When an instance says it serves (its output), for the port to be asked at once. */
  wakeOf?: (name: string) => WakeSource,
): Promise<void> {
  const started = performance.now();
  const deadline = Date.now() + config.readyTimeoutMs;
  const foreign = (instance: InstancePlan) => (holders: PortHolder[]) =>
    logger.error(
      { instance: instance.name, port: instance.port, holders },
      `port ${instance.port} answers, but it is held by ${describeHolders(holders)}, not by ${instance.name}: that process is not ready; free the port or choose another COMFYUI_PORT_START`,
    );
  const host = probeHost(config.comfyuiListen);
  // Each instance's wait listens on the one signal: 16 GPUs are 16 listeners, not a leak.
  setMaxListeners(Math.max(10, instances.length + 2), signal);
  const results = await Promise.all(
    instances.map(async (instance) => {
      const ok = await waitForInstance(host, instance.port, deadline, signal, pidOf && (() => pidOf(instance.name)), foreign(instance), () => onServing(instance.name), wakeOf?.(instance.name));
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
      if (await waitForInstance(host, instance.port, Number.POSITIVE_INFINITY, signal, pidOf && (() => pidOf(instance.name)), foreign(instance), () => onServing(instance.name), wakeOf?.(instance.name))) {
        logger.info({ instance: instance.name, port: instance.port, late: true }, `${instance.name} answers on port ${instance.port}, late`);
      }
    }),
  );
}

/**
 * Node classes per custom node from a serving instance's /object_info: current ComfyUI gives each
 * class its `python_module` (`custom_nodes.<name>`). Undefined when it cannot be read or names none.
 */
export async function objectInfoClasses(host: string, port: number, timeoutMs = 5000): Promise<Record<string, number> | undefined> {
  const info = (await getJson(host, port, '/object_info', timeoutMs, 64 * 1024 * 1024)) as Record<string, { python_module?: unknown } | null> | undefined;
  if (!info || typeof info !== 'object') return undefined;
  const classes: Record<string, number> = {};
  let any = false;
  for (const entry of Object.values(info)) {
    if (typeof entry?.python_module !== 'string') continue;
    any = true;
    const match = /^custom_nodes\.([^.]+)/.exec(entry.python_module);
    if (match) classes[match[1]!] = (classes[match[1]!] ?? 0) + 1;
  }
  return any ? classes : undefined;
}
