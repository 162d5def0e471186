import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Config } from '../config.js';
import { BootError, describeError, ExitCode } from '../errors.js';
import { withTimeout } from '../timeout.js';
import type { InstanceState } from './processes.js';
import { probeHost } from './plan.js';
import { probeHttp } from './readiness.js';
import type { BootState } from './state.js';

/**
 * The probes platforms call: /health (liveness), /ready (every instance answers),
 * /status (JSON), /metrics (Prometheus, through prom-client rather than a hand-written
 * exposition). Read-only: no endpoint starts, stops or runs anything, and the query
 * string is ignored.
 */
export interface HealthDeps {
  state: BootState;
  logger: Logger;
  probeHost: string;
  /** PM2's view of the instances; undefined until PM2 is up. */
  listInstances: () => Promise<InstanceState[] | undefined>;
}

const PROBE_TIMEOUT_MS = 1000;

export async function readiness(deps: HealthDeps): Promise<{ ready: boolean; reason: string; instances: Record<string, boolean> }> {
  const { state } = deps;
  if (state.phase === 'stopping') return { ready: false, reason: 'shutting down', instances: {} };
  if (state.instances.length === 0) return { ready: false, reason: 'starting: no instance started yet', instances: {} };
  const answers = await Promise.all(state.instances.map((i) => probeHttp(deps.probeHost, i.port, PROBE_TIMEOUT_MS)));
  const instances = Object.fromEntries(state.instances.map((i, n) => [i.name, answers[n] ?? false]));
  const down = state.instances.filter((_, n) => !answers[n]).map((i) => i.name);
  if (down.length === 0) return { ready: true, reason: 'all instances answer', instances };
  const why = state.rotating && down.includes(state.rotating) ? `, ${state.rotating} restarting for a rotation` : '';
  return { ready: false, reason: `not answering: ${down.join(', ')}${why}`, instances };
}

export async function statusReport(deps: HealthDeps): Promise<object> {
  const { state } = deps;
  const pm2 = await withTimeout(deps.listInstances().catch(() => undefined), 2000);
  return {
    phase: state.phase,
    uptimeSeconds: Math.round((Date.now() - state.startedAt) / 1000),
    phases: state.phases,
    gpus: state.gpus
      ? { count: state.gpus.count, model: state.gpus.model, source: state.gpus.source, driver: state.gpus.driver, list: state.gpus.gpus.map((g) => ({ index: g.index, name: g.name, memoryMiB: g.memoryMiB })) }
      : null,
    instances: state.instances.map((plan) => {
      const live = pm2?.find((p) => p.name === plan.name);
      return {
        name: plan.name,
        gpu: plan.gpuIndex,
        port: plan.port,
        pid: live?.pid ?? null,
        state: live?.status ?? 'unknown',
        restarts: live?.restarts ?? null,
        uptimeSeconds: live?.startedAt ? Math.round((Date.now() - live.startedAt) / 1000) : null,
      };
    }),
    nodes: state.nodes.map((n) => ({ name: n.name, file: n.file, keys: n.keys })),
    rotation: { ...state.rotations, rotating: state.rotating ?? null, last: state.lastRotation ?? null },
    lastError: state.lastError ?? null,
  };
}

