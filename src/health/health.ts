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
import { healthyGpuCount, type WatchdogSnapshot } from '../gpus/watchdog.js';
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
  rules?: HealthRules;
  /** The GPU watchdog's view, where one runs. */
  gpuHealth?: () => WatchdogSnapshot | undefined;
}

/** The settings the probes follow (README, "Health and healing"). */
export interface HealthRules {
  /** How many instances must be ready for /ready: all, or at least N. */
  readyMinInstances: number | 'all';
  /** /health fails once no instance has answered for this long (0: never). */
  allFailedMs: number;
  /** /health fails while the event loop's worst recent delay is above this. */
  eventLoopStallMs: number;
}

export const DEFAULT_RULES: HealthRules = { readyMinInstances: 'all', allFailedMs: 600_000, eventLoopStallMs: 5000 };

const PROBE_TIMEOUT_MS = 1000;

export interface Readiness {
  ready: boolean;
  reason: string;
  instances: Record<string, boolean>;
  /** Why each instance that is not ready is not. */
  notReady?: Record<string, string>;
  /** Instances ready, and how many /ready needs (READY_MIN_INSTANCES). */
  counts?: { ready: number; total: number; required: number };
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
  const failedNodes = requiredNodesFailed(state);
  const notReady: Record<string, string> = {};
  const outOfService: string[] = [];
  state.instances.forEach((i, n) => {
    const health = state.health.get(i.name);
    const nodes = failedNodes.filter((f) => f.instance === i.name);
    if (health?.out) {
      notReady[i.name] = `out of service (${health.out.kind}): ${health.out.reason}`;
      outOfService.push(`${i.name} out of service (${health.out.kind}): ${health.out.reason}`);
    } else if (health?.draining) notReady[i.name] = `draining: ${health.draining}`;
    else if (!answers[n]) notReady[i.name] = state.rotating === i.name ? 'not answering: restarting for a rotation' : 'not answering';
    else if (nodes.length > 0) notReady[i.name] = describeFailedNodes(nodes);
  });
  const instances = Object.fromEntries(state.instances.map((i) => [i.name, notReady[i.name] === undefined]));
  const total = state.instances.length;
  const readyCount = Object.values(instances).filter(Boolean).length;
  const rule = (deps.rules ?? DEFAULT_RULES).readyMinInstances;
  const required = rule === 'all' ? total : Math.min(rule, total);
  const counts = { ready: readyCount, total, required };
  const down = state.instances.filter((i, n) => !answers[n] && !state.health.get(i.name)?.out).map((i) => i.name);
  const reasons: string[] = [];
  if (foreign.length > 0) reasons.push(foreign.join('; '));
  if (outOfService.length > 0) reasons.push(outOfService.join('; '));
  if (failedNodes.length > 0) reasons.push(describeFailedNodes(failedNodes));
  const draining = state.instances.filter((i) => state.health.get(i.name)?.draining).map((i) => i.name);
  if (draining.length > 0) reasons.push(`draining: ${draining.join(', ')}`);
  if (down.length > 0) {
    const why = state.rotating && down.includes(state.rotating) ? `, ${state.rotating} restarting for a rotation` : '';
    reasons.push(`not answering: ${down.join(', ')}${why}`);
    if (state.crashLoop) reasons.push(state.crashLoop.message);
  }
  const extra = { ...(Object.keys(notReady).length ? { notReady } : {}), counts, ...(failedNodes.length > 0 ? { failedNodes } : {}) };
  if (readyCount === total) return { ready: true, reason: 'all instances answer', instances, counts };
  // Degraded but in service: enough instances for READY_MIN_INSTANCES.
  if (readyCount >= required && readyCount > 0) return { ready: true, reason: `${readyCount} of ${total} instances ready (READY_MIN_INSTANCES=${rule}): ${reasons.join('; ')}`, instances, ...extra };
  return { ready: false, reason: reasons.join('; ') || 'no instance ready', instances, ...extra };
}

/** One instance's readiness, as /ready/<instance> answers it. */
export async function instanceReadiness(deps: HealthDeps, name: string): Promise<{ ready: boolean; instance: string; reason: string } | undefined> {
  if (!deps.state.instances.some((i) => i.name === name)) return undefined;
  const all = await readiness(deps);
  const ready = all.instances[name] === true;
  return { ready, instance: name, reason: ready ? 'answers' : (all.notReady?.[name] ?? all.reason) };
}

