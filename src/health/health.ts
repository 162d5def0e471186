import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { detectionReport } from '../gpus/report.js';
import type { Config } from '../config.js';
import { BootError, describeError, ExitCode } from '../errors.js';
import { withTimeout } from '../timeout.js';
import type { InstanceState } from '../instances/processes.js';
import { probeHost } from '../instances/plan.js';
import { probeHttp, servesInstance } from '../instances/readiness.js';
import { describeHolders, portHolders, portOwner } from '../instances/ports.js';
import { requiredNodesFailed, type BootState, type FailedNode } from './state.js';

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

export interface Readiness {
  ready: boolean;
  reason: string;
  instances: Record<string, boolean>;
  /** Required custom nodes that failed to import (only when some did). */
  failedNodes?: FailedNode[];
}

const MAX_REASONS = 5;

/** "custom node X failed to import in comfyui-gpu0, comfyui-gpu1: <ComfyUI's reason>", one per node and reason. */
export function describeFailedNodes(failed: FailedNode[]): string {
  const groups = new Map<string, { node: string; error: string; instances: string[] }>();
  for (const f of failed) {
    const key = `${f.node}\0${f.error}`;
    const group = groups.get(key) ?? { node: f.node, error: f.error, instances: [] };
    group.instances.push(f.instance);
    groups.set(key, group);
  }
  const all = [...groups.values()].map((g) => `custom node ${g.node} failed to import in ${g.instances.join(', ')}: ${g.error}`);
  const more = all.length > MAX_REASONS ? `; and ${all.length - MAX_REASONS} more` : '';
  return all.slice(0, MAX_REASONS).join('; ') + more;
}

export async function readiness(deps: HealthDeps): Promise<Readiness> {
  const { state } = deps;
  if (state.phase === 'stopping') return { ready: false, reason: 'shutting down', instances: {} };
  if (state.instances.length === 0) return { ready: false, reason: 'starting: no instance started yet', instances: {} };
  const answered = await Promise.all(state.instances.map((i) => probeHttp(deps.probeHost, i.port, PROBE_TIMEOUT_MS)));
  // An answer counts only from this instance: a port someone else took answers HTTP too.
  const pm2 = answered.some(Boolean) ? await withTimeout(deps.listInstances().catch(() => undefined), 2000) : [];
  // Without PM2's answer no port can be told to be this instance's, or someone else's.
  if (pm2 === undefined) return { ready: false, reason: 'PM2 does not answer: cannot tell who serves the instances\' ports', instances: {} };
  const foreign: string[] = [];
  const answers = await Promise.all(
    state.instances.map(async (i, n) => {
      if (!answered[n]) return false;
      // Not in PM2's list (a rotation re-creating it), or not running: whoever answers is not this instance.
      const live = pm2.find((p) => p.name === i.name);
      if (!live || !(live.pid > 0)) {
        const held = portHolders(i.port);
        if (held.length) foreign.push(`port ${i.port} of ${i.name} is held by ${describeHolders(held)}`);
        return false;
      }
      const identity = await servesInstance(deps.probeHost, i.port, live.pid);
      if (identity.owner === 'other') foreign.push(`port ${i.port} of ${i.name} is held by ${describeHolders(identity.holders)}`);
      return identity.owner === 'instance';
    }),
  );
  const instances = Object.fromEntries(state.instances.map((i, n) => [i.name, answers[n] ?? false]));
  const down = state.instances.filter((_, n) => !answers[n]).map((i) => i.name);
  const failedNodes = requiredNodesFailed(state);
  const reasons: string[] = [];
  if (foreign.length > 0) reasons.push(foreign.join('; '));
  if (failedNodes.length > 0) reasons.push(describeFailedNodes(failedNodes));
  if (down.length > 0) {
    const why = state.rotating && down.includes(state.rotating) ? `, ${state.rotating} restarting for a rotation` : '';
    reasons.push(`not answering: ${down.join(', ')}${why}`);
    if (state.crashLoop) reasons.push(state.crashLoop.message);
  }
  if (reasons.length === 0) return { ready: true, reason: 'all instances answer', instances };
  return { ready: false, reason: reasons.join('; '), instances, ...(failedNodes.length > 0 ? { failedNodes } : {}) };
}

