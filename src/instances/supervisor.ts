import type { Logger } from 'pino';
import { describeError } from '../errors.js';
import type { BootState, CutDuring, InstanceHealth, OutOfService } from '../health/state.js';

export type { CutDuring, InstanceHealth, OutOfService, QueueView } from '../health/state.js';
import { withTimeout } from '../timeout.js';
import type { InstancePlan } from './plan.js';
import type { InstanceState } from './processes.js';
import { getJson } from './readiness.js';

/**
 * The instances' supervisor: once the boot runs, it probes each instance on a period and acts.
 * - Hung: PM2 says online, it has served since its start, and /system_stats has not answered within
 *   the timeout for N probes in a row (or its running prompt has not changed for PROMPT_STALL_MS):
 *   restarted, one at a time, logged and counted.
 * - A restart budget: more than RESTART_LIMIT restarts within RESTART_WINDOW_MS and the instance is
 *   failed: stopped and reported, no longer restarted.
 * - What /ready, /health and /metrics need: who answers, queue depths, since when nothing answers.
 * One tick at a time: the next is scheduled when the last is done, so probes never stack.
 */

export interface SupervisorSettings {
  intervalMs: number;
  hangTimeoutMs: number;
  hangProbes: number;
  /** 0: off. */
  promptStallMs: number;
  /** 0: no budget (PM2 restarts forever). */
  restartLimit: number;
  restartWindowMs: number;
}

export interface SupervisorDeps {
  logger: Logger;
  state: BootState;
  probeHost: string;
  settings: SupervisorSettings;
  list: () => Promise<InstanceState[]>;
  restart: (name: string) => Promise<unknown>;
  stop: (name: string) => Promise<void>;
  /** Called once when no instance is left in service (each failed or cordoned). */
  onNothingLeft: (reason: string) => void;
  /**
   * True while the boot's readiness still waits for the instances: one that has not served since its
   * start is its to watch (it calls markServing), so the rounds take its pid and restarts but do not
   * probe it. 16 instances loading their nodes are otherwise asked /system_stats for nothing.
   */
  readinessWaiting?: () => boolean;
}

export function newInstanceHealth(plan: Pick<InstancePlan, 'name' | 'gpuIndex'>): InstanceHealth {
  return {
    name: plan.name,
    gpu: plan.gpuIndex,
    answering: null,
    consecutiveFailures: 0,
    servedSinceStart: false,
    lastAnsweredAt: null,
    queue: null,
    hungRestarts: 0,
    lastHang: null,
    restartTimes: [],
    pm2Restarts: null,
    totalRestarts: 0,
    pid: null,
    out: null,
    draining: null,
  };
}

/** ComfyUI's GET /queue: `{queue_running: [[number, prompt_id, ...]], queue_pending: [...]}`. */
export function readQueue(body: unknown): { running: string[]; pending: string[] } | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const { queue_running: running, queue_pending: pending } = body as { queue_running?: unknown; queue_pending?: unknown };
  if (!Array.isArray(running) || !Array.isArray(pending)) return undefined;
  const id = (entry: unknown): string => (Array.isArray(entry) && typeof entry[1] === 'string' ? entry[1] : '?');
  return { running: running.map(id), pending: pending.map(id) };
}

export class Supervisor {
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private tick: Promise<void> | undefined;
  private nothingLeftSent = false;

  constructor(private readonly deps: SupervisorDeps) {
    for (const plan of deps.state.instances) if (!deps.state.health.has(plan.name)) deps.state.health.set(plan.name, newInstanceHealth(plan));
  }

  /** The first round at once: it takes each instance's pid and PM2's restart count as they are at the start. */
  start(): void {
    this.schedule(0);
  }