export interface Liveness {
  live: boolean;
  reasons: string[];
}

/**
 * /health: whether gpu-boot can still do its job. It fails (503) only while the boot runs, never
 * while it starts (a slow model load is the startupProbe's business) or stops: PM2 does not answer;
 * the event loop stalled; the GPU watchdog finds no healthy GPU; no instance has answered for longer
 * than HEALTH_ALL_FAILED_MS.
 */
export async function liveness(deps: HealthDeps): Promise<Liveness> {
  const { state } = deps;
  const rules = deps.rules ?? DEFAULT_RULES;
  if (state.phase !== 'running') return { live: true, reasons: [] };
  const reasons: string[] = [];
  const pm2 = await withTimeout(deps.listInstances().catch(() => undefined), 2000);
  if (pm2 === undefined) reasons.push('PM2 does not answer');
  if (rules.eventLoopStallMs > 0 && state.eventLoopLagMs > rules.eventLoopStallMs) {
    reasons.push(`the event loop stalled for ${Math.round(state.eventLoopLagMs)} ms (HEALTH_EVENT_LOOP_STALL_MS=${rules.eventLoopStallMs})`);
  }
  const gpus = deps.gpuHealth?.();
  // Cordoned only: one failed check leaves a GPU failing, and liveness must not outrun GPU_WATCHDOG_FAILURES.
  if (gpus && gpus.gpus.length > 0 && healthyGpuCount(gpus) === 0 && gpus.gpus.every((g) => g.state === 'cordoned')) reasons.push(`no healthy GPU left (${gpus.gpus.map((g) => `GPU ${g.index} ${g.state}${g.reason ? `: ${g.reason}` : ''}`).join('; ')})`);
  if (rules.allFailedMs > 0 && state.allDownSince !== null && Date.now() - state.allDownSince > rules.allFailedMs) {
    reasons.push(`no instance has answered for ${Math.round((Date.now() - state.allDownSince) / 1000)} s (HEALTH_ALL_FAILED_MS=${rules.allFailedMs})`);
  }
  return { live: reasons.length === 0, reasons };
}

/** Some instances or GPUs out, or not answering, while the container may still be in service. */
export function degradedReport(deps: HealthDeps): { degraded: boolean; out: Array<{ instance: string; reason: string }>; gpusOut: Array<{ index: number; reason: string }> } {
  const out: Array<{ instance: string; reason: string }> = [];
  for (const plan of deps.state.instances) {
    const h = deps.state.health.get(plan.name);
    if (h?.out) out.push({ instance: plan.name, reason: `${h.out.kind}: ${h.out.reason}` });
    // Not answering counts once it had answered: a start still loading its models is not degraded.
    else if (h?.answering === false && h.lastAnsweredAt !== null) out.push({ instance: plan.name, reason: 'not answering' });
  }
  const gpusOut = (deps.gpuHealth?.()?.gpus ?? []).filter((g) => g.state === 'cordoned' || g.state === 'failing').map((g) => ({ index: g.index, reason: `${g.state}${g.reason ? `: ${g.reason}` : ''}` }));
  return { degraded: out.length > 0 || gpusOut.length > 0, out, gpusOut };
}

function portIdentity(port: number, pid: number | undefined): { owner: string; heldBy?: string } {
  const identity = portOwner(port, pid && pid > 0 ? pid : undefined);
  return identity.owner === 'other' ? { owner: 'other', heldBy: describeHolders(identity.holders) } : { owner: identity.owner };
}

function instanceHealthReport(state: BootState, name: string): object | null {
  const h = state.health.get(name);
  if (!h) return null;
  return {
    answering: h.answering,
    lastAnsweredAt: h.lastAnsweredAt === null ? null : new Date(h.lastAnsweredAt).toISOString(),
    consecutiveFailures: h.consecutiveFailures,
    queue: h.queue ? { running: h.queue.running, pending: h.queue.pending, runningPrompt: h.queue.runningPrompt } : null,
    hungRestarts: h.hungRestarts,
    lastHang: h.lastHang,
    restartsInWindow: h.restartTimes.length,
    out: h.out,
    draining: h.draining,
  };
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
        // The supervisor's view: answering, its queue, hangs, the restart budget, out of service.
        health: instanceHealthReport(state, plan.name),
      };
    }),
    degraded: degradedReport(deps),
    liveness: await liveness(deps),
    gpuWatchdog: deps.gpuHealth?.() ?? null,
    hungRestarts: state.hungRestarts,
    cutPrompts: state.cutPrompts,
    nodes: state.nodes.map((n) => ({ name: n.name, file: n.file, keys: n.keys })),
    requiredNodes: state.requiredNodes,
    rotation: { ...state.rotations, rotating: state.rotating ?? null, last: state.lastRotation ?? null },
    crashLoop: state.crashLoop
      ? { message: state.crashLoop.message, exitCode: state.crashLoop.code, signal: state.crashLoop.signal, failures: state.crashLoop.failures, instances: state.crashLoop.instances, at: state.crashLoop.at }
      : null,
    lastError: state.lastError ?? state.crashLoop?.message ?? null,
  };
}

