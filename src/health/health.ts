import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { detectionReport } from '../gpus/report.js';
import type { Config } from '../config.js';
import { BootError, describeError, ExitCode } from '../errors.js';
import { withTimeout } from '../timeout.js';
import { probeHost } from '../instances/plan.js';
import { describeHolders, portOwner } from '../instances/ports.js';
import type { BootState } from './state.js';
import { degradedReport, instanceReadiness, liveness, readiness, type HealthDeps, type HealthRules } from './rules.js';

export * from './rules.js';

/**
 * The probes platforms call: /health (liveness), /ready (every instance answers),
 * /status (JSON), /metrics (Prometheus, through prom-client rather than a hand-written
 * exposition). Read-only: no endpoint starts, stops or runs anything, and the query
 * string is ignored.
 */
function portIdentity(port: number, pid: number | undefined): { owner: string; heldBy?: string } {
  const identity = portOwner(port, pid && pid > 0 ? pid : undefined);
  return identity.owner === 'other' ? { owner: 'other', heldBy: describeHolders(identity.holders) } : { owner: identity.owner };
}

function instanceHealthReport(state: BootState, name: string) {
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

export async function statusReport(deps: HealthDeps) {
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

/** What /status answers, as `gpu-boot status` reads it back. */
export type StatusReport = Awaited<ReturnType<typeof statusReport>>;

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
