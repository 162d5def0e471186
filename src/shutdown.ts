import { ExitCode, describeError } from './errors.js';
import { withTimeout } from './timeout.js';
import type { RunContext } from './runner.js';
import { wipeRecord } from './files/wipe.js';
import type { FileSession } from './files/env-files.js';
import { procStartTime } from './files/storage.js';

/** An instance seen at the boot: its pid, and when that process started (a pid PM2 gave up may be someone else's by now). */
export interface KnownPid {
  pid: number;
  start: string | undefined;
}
import { isAlive, type ProcessManager } from './instances/processes.js';
import { probeHost, type InstancePlan } from './instances/plan.js';
import { drainQueues, recordCutPrompts } from './instances/supervisor.js';

/** The finish stage: stop instances within the budget, then wipe no matter what, then stop PM2. */
export async function shutdown(ctx: RunContext, processes: ProcessManager, knownPids: KnownPid[], files: FileSession | undefined, drain: InstancePlan[] = [], stopRequestedAt = Date.now()): Promise<number> {
  const { config, logger } = ctx;
  const started = performance.now();
  // The budget counts from the stop's start: what the runner did before calling here is inside it.
  const budgetEnd = stopRequestedAt + config.shutdownTimeoutMs;
  let exitCode: number = ExitCode.ok;

  // Drain: readiness already says 503 (stopping); the running prompts may finish while the budget
  // leaves room for the stop itself (COMFYUI_KILL_TIMEOUT_MS) and the wipe.
  if (drain.length > 0) {
    const reserve = Math.max(1000, config.shutdownTimeoutMs / 4) + config.killTimeoutMs;
    const drainEnd = budgetEnd - reserve;
    const drainStarted = performance.now();
    const known = new Map(drain.map((i) => [i.name, ctx.state?.health.get(i.name)?.queue?.ids ?? []] as const));
    const left = await drainQueues(probeHost(config.comfyuiListen), drain, drainEnd, { known });
    for (const [instance, prompts] of left) {
      if (ctx.state) recordCutPrompts(ctx.state, instance, prompts, 'shutdown');
      logger.error({ instance, prompts }, `${instance}: ${prompts.length} prompt(s) still queued when the drain ran out of the shutdown budget; the stop cuts them off`);
    }
    logger.info({ phase: 'drain', ms: Math.round(performance.now() - drainStarted), cut: [...left.values()].reduce((n, p) => n + p.length, 0) }, left.size ? 'drain ran out of time' : 'drained: no prompt running');
  }

  // Apps started by hand in the PM2 this process serves stop with the instances: named first, and
  // their processes (pid and start, taken now) killed with the instances' if the budget runs out.
  const byHand = processes.appsByHand();
  const byHandPids: KnownPid[] = byHand.filter((app) => app.pid > 0).map((app) => ({ pid: app.pid, start: procStartTime(app.pid) }));
  if (byHand.length) logger.warn({ apps: byHand.map((app) => app.name) }, `stopping ${byHand.length} app(s) started by hand in gpu-boot's PM2: ${byHand.map((app) => app.name).join(', ')}`);
  const stopped = processes.stopAll().then(
    () => true,
    (error: unknown) => {
      logger.error({ err: describeError(error) }, 'PM2 could not stop the instances cleanly');
      return false;
    },
  );
  // Leave a quarter of the budget (at least 1 s) for the wipe and PM2's own exit.
  const stopBudget = Math.max(0, budgetEnd - Date.now() - Math.max(1000, config.shutdownTimeoutMs / 4));
  const inTime = (await withTimeout(stopped, stopBudget)) ?? false;
  // Whatever of ours still runs now (the budget ran out, or the daemon died and left its children) is killed:
  // the pids PM2 has now (an instance may have restarted since the boot), plus those seen at start.
  // Only a run that started instances may kill any: a refused second run must not touch the first's.
  const stillOurs = (known: KnownPid[]) => known.filter((k) => isAlive(k.pid) && procStartTime(k.pid) === k.start).map((k) => k.pid);
  const leftovers = [
    ...new Set([...(processes.startedInstances ? [...(await processes.currentPids()), ...stillOurs(knownPids)] : []), ...stillOurs(byHandPids)]),
  ];
  if (leftovers.length) {
    logger.error({ pids: leftovers }, inTime ? 'instances outlived PM2; killing them' : 'instances did not stop within the shutdown budget; killing them');
    await processes.killRemaining(leftovers);
    exitCode = ExitCode.ioError;
  }
  const instancesStoppedAt = performance.now();

  if (files) {
    // Exactly what this run put in place, proven by identity; the plan goes with the boot.
    const result = wipeRecord(files.state, files.record, { ...(files.secrets ? { secrets: files.secrets.dir } : {}), folders: files.held });
    if (result.problems.length) {
      logger.error({ problems: result.problems }, 'some files could not be wiped; run `gpu-boot wipe`');
      exitCode = ExitCode.ioError;
    }
    for (const skipped of result.skipped) logger.warn(skipped);
    logger.info(
      { phase: 'wipe', ms: Math.round((performance.now() - instancesStoppedAt) * 10) / 10, removed: result.removed, restored: result.restored },
      `wiped ${result.removed} file(s), restored ${result.restored}`,
    );
  }
  await withTimeout(processes.close(), budgetEnd - Date.now());
  // Leave no empty state folder behind (the daemon record went with the daemon).
  if (files) {
    files.state.removeIfEmpty();
    files.close();
  }
  logger.info({ phase: 'shutdown', ms: Math.round(performance.now() - started) }, 'stopped');
  return exitCode;
}

