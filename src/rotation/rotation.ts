import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { BootError, describeError } from '../errors.js';
import type { SecretMasker } from '../log.js';
import { PartialWriteError, type FileSession, type NodeFile } from '../files/env-files.js';
import { nodeSummaries, prepareNodeFiles, type PreparedNodes } from '../secrets/node-files.js';
import type { InstancePlan } from '../instances/plan.js';
import type { ProcessManager } from '../instances/processes.js';
import { drainQueues, recordCutPrompts } from '../instances/supervisor.js';
import { waitForInstance } from '../instances/readiness.js';
import type { BootState } from '../health/state.js';

/**
 * Secret rotation: watch the folders around every source a secret came from
 * (Kubernetes and `current`-link swaps replace a folder link, which a watch on the
 * file itself would miss), debounce, resolve again, rewrite only the files whose
 * text changed, then restart the instances one at a time, each answering before
 * the next goes, so the machine never loses all its capacity. Invalid new values
 * change nothing: the old files and instances stay, and /status shows the error.
 */
export interface RotatorDeps {
  config: Config;
  logger: Logger;
  masker: SecretMasker;
  /** The environment as it was at start (the process's own copy has the secrets removed). */
  sourceEnv: NodeJS.ProcessEnv;
  processes: ProcessManager;
  state: BootState;
  /** This run's files: rewritten through it (two phases: all written and checked, then renamed). */
  files: FileSession;
  probeHost: string;
}

export class Rotator {
  private watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private pending: string | undefined;
  private closed = false;
  private readonly abort = new AbortController();
  private files = new Map<string, string>();
  private values = new Map<string, string>();

  constructor(
    private readonly deps: RotatorDeps,
    prepared: PreparedNodes,
  ) {
    this.remember(prepared);
  }

  private remember(prepared: PreparedNodes): void {
    this.files = new Map(prepared.files.map((f) => [f.path, f.text]));
    this.values = new Map([...prepared.resolution.variables.values()].map((v) => [v.variable, v.value]));
    this.watchSources(prepared);
  }

  /** Watch each source's folder and the folder above it (where a `current` or `..data` link is swapped). */
  private watchSources(prepared: PreparedNodes): void {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    if (this.closed || this.deps.config.rotation === 'off') return;
    const sources = [...prepared.resolution.variables.values()].flatMap((v) => (v.path ? [v.path] : []));
    if (this.deps.config.secretsEnvFile) sources.push(this.deps.config.secretsEnvFile);
    const folders = new Set<string>();
    for (const source of sources) {
      const dir = path.dirname(path.resolve(source));
      folders.add(dir);
      folders.add(path.dirname(dir));
    }
    for (const folder of folders) {
      try {
        const watcher = watch(folder, { persistent: false }, () => this.trigger('a secret source changed'));
        watcher.on('error', () => undefined);
        this.watchers.push(watcher);
      } catch (error) {
        this.deps.logger.warn({ folder, err: describeError(error) }, `cannot watch ${folder}; rotation there needs SIGHUP`);
      }
    }
  }