  /** Stop acting at once (a round in flight does nothing more); waits at most `waitMs` for it. */
  async close(waitMs = 500): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await withTimeout(this.tick ?? Promise.resolve(), waitMs);
  }

  /** Readiness saw `name` serve its port: it has answered since its start (the supervisor's rounds may not have seen it yet). */
  markServing(name: string): void {
    const health = this.deps.state.health.get(name);
    if (!health) return;
    health.servedSinceStart = true;
    health.answering = true;
    health.lastAnsweredAt = Date.now();
  }

  /** Whether the supervisor may still act: not closed, and the boot runs. */
  private get acting(): boolean {
    return !this.closed && this.deps.state.phase === 'running';
  }

  private schedule(delay: number): void {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.tick = this.checkOnce()
        .catch((error: unknown) => this.deps.logger.error({ err: describeError(error) }, 'supervisor check failed'))
        .finally(() => this.schedule(this.deps.settings.intervalMs));
    }, delay);
    this.timer.unref();
  }

  /** One round: PM2's list, then each instance in service probed; at most one restart for a hang. */
  async checkOnce(): Promise<void> {
    const { state, settings, logger } = this.deps;
    if (state.phase !== 'running') return;
    const list = await withTimeout(this.deps.list().catch(() => undefined), 2000);
    state.pm2Answering = list !== undefined;
    const now = Date.now();
    const checked = await Promise.all(
      state.instances.map(async (plan) => {
        const health = state.health.get(plan.name) ?? newInstanceHealth(plan);
        state.health.set(plan.name, health);
        if (health.out || !list) return health;
        const live = list.find((p) => p.name === plan.name);
        const pid = live && live.pid > 0 ? live.pid : null;
        // PM2's own count: restarts between two rounds are seen too (a gpu-boot restart makes a new app, from 0).
        if (live && health.pm2Restarts !== null && live.restarts > health.pm2Restarts) {
          for (let n = health.pm2Restarts; n < live.restarts; n++) health.restartTimes.push(now);
          health.totalRestarts += live.restarts - health.pm2Restarts;
        }
        if (live) health.pm2Restarts = live.restarts;
        if (pid !== health.pid) {
          // Another process than the one seen before (PM2 restarted it, or it is down): counters start again.
          // The first one seen is the one readiness may already have seen serve.
          if (health.pid !== null) {
            health.servedSinceStart = false;
            health.consecutiveFailures = 0;
            health.queue = null;
          }
          health.pid = pid;
        }
        health.restartTimes = health.restartTimes.filter((t) => now - t <= settings.restartWindowMs);
        if (pid && !health.servedSinceStart && this.deps.readinessWaiting?.()) return health;
        const stats = pid ? await getJson(this.deps.probeHost, plan.port, '/system_stats', settings.hangTimeoutMs) : undefined;
        health.answering = stats !== undefined;
        if (stats !== undefined) {
          health.servedSinceStart = true;
          health.consecutiveFailures = 0;
          health.lastAnsweredAt = now;
          const queue = readQueue(await getJson(this.deps.probeHost, plan.port, '/queue', settings.hangTimeoutMs, QUEUE_MAX_BYTES));
          if (queue) {
            const runningPrompt = queue.running[0] ?? null;
            const runningSince = runningPrompt && health.queue?.runningPrompt === runningPrompt ? (health.queue.runningSince ?? now) : runningPrompt ? now : null;
            health.queue = { running: queue.running.length, pending: queue.pending.length, runningPrompt, runningSince, ids: [...queue.running, ...queue.pending] };
          } else if (health.queue) {
            // Unreadable this round: the ids are still the last known (what a stop would cut), but no stall is timed on them.
            health.queue = { ...health.queue, runningSince: null };
          }
        } else if (pid && live?.status === 'online' && health.servedSinceStart) {
          health.consecutiveFailures += 1;
        }
        return health;
      }),
    );
    if (!this.acting) return;
    // The restart budget first: an instance over it is failed, not restarted again.
    for (const health of checked) {
      if (health.out || settings.restartLimit <= 0 || health.restartTimes.length <= settings.restartLimit) continue;
      const record = state.instanceRecords.get(health.name);
      const last = record?.lastExit ? `; last exit ${record.lastExit.signal ?? `code ${record.lastExit.code}`}${record.lastError ? `: ${record.lastError}` : ''}` : '';
      await this.takeOut(health, 'failed', `restarted ${health.restartTimes.length} times within ${Math.round(settings.restartWindowMs / 1000)} s (RESTART_LIMIT=${settings.restartLimit})${last}`);
    }
    // Hangs, one restart per round: the others wait for the next.
    // Never one a rotation is restarting or draining, nor one out of service.
    const hung = checked.find((h) => !h.out && !h.draining && state.rotating !== h.name && this.hangReason(h, now));
    if (hung && this.acting) {
      const reason = this.hangReason(hung, now)!;
      hung.hungRestarts += 1;
      hung.lastHang = { at: new Date(now).toISOString(), reason };
      state.hungRestarts += 1;
      logger.warn({ instance: hung.name, reason, hungRestarts: hung.hungRestarts }, `instance ${hung.name} is hung (${reason}): restarting it`);
      this.recordCut(hung, 'hang');
      hung.consecutiveFailures = 0;
      hung.servedSinceStart = false;
      hung.queue = null;
      const restarted = await this.deps.restart(hung.name).then(
        () => true,
        (error: unknown) => {
          logger.error({ instance: hung.name, err: describeError(error) }, `could not restart ${hung.name}`);
          return false;
        },
      );
      hung.restartTimes.push(now);
      hung.totalRestarts += 1;
      if (restarted) {
        // A new app: PM2 counts from 0 again.
        hung.pid = null;
        hung.pm2Restarts = 0;
      } else if (this.acting && !(await withTimeout(this.deps.list().catch(() => undefined), 2000))?.some((p) => p.name === hung.name)) {
        // Deleted but not started again: nothing would ever restart it.
        await this.takeOut(hung, 'failed', `could not be restarted after a hang (${reason})`);
      }
    }
    // "No instance answers" counts once one has answered: a start that loads models for long is not a failure.
    const anyAnswering = checked.some((h) => !h.out && h.answering);
    if (anyAnswering) state.allDownSince = null;
    else if (checked.some((h) => h.lastAnsweredAt !== null)) state.allDownSince ??= now;
    this.checkNothingLeft();
  }

  private hangReason(health: InstanceHealth, now: number): string | undefined {
    const { settings } = this.deps;
    if (health.consecutiveFailures >= settings.hangProbes) {
      return `alive, but /system_stats did not answer within ${settings.hangTimeoutMs} ms ${health.consecutiveFailures} times in a row`;
    }
    const q = health.queue;
    if (settings.promptStallMs > 0 && q?.runningPrompt && q.runningSince !== null && now - q.runningSince >= settings.promptStallMs) {
      return `prompt ${q.runningPrompt} has been running for ${Math.round((now - q.runningSince) / 1000)} s with no progress (PROMPT_STALL_MS=${settings.promptStallMs})`;
    }
    return undefined;
  }

  /** The prompts a restart or a stop of `health` cuts off (the last ids seen), in /status and the log. */
  private recordCut(health: InstanceHealth, during: CutDuring): void {
    const ids = health.queue?.ids ?? [];
    if (ids.length === 0) return;
    recordCutPrompts(this.deps.state, health.name, ids, during);
    this.deps.logger.error({ instance: health.name, prompts: ids, during }, `${health.name}: ${ids.length} prompt(s) cut off (${during})`);
  }

  /** Take an instance out of service for good: stopped, shown in /status, counted against the exit rule. */
  async takeOut(health: InstanceHealth, kind: OutOfService['kind'], reason: string): Promise<void> {
    if (health.out || !this.acting) return;
    health.out = { kind, reason, at: new Date().toISOString() };
    this.recordCut(health, kind);
    this.deps.logger.error({ instance: health.name, kind, reason }, `instance ${health.name} is out of service (${kind}): ${reason}`);
    await this.deps.stop(health.name).catch((error: unknown) => this.deps.logger.error({ instance: health.name, err: describeError(error) }, `could not stop ${health.name}`));
    this.checkNothingLeft();
  }

  /** The GPU watchdog cordoned GPU `gpu`: every instance on it goes out of service. */
  async cordonGpu(gpu: number, reason: string): Promise<void> {
    for (const health of this.deps.state.health.values()) {
      if (health.gpu === gpu) await this.takeOut(health, 'cordoned', `GPU ${gpu} cordoned: ${reason}`);
    }
  }

  private checkNothingLeft(): void {
    const all = [...this.deps.state.health.values()];
    if (this.nothingLeftSent || !this.acting || all.length === 0 || !all.every((h) => h.out)) return;
    this.nothingLeftSent = true;
    this.deps.onNothingLeft(`no instance left in service: ${all.map((h) => `${h.name} ${h.out!.kind}`).join(', ')}`);
  }
}

