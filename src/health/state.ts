import type { GpuDetection } from '../gpus/detect.js';
import type { CrashLoopFinding, InstanceRecord } from '../instances/instance-output.js';
import type { InstancePlan } from '../instances/plan.js';

/**
 * What the boot knows about itself, for /status and /metrics: names, figures and
 * times only. No value of a secret is ever put here.
 */
export interface RotationReport {
  at: string;
  reason: string;
  ok: boolean;
  ms: number;
  /** Names of the variables whose values changed. */
  variables: string[];
  files: string[];
  instances: string[];
  error?: string;
}

/** Why prompts were cut off: a stop, a rotation, a hang restart, or the instance taken out of service. */
export type CutDuring = 'shutdown' | 'rotation' | 'hang' | 'failed' | 'cordoned';

export interface QueueView {
  running: number;
  pending: number;
  /** The prompt id ComfyUI runs now, or null. */
  runningPrompt: string | null;
  /** When this supervisor first saw that prompt running (ms since the epoch). */
  runningSince: number | null;
  /** Ids of every queued prompt, running first: what a forced stop would cut. */
  ids: string[];
}

export interface OutOfService {
  kind: 'failed' | 'cordoned';
  reason: string;
  at: string;
}

/** The supervisor's view of one instance (src/instances/supervisor.ts keeps it up to date). */
export interface InstanceHealth {
  name: string;
  gpu: number;
  /** The last probe's verdict; null before the first. */
  answering: boolean | null;
  consecutiveFailures: number;
  /** It answered since PM2 last started it: only then can it be hung (a start that loads models is not). */
  servedSinceStart: boolean;
  lastAnsweredAt: number | null;
  queue: QueueView | null;
  hungRestarts: number;
  lastHang: { at: string; reason: string } | null;
  /** Times (ms) of the restarts PM2 made within the window. */
  restartTimes: number[];
  /** PM2's restart count when last seen: a rise is as many restarts. */
  pm2Restarts: number | null;
  /** Every restart seen since the boot (PM2's and gpu-boot's), never going down: the metric's counter. */
  totalRestarts: number;
  pid: number | null;
  out: OutOfService | null;
  draining: string | null;
}

export class BootState {
  readonly startedAt = Date.now();
  phase: 'starting' | 'running' | 'stopping' = 'starting';
  readonly phases: Array<{ name: string; ms: number }> = [];
  gpus: GpuDetection | undefined;
  instances: InstancePlan[] = [];
  nodes: Array<{ name: string; file: string; keys: string[] }> = [];
  /** The instance being restarted by a rotation, if any. */
  rotating: string | undefined;
  lastRotation: RotationReport | undefined;
  rotations = { ok: 0, failed: 0 };
  lastError: string | undefined;
  /** Custom nodes that must have loaded in every instance for /ready to say 200 (the runner sets it). */
  requiredNodes: string[] = [];
  /** Custom nodes whose manifest entry declares env (the runner sets it): a failed import of one is logged at error level. */
  envNodes: string[] = [];
  /** Per instance, from its output and exits (ProcessManager writes it; every text in it is masked). */
  readonly instanceRecords = new Map<string, InstanceRecord>();
  /** Set while every instance fails at start in the same way; cleared once one comes up. */
  crashLoop: CrashLoopFinding | undefined;
  /** Per instance, from the supervisor's probes: answering, queue, hangs, restart budget, out of service. */
  readonly health = new Map<string, InstanceHealth>();
  /** Since when no instance in service answers (ms since the epoch); null while one does. */
  allDownSince: number | null = null;
  /** Whether PM2 answered the supervisor's last list. */
  pm2Answering = true;
  hungRestarts = 0;
  /** The event loop's worst delay in the last window (ms), from the liveness monitor. */
  eventLoopLagMs = 0;
  /** Prompts a stop or a rotation cut off after the drain ran out of time. */
  cutPrompts: Array<{ instance: string; prompts: string[]; at: string; during: CutDuring }> = [];

  recordPhase(name: string, ms: number): void {
    this.phases.push({ name, ms });
  }
}

export interface FailedNode {
  instance: string;
  node: string;
  /** ComfyUI's reason (masked), or "IMPORT FAILED" when it gave none. */
  error: string;
}

/**
 * The required nodes that failed to import, per instance, as the instances' latest output tells.
 * A node an instance has said nothing about (not installed, or not imported yet) is not counted.
 * A single-file node (`x.py`) matches the name `x` too.
 */
export function requiredNodesFailed(state: BootState, required: readonly string[] = state.requiredNodes): FailedNode[] {
  const failed: FailedNode[] = [];
  if (required.length === 0) return failed;
  const wanted = new Set(required);
  for (const [instance, record] of state.instanceRecords) {
    for (const [node, status] of record.nodes) {
      if (status.loaded) continue;
      if (!wanted.has(node) && !(node.endsWith('.py') && wanted.has(node.slice(0, -3)))) continue;
      failed.push({ instance, node, error: status.error || 'IMPORT FAILED' });
    }
  }
  return failed.sort((a, b) => a.instance.localeCompare(b.instance, 'en', { numeric: true }) || a.node.localeCompare(b.node));
}