  /** Debounced: a burst of events (a Kubernetes update is several) makes one re-read. */
  trigger(reason: string): void {
    if (this.closed || this.deps.config.rotation === 'off') return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.run(reason), this.deps.config.rotationDebounceMs);
    this.timer.unref();
  }

  /** Re-read now (SIGHUP). */
  now(reason: string): Promise<void> {
    if (this.closed || this.deps.config.rotation === 'off') {
      this.deps.logger.info({ reason }, 'ROTATION=off: secret sources are not re-read');
      return Promise.resolve();
    }
    clearTimeout(this.timer);
    return this.run(reason);
  }

  private async run(reason: string): Promise<void> {
    if (this.running) {
      this.pending = reason;
      return this.running;
    }
    // Nothing a rotation meets may end the boot: every failure is reported and the old files stay.
    this.running = this.rotate(reason).catch((error: unknown) => this.fail(reason, performance.now(), `rotation failed, old files and instances kept: ${describeError(error)}`, error instanceof BootError ? error.problems : [])).finally(() => {
      this.running = undefined;
      const next = this.pending;
      this.pending = undefined;
      if (next && !this.closed) void this.run(next);
    });
    return this.running;
  }

  /** Wait for a rotation in progress (shutdown must not cut a file write in half). */
  async close(): Promise<void> {
    this.closed = true;
    // A restart waiting for an instance to answer stops waiting: the shutdown must not wait READY_TIMEOUT_MS.
    this.abort.abort();
    clearTimeout(this.timer);
    for (const w of this.watchers) w.close();
    this.watchers = [];
    await this.running?.catch(() => undefined);
  }

  private async rotate(reason: string): Promise<void> {
    const { config, logger, state } = this.deps;
    const started = performance.now();
    let prepared: PreparedNodes;
    try {
      prepared = await prepareNodeFiles(config, this.deps.sourceEnv, this.deps.masker, logger);
    } catch (error) {
      this.fail(reason, started, `rotation refused, old files and instances kept: ${describeError(error)}`, error instanceof BootError ? error.problems : []);
      return;
    }
    const newValues = new Map([...prepared.resolution.variables.values()].map((v) => [v.variable, v.value]));
    const variables = [...new Set([...newValues.keys(), ...this.values.keys()])].filter((v) => newValues.get(v) !== this.values.get(v)).sort();
    const changed: NodeFile[] = prepared.files.filter((f) => this.files.get(f.path) !== f.text);
    if (changed.length === 0) {
      logger.debug({ reason }, 'secret sources re-read: nothing changed');
      this.remember(prepared);
      return;
    }
    try {
      // All or nothing: a file that cannot be written whole (a full tmpfs) leaves every old file in place.
      await this.deps.files.write(changed);
    } catch (error) {
      if (error instanceof PartialWriteError && error.done.length) {
        // Some files are new: remember those, so the next re-read compares with what is on disk.
        const byPath = new Map(changed.map((f) => [f.path, f.text]));
        for (const done of error.done) this.files.set(done, byPath.get(done)!);
        this.fail(reason, started, `rotation partly applied, instances not restarted: ${describeError(error)}`, [`rewritten: ${error.done.join(', ')}`], variables);
        return;
      }
      this.fail(reason, started, `rotation failed, old files and instances kept: ${describeError(error)}`, error instanceof BootError ? error.problems : [], variables);
      return;
    }
    this.remember(prepared);
    state.nodes = nodeSummaries(prepared);

    const restarted: string[] = [];
    let error: string | undefined;
    if (config.rotation === 'restart') {
      // Every instance loads every custom node, so each one that runs must pick up the new files.
      for (const instance of state.instances) {
        if (this.closed) break;
        const ok = await this.restartOne(instance);
        restarted.push(instance.name);
        if (!ok) {
          error = `${instance.name} did not answer within READY_TIMEOUT_MS after its restart; the roll stopped there`;
          break;
        }
      }
    }
    const ms = Math.round(performance.now() - started);
    state.lastRotation = { at: new Date().toISOString(), reason, ok: error === undefined, ms, variables, files: changed.map((f) => f.path), instances: restarted, ...(error ? { error } : {}) };
    if (error) {
      state.rotations.failed += 1;
      state.lastError = error;
      logger.error({ variables, files: changed.map((f) => f.path), instances: restarted, ms }, `rotation incomplete: ${error}`);
    } else {
      state.rotations.ok += 1;
      state.lastError = undefined;
      logger.info(
        { phase: 'rotation', reason, variables, files: changed.map((f) => f.path), instances: restarted, ms },
        `rotation: ${variables.length} variable(s) changed (${variables.join(', ')}), ${changed.length} file(s) rewritten, ${restarted.length} instance(s) restarted in ${ms} ms`,
      );
    }
  }

  private fail(reason: string, started: number, message: string, problems: readonly string[], variables: string[] = []): void {
    const { logger, state } = this.deps;
    logger.error({ reason, problems, variables }, message);
    state.lastError = [message, ...problems].join('; ');
    state.rotations.failed += 1;
    state.lastRotation = { at: new Date().toISOString(), reason, ok: false, ms: Math.round(performance.now() - started), variables, files: [], instances: [], error: state.lastError };
  }

  private async restartOne(instance: InstancePlan): Promise<boolean> {
    const { state, processes, config, logger } = this.deps;
    // Drain first: out of readiness, then its queue may empty (ROTATION_DRAIN_MS) before the restart.
    const health = state.health.get(instance.name);
    if (health?.out) return true;
    if (health) health.draining = 'a rotation restarts it';
    if (config.rotationDrainMs > 0) {
      const known = new Map([[instance.name, health?.queue?.ids ?? []]]);
      const left = await drainQueues(this.deps.probeHost, [instance], Date.now() + config.rotationDrainMs, { signal: this.abort.signal, known });
      // A stop came during the drain: no restart now (the shutdown drains and stops it).
      if (this.closed || this.abort.signal.aborted) {
        if (health) health.draining = null;
        return false;
      }
      const cut = left.get(instance.name);
      if (cut?.length) {
        recordCutPrompts(state, instance.name, cut, 'rotation');
        logger.error({ instance: instance.name, prompts: cut }, `${instance.name}: ${cut.length} prompt(s) still queued after ROTATION_DRAIN_MS=${config.rotationDrainMs}; the rotation restart cuts them off`);
      }
    }
    if (health) health.draining = null;
    // Taken out (cordoned, failed) meanwhile: it stays out.
    if (health?.out) return true;
    state.rotating = instance.name;
    try {
      await processes.restartFresh(instance.name);
      return await waitForInstance(this.deps.probeHost, instance.port, Date.now() + config.readyTimeoutMs, this.abort.signal, async () => (await processes.list().catch(() => [])).find((i) => i.name === instance.name)?.pid);
    } finally {
      state.rotating = undefined;
    }
  }
}