export interface HealthServer {
  port: number;
  close(): Promise<void>;
}

export async function startHealthServer(port: number, host: string, deps: HealthDeps): Promise<HealthServer> {
  let registry: Promise<Registry> | undefined;
  let scrapes: Promise<string> = Promise.resolve('');
  const send = (res: http.ServerResponse, status: number, body: string, type = 'application/json'): void => {
    res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
    res.end(body);
  };
  const server = http.createServer((req, res) => {
    const route = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, JSON.stringify({ error: 'read-only: GET only' }));
    (async () => {
      switch (route) {
        case '/health': {
          const l = await liveness(deps);
          return send(res, l.live ? 200 : 503, JSON.stringify({ ok: l.live, phase: deps.state.phase, ...(l.live ? {} : { reasons: l.reasons }) }));
        }
        case '/ready': {
          const r = await readiness(deps);
          return send(res, r.ready ? 200 : 503, JSON.stringify(r));
        }
        case '/status':
          return send(res, 200, JSON.stringify(await statusReport(deps)));
        case '/metrics': {
          registry ??= import('./metrics.js').then((m) => m.buildRegistry(deps));
          const r = await registry;
          // One scrape at a time: each collects into the same registry (two at once would add twice).
          const text = (scrapes = scrapes.then(() => r.metrics(), () => r.metrics()));
          return send(res, 200, await text, r.contentType);
        }
        default: {
          if (route?.startsWith('/ready/')) {
            let name = '';
            try {
              name = decodeURIComponent(route.slice('/ready/'.length));
            } catch {
              // Not a name any instance has.
            }
            const r = name ? await instanceReadiness(deps, name) : undefined;
            if (r) return send(res, r.ready ? 200 : 503, JSON.stringify(r));
            return send(res, 404, JSON.stringify({ error: 'no such instance', instances: deps.state.instances.map((i) => i.name) }));
          }
          return send(res, 404, JSON.stringify({ error: 'not found', endpoints: ['/health', '/ready', '/ready/<instance>', '/status', '/metrics'] }));
        }
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
export function healthRules(config: Pick<Config, 'readyMinInstances' | 'healthAllFailedMs' | 'healthEventLoopStallMs'>): HealthRules {
  return { readyMinInstances: config.readyMinInstances, allFailedMs: config.healthAllFailedMs, eventLoopStallMs: config.healthEventLoopStallMs };
}

export async function startConfiguredHealthServer(
  config: Pick<Config, 'healthPort' | 'healthBind' | 'comfyuiListen' | 'readyMinInstances' | 'healthAllFailedMs' | 'healthEventLoopStallMs'>,
  logger: Logger,
  state: BootState,
  listInstances: HealthDeps['listInstances'],
  gpuHealth?: HealthDeps['gpuHealth'],
): Promise<HealthServer> {
  try {
    const deps: HealthDeps = { state, logger, probeHost: probeHost(config.comfyuiListen), listInstances, rules: healthRules(config), ...(gpuHealth ? { gpuHealth } : {}) };
    const server = await startHealthServer(config.healthPort, config.healthBind, deps);
    logger.info({ port: server.port, bind: config.healthBind }, `health server on ${config.healthBind}:${server.port} (/health, /ready, /ready/<instance>, /status, /metrics)`);
    return server;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new BootError(ExitCode.config, 'invalid configuration', [
      `HEALTH_PORT: cannot listen on ${config.healthBind}:${config.healthPort} (${code === 'EADDRINUSE' ? 'the port is in use' : code ?? describeError(error)}); set another port, or 0 to turn the server off`,
    ]);
  }
}
