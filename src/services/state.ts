import type { GpuDetection } from './hardware.js';
import type { InstancePlan } from './plan.js';

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

  recordPhase(name: string, ms: number): void {
    this.phases.push({ name, ms });
  }
}