/** Real ComfyUI's /queue carries every queued prompt's whole graph: read up to 64 MiB. */
export const QUEUE_MAX_BYTES = 64 * 1024 * 1024;


/** The last cut-off records kept for /status. */
export const MAX_CUT_RECORDS = 50;

export function recordCutPrompts(state: BootState, instance: string, prompts: string[], during: CutDuring): void {
  state.cutPrompts.push({ instance, prompts, at: new Date().toISOString(), during });
  if (state.cutPrompts.length > MAX_CUT_RECORDS) state.cutPrompts.splice(0, state.cutPrompts.length - MAX_CUT_RECORDS);
}

/**
 * Wait until the queues of `instances` are empty (nothing running, nothing pending), or until
 * `deadline` or `signal`; returns the prompt ids still queued then, per instance: what a stop now
 * cuts off. A queue that cannot be read is not taken for empty when prompts were known queued (`known`,
 * or an earlier poll): they stay listed, and it is asked again until the deadline.
 */
export async function drainQueues(
  probeHost: string,
  instances: Array<Pick<InstancePlan, 'name' | 'port'>>,
  deadline: number,
  options: { pollMs?: number; signal?: AbortSignal; known?: Map<string, string[]> } = {},
): Promise<Map<string, string[]>> {
  const pollMs = options.pollMs ?? 200;
  const left = new Map<string, string[]>();
  await Promise.all(
    instances.map(async (instance) => {
      const known = options.known?.get(instance.name);
      if (known?.length) left.set(instance.name, known);
      for (;;) {
        if (options.signal?.aborted) return;
        const remaining = deadline - Date.now();
        const queue = readQueue(await getJson(probeHost, instance.port, '/queue', Math.max(100, Math.min(1000, remaining)), QUEUE_MAX_BYTES));
        if (queue) {
          const ids = [...queue.running, ...queue.pending];
          if (ids.length === 0) {
            left.delete(instance.name);
            return;
          }
          left.set(instance.name, ids);
        } else if (!left.has(instance.name)) {
          // Never read and nothing known queued: nothing to wait for.
          return;
        }
        if (Date.now() + pollMs > deadline) return;
        await new Promise((resolve) => setTimeout(resolve, pollMs).unref());
      }
    }),
  );
  return left;
}