function portIdentity(port: number, pid: number | undefined): { owner: string; heldBy?: string } {
  const identity = portOwner(port, pid && pid > 0 ? pid : undefined);
  return identity.owner === 'other' ? { owner: 'other', heldBy: describeHolders(identity.holders) } : { owner: identity.owner };
}

export async function statusReport(deps: HealthDeps): Promise<object> {
  const { state } = deps;
  const pm2 = await withTimeout(deps.listInstances().catch(() => undefined), 2000);
  return {
    phase: state.phase,
    uptimeSeconds: Math.round((Date.now() - state.startedAt) / 1000),
    phases: state.phases,
    // Which devices are used and why, as `detect --json` prints it.
    gpus: state.gpus ? detectionReport(state.gpus) : null,
    instances: state.instances.map((plan) => {
      const live = pm2?.find((p) => p.name === plan.name);
      const record = state.instanceRecords.get(plan.name);
      return {
        name: plan.name,
        gpu: plan.gpuIndex,
        device: plan.device.id,
        uuid: plan.device.uuid,
        slot: plan.slot,
        port: plan.port,
        // Its own temp folder, and output/input/user shared or its own (COMFYUI_SHARED_FOLDERS).
        folders: plan.folders,
        pid: live?.pid ?? null,
        state: live?.status ?? 'unknown',
        restarts: live?.restarts ?? null,
        uptimeSeconds: live?.startedAt ? Math.round((Date.now() - live.startedAt) / 1000) : null,
        // Who listens on its port: itself, nobody, or someone else (a port taken while it was down).
        portOwner: portIdentity(plan.port, live?.pid),
        // What its output said (masked): each custom node's import, its last exit and error, its last lines.
        nodes: [...(record?.nodes ?? [])]
          .sort(([a], [b]) => a.localeCompare(b))
          .map(([name, s]) => ({
            name,
            loaded: s.loaded,
            ...(s.error !== undefined ? { error: s.error } : {}),
            // Once it serves: how many node classes /object_info lists for it.
            ...(record?.classes ? { classes: record.classes[name.replace(/\.py$/, '')] ?? 0 } : {}),
          })),
        lastExit: record?.lastExit ?? null,
        lastError: record?.lastError ?? null,
        lastOutput: record?.lastOutput ?? [],
      };
    }),
    nodes: state.nodes.map((n) => ({ name: n.name, file: n.file, keys: n.keys })),
    requiredNodes: state.requiredNodes,
    rotation: { ...state.rotations, rotating: state.rotating ?? null, last: state.lastRotation ?? null },
    crashLoop: state.crashLoop
      ? { message: state.crashLoop.message, exitCode: state.crashLoop.code, signal: state.crashLoop.signal, failures: state.crashLoop.failures, instances: state.crashLoop.instances, at: state.crashLoop.at }
      : null,
    lastError: state.lastError ?? state.crashLoop?.message ?? null,
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
    name: 'gpu_boot_device_used',
    help: '1 for each device (whole GPU or MIG device) gpu-boot runs instances on, 0 for one it leaves alone',
    labelNames: ['device', 'uuid', 'gpu'],
    registers: [registry],
    collect() {
      for (const d of state.gpus?.selection.devices ?? []) this.set({ device: d.id, uuid: d.uuid, gpu: String(d.gpuIndex) }, d.used ? 1 : 0);
    },
  });
  new Gauge({
    name: 'gpu_boot_instance_restarts',
    help: 'PM2 restarts of each instance',
    labelNames: ['instance', 'gpu', 'device', 'port'],
    registers: [registry],
    async collect() {
      const list = (await withTimeout(deps.listInstances().catch(() => undefined), 2000)) ?? [];
      for (const plan of state.instances) {
        const live = list.find((p) => p.name === plan.name);
        this.set({ instance: plan.name, gpu: String(plan.gpuIndex), device: plan.device.id, port: String(plan.port) }, live?.restarts ?? 0);
      }
    },
  });
  new Gauge({
    name: 'gpu_boot_instance_node_loaded',
    help: '1 when the custom node loaded in the instance, 0 when its import failed (from the instance\'s output)',
    labelNames: ['instance', 'node'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [instance, record] of state.instanceRecords) for (const [node, s] of record.nodes) this.set({ instance, node }, s.loaded ? 1 : 0);
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