/** prom-client is loaded on the first scrape of /metrics, not on the boot's path. */
async function buildRegistry(deps: HealthDeps): Promise<Registry> {
  const { collectDefaultMetrics, Gauge, Registry } = await import('prom-client');
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'gpu_boot_process_' });
  const { state } = deps;
  new Gauge({
    name: 'gpu_boot_ready',
    help: '1 when every instance answers on its port',
    registers: [registry],
    async collect() {
      this.set((await readiness(deps)).ready ? 1 : 0);
    },
  });
  new Gauge({
    name: 'gpu_boot_gpus',
    help: 'GPUs detected',
    registers: [registry],
    collect() {
      this.set(state.gpus?.count ?? 0);
    },
  });
  new Gauge({
    name: 'gpu_boot_gpu_memory_bytes',
    help: 'memory of each GPU',
    labelNames: ['index', 'name'],
    registers: [registry],
    collect() {
      for (const g of state.gpus?.gpus ?? []) this.set({ index: String(g.index), name: g.name }, g.memoryMiB * 1024 * 1024);
    },
  });
  new Gauge({
    name: 'gpu_boot_instance_restarts',
    help: 'PM2 restarts of each instance',
    labelNames: ['instance', 'gpu', 'port'],
    registers: [registry],
    async collect() {
      const list = (await withTimeout(deps.listInstances().catch(() => undefined), 2000)) ?? [];
      for (const plan of state.instances) {
        const live = list.find((p) => p.name === plan.name);
        this.set({ instance: plan.name, gpu: String(plan.gpuIndex), port: String(plan.port) }, live?.restarts ?? 0);
      }
    },
  });
  new Gauge({
    name: 'gpu_boot_phase_duration_seconds',
    help: 'duration of each boot phase',
    labelNames: ['phase'],
    registers: [registry],
    collect() {
      for (const p of state.phases) this.set({ phase: p.name }, p.ms / 1000);
    },
  });
  new Gauge({
    name: 'gpu_boot_rotations',
    help: 'secret rotations since start, by result',
    labelNames: ['result'],
    registers: [registry],
    collect() {
      this.set({ result: 'ok' }, state.rotations.ok);
      this.set({ result: 'failed' }, state.rotations.failed);
    },
  });
  return registry;
}

export interface HealthServer {
  port: number;
  close(): Promise<void>;
}

export async function startHealthServer(port: number, host: string, deps: HealthDeps): Promise<HealthServer> {
  let registry: Promise<Registry> | undefined;
  const send = (res: http.ServerResponse, status: number, body: string, type = 'application/json'): void => {
    res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
    res.end(body);
  };
  const server = http.createServer((req, res) => {
    const route = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, JSON.stringify({ error: 'read-only: GET only' }));
    (async () => {
      switch (route) {
        case '/health':
          return send(res, 200, JSON.stringify({ ok: true, phase: deps.state.phase }));
        case '/ready': {
          const r = await readiness(deps);
          return send(res, r.ready ? 200 : 503, JSON.stringify(r));
        }
        case '/status':
          return send(res, 200, JSON.stringify(await statusReport(deps)));
        case '/metrics': {
          registry ??= buildRegistry(deps);
          const r = await registry;
          return send(res, 200, await r.metrics(), r.contentType);
        }
        default:
          return send(res, 404, JSON.stringify({ error: 'not found', endpoints: ['/health', '/ready', '/status', '/metrics'] }));
      }
    })().catch((error: unknown) => {
      deps.logger.error({ err: (error as Error).message, route }, 'health endpoint failed');
      if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'internal error' }));
    });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The boot's server, from the settings: a port it cannot take is a configuration error (exit 78). */
export async function startConfiguredHealthServer(
  config: Pick<Config, 'healthPort' | 'healthBind' | 'comfyuiListen'>,
  logger: Logger,
  state: BootState,
  listInstances: HealthDeps['listInstances'],
): Promise<HealthServer> {
  try {
    const server = await startHealthServer(config.healthPort, config.healthBind, { state, logger, probeHost: probeHost(config.comfyuiListen), listInstances });
    logger.info({ port: server.port, bind: config.healthBind }, `health server on ${config.healthBind}:${server.port} (/health, /ready, /status, /metrics)`);
    return server;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new BootError(ExitCode.config, 'invalid configuration', [
      `HEALTH_PORT: cannot listen on ${config.healthBind}:${config.healthPort} (${code === 'EADDRINUSE' ? 'the port is in use' : code ?? describeError(error)}); set another port, or 0 to turn the server off`,
    ]);
  }
}
