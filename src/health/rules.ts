import type { Logger } from 'pino';
import { healthyGpuCount, type WatchdogSnapshot } from '../gpus/watchdog.js';
import type { InstanceState } from '../instances/processes.js';
import { probeHttp, servesInstance } from '../instances/readiness.js';
import { describeHolders, portHolders } from '../instances/ports.js';
import { withTimeout } from '../timeout.js';
import { requiredNodesFailed, type BootState, type FailedNode } from './state.js';

/**
 * The rules the probes follow: /ready (the container, and each instance), /health (liveness), and
 * what counts as degraded. Pure over the boot's state, PM2's list and the instances' ports; the
 * server (health.ts) and the metrics (metrics.ts) both ask them.
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

