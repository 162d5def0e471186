import { existsSync, lstatSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { BootError, ConfigError, ExitCode, describeError } from './errors.js';
import type { SecretMasker } from './log.js';
import { detectGpus, type GpuDetection } from './gpus/detect.js';
import { describeUse } from './gpus/report.js';
import { FileSession, StateDir } from './files/env-files.js';
import { wipeRecord } from './files/wipe.js';
import { loadManifestOrEmpty, nodeSummaries, prepareNodeFiles, withheldVariableNames, type PreparedNodes } from './secrets/node-files.js';
import { buildPlan, probeHost, type Plan, type ProcessEnvSource } from './instances/plan.js';
import { chooseOwner, chooseStorage, procStartTime, runStatus, storageBases, sweepDeadRuns, type RunId } from './files/storage.js';
import { ProcessManager } from './instances/processes.js';
import { stopOrphanedInstances } from './instances/orphans.js';
import { pm2HomeOf, preparePm2Home, removeStalePm2Files } from './instances/pm2-host.js';
import { StopRequested, StopRequests } from './stop-requests.js';
import { shutdown, type KnownPid } from './shutdown.js';
import { startConfiguredHealthServer, type HealthServer } from './health/health.js';
import { Rotator } from './rotation/rotation.js';
import { BootState } from './health/state.js';
import type { Manifest } from './secrets/manifest.js';
import { objectInfoClasses, reportReadiness } from './instances/readiness.js';
import { checkComfyArgsAtStart } from './instances/comfy-args.js';
import { prepareInstanceFolders, removeInstanceTemp } from './files/instance-folders.js';
import { instancePortProblems, listenAddresses } from './instances/ports.js';
import { Supervisor, type SupervisorSettings } from './instances/supervisor.js';
import { GpuWatchdog, type Finding } from './gpus/watchdog.js';
import { requestReallocation } from './gpus/reallocate.js';
import { watchEventLoop } from './health/event-loop.js';
import { withTimeout } from './timeout.js';
import { PACKAGE_ROOT } from './package-root.js';

/**
 * The lifecycle, and the only place that knows the order of the phases:
 *   recover -> detect -> secrets -> plan -> write -> PM2 start -> ready -> (wait) -> stop -> wipe
 * The wipe is a finish stage: it runs on every exit path once anything was written.
 */

export const ECOSYSTEM_FILE = path.join(PACKAGE_ROOT, 'ecosystem.config.cjs');

export interface RunContext {
  config: Config;
  logger: Logger;
  masker: SecretMasker;
  env: NodeJS.ProcessEnv;
  /** What /status and /metrics report; `start` sets it. */
  state?: BootState;
}

async function timed<T>(
  ctx: { logger: Logger; state?: BootState | undefined },
  phase: string,
  fn: () => Promise<T>,
  describe: (value: T) => object = () => ({}),
  summary: (value: T) => string = () => 'done',
): Promise<T> {
  const started = performance.now();
  const value = await fn();
  const ms = Math.round((performance.now() - started) * 10) / 10;
  ctx.logger.info({ phase, ms, ...describe(value) }, `${phase}: ${summary(value)} in ${ms} ms`);
  ctx.state?.recordPhase(phase, ms);
  return value;
}

export async function detectPhase(ctx: RunContext, withHost = true): Promise<GpuDetection> {
  return timed(ctx, 'detect', () => detectGpus(ctx.config, ctx.logger, withHost), (g) => ({
    source: g.source,
    count: g.count,
    model: g.model,
    memoryGb: g.memoryGb,
    driver: g.driver,
    host: g.host,
    devicesBy: g.selection.by,
    used: g.used.map((d) => `${d.id} ${d.uuid}`),
    nvidiaVisibleDevices: g.selection.nvidiaCheck,
  }), (g) => `${g.count} x ${g.model}, ${g.memoryGb} GiB each (${g.source}); ${describeUse(g)}`);
}


export async function secretsPhase(ctx: RunContext): Promise<PreparedNodes> {
  return timed(ctx, 'secrets', () => prepareNodeFiles(ctx.config, ctx.env, ctx.masker, ctx.logger), (p) => ({
    manifest: p.manifest.path,
    nodes: p.files.length,
    skipped: p.skipped,
    variables: capList([...p.resolution.variables.values()].map((v) => `${v.variable} <- ${v.source}`)),
  }), (p) => `${p.resolution.variables.size} variable(s) resolved for ${p.files.length} node file(s)${p.skipped.length ? `, ${p.skipped.length} node(s) skipped` : ''}`);
}

/** Long lists (500 nodes) make log lines no one reads and that cost time to mask: keep the first 50 and a count. */
function capList(items: string[], limit = 50): string[] {
  return items.length <= limit ? items : [...items.slice(0, limit), `... and ${items.length - limit} more`];
}

function supervisorSettings(config: Config): SupervisorSettings {
  return {
    intervalMs: config.supervisorIntervalMs,
    hangTimeoutMs: config.hangTimeoutMs,
    hangProbes: config.hangProbes,
    promptStallMs: config.promptStallMs,
    restartLimit: config.restartLimit,
    restartWindowMs: config.restartWindowMs,
  };
}

/** The GPU watchdog over the GPUs in use (GPU_MODE=actual, nvidia-smi found them, GPU_WATCHDOG_INTERVAL_MS > 0). */
function startWatchdog(ctx: RunContext, gpus: GpuDetection, onCordon: (gpu: { index: number; uuid: string }, reason: string) => void, onFinding: (finding: Finding) => void): GpuWatchdog | undefined {
  const { config } = ctx;
  if (config.gpuMode !== 'actual' || gpus.source !== 'nvidia-smi' || config.gpuWatchdogIntervalMs <= 0) return undefined;
  const inUse = [...new Map(gpus.used.map((d) => [d.gpuIndex, { index: d.gpuIndex, uuid: d.gpuUuid }])).values()];
  const watchdog = new GpuWatchdog({
    nvidiaSmiPath: config.nvidiaSmiPath,
    timeoutMs: config.nvidiaSmiTimeoutMs,
    intervalMs: config.gpuWatchdogIntervalMs,
    failuresToCordon: config.gpuWatchdogFailures,
    gpus: inUse,
    onCordon,
    onFinding,
  });
  watchdog.start();
  return watchdog;
}

/** Where the platform offers it (SaladCloud's IMDS), ask for another machine before giving up on this one. */
async function askForAnotherMachine(ctx: RunContext, reason: string): Promise<void> {
  const result = await requestReallocation({ env: ctx.env, imdsUrl: ctx.config.saladImdsUrl, reason, timeoutMs: 3000 });
  if (!result.asked) return;
  if (result.ok) ctx.logger.warn({ platform: result.platform, status: result.status }, `asked ${result.platform} for another machine (reallocate)`);
  else ctx.logger.error({ platform: result.platform, status: result.status, err: result.error }, `could not ask ${result.platform} for another machine`);
}

/** `plan`: the apps that would start, from detection and the manifest's variable names only. */
export async function computePlan(ctx: RunContext): Promise<Plan> {
  const gpus = await detectGpus(ctx.config, ctx.logger);
  const manifest = await loadManifestOrEmpty(ctx.config, ctx.logger);
  const owner = await chooseOwner(ctx.config);
  // The plan needs only where each installed node's .env will be, not its contents.
  const installed = new Map(
    manifest.nodes
      .filter((n) => existsSync(path.join(ctx.config.customNodesPath, n.name)))
      .map((n) => [n.name, path.join(ctx.config.customNodesPath, n.name, '.env')] as const),
  );
  return buildPlan(ctx.config, gpus, withheldVariableNames(manifest), { ...(owner ? { owner } : {}), processEnv: processEnvSources(manifest, installed) });
}

/**
 * As root, gpu-boot reads pid files in PM2_HOME, kills what they name and serves PM2's sockets
 * there: a PM2_HOME another user can write (or swap, as a link) would aim all that. Refused (78).
 */
function checkPm2Home(pm2Home: string): void {
  if (process.geteuid?.() !== 0) return;
  let stat;
  try {
    stat = lstatSync(pm2Home);
  } catch {
    return; // PM2 makes it, as root
  }
  const why = stat.isSymbolicLink() ? 'is a link' : !stat.isDirectory() ? 'is not a folder' : stat.uid !== 0 ? `belongs to uid ${stat.uid}` : (stat.mode & 0o022) !== 0 ? 'is writable by others' : undefined;
  if (why) {
    throw new ConfigError('invalid configuration', [`PM2_HOME: ${pm2Home} ${why}; as root, gpu-boot runs PM2 there and stops the processes its pid files name: use a folder only root can write`]);
  }
}

/**
 * Is the run that wrote a record alive? Its pid, start time and boot tell; from another pid
 * namespace (a restarted container on the same volume) only a live node process at its pid does.
 */
function runMayBeAlive(run: RunId): boolean {
  const status = runStatus(run);
  if (status !== 'unknown') return status === 'alive';
  try {
    return /node/.test(readFileSync(`/proc/${run.pid}/cmdline`, 'utf8').split('\0')[0] ?? '');
  } catch {
    return false;
  }
}

/**
 * Stop the instances a dead run left running, remove the secrets folders of dead runs (found on
 * the tmpfs, whatever became of their workspace), then wipe what the record lists, unless the run
 * that wrote it is still alive (exit 75). A record or state folder that is not gpu-boot's is
 * refused before anything is touched (exit 65). Shared by the recover phase and `wipe`.
 */
async function cleanLeftovers(ctx: RunContext, failure: (pid: number) => string): Promise<{ pid?: number; removed: number; restored: number; orphans: number[]; folders: string[] }> {
  checkPm2Home(pm2HomeOf(process.env));
  const state = StateDir.open(ctx.config.stateDir);
  try {
    const record = state?.readRecord();
    if (record && record.pid !== process.pid && runMayBeAlive(record.run)) {
      throw new BootError(ExitCode.tempFail, `gpu-boot (pid ${record.pid}) is running on this workspace (${ctx.config.stateDir}); stop it first`);
    }
    // Before the wipe: an instance must not go on serving with its secrets wiped from under it.
    const sweep = await stopOrphanedInstances(pm2HomeOf(process.env), ctx.config.killTimeoutMs);
    const orphans = sweep.stopped;
    if (orphans.length) {
      ctx.logger.warn({ pids: orphans }, `stopped ${orphans.length} instance(s) that an earlier run (pid ${record?.pid ?? 'unknown'}) left running`);
    }
    if (sweep.unverified.length) {
      ctx.logger.warn({ pids: sweep.unverified }, `PM2's pid files name live process(es) ${sweep.unverified.join(', ')} whose environment cannot be read: not provably instances of an earlier run, left running`);
    }
    const dead = sweepDeadRuns(storageBases(ctx.config));
    if (dead.removed.length) ctx.logger.warn({ folders: dead.removed }, `removed ${dead.removed.length} secrets folder(s) of dead runs`);
    for (const problem of dead.problems) ctx.logger.warn(problem);
    if (!state) return { removed: 0, restored: 0, orphans, folders: dead.removed };
    if (!record) {
      // A run that died before its record: only its plan (no secret) can be left.
      state.removeOwnFile('plan.json');
      state.removeIfEmpty();
      return { removed: 0, restored: 0, orphans, folders: dead.removed };
    }
    const result = wipeRecord(state, record);
    if (result.problems.length) throw new BootError(ExitCode.ioError, failure(record.pid), result.problems);
    for (const skipped of result.skipped) ctx.logger.warn(skipped);
    state.removeIfEmpty();
    return { pid: record.pid, removed: result.removed, restored: result.restored, orphans, folders: dead.removed };
  } finally {
    state?.close();
  }
}

/** Remove what a run that died left behind, before anything else. */
export async function recoverPhase(ctx: RunContext): Promise<void> {
  const left = await cleanLeftovers(ctx, (pid) => `cannot wipe the files left by an earlier run (pid ${pid})`);
  if (left.pid === undefined) return;
  ctx.logger.warn(
    { previousPid: left.pid, removed: left.removed, restored: left.restored },
    `an earlier run (pid ${left.pid}) did not clean up; wiped ${left.removed} file(s), restored ${left.restored}`,
  );
}

/** The keys each node asks to have in the instances' process environment, read by the launcher from its .env. */
function processEnvSources(manifest: Manifest, envFiles: ReadonlyMap<string, string>): ProcessEnvSource[] {
  return manifest.nodes.flatMap((node) => {
    const file = envFiles.get(node.name);
    return file && node.processEnv.length ? [{ file, keys: node.processEnv }] : [];
  });
}

/** Variables that carried secrets are removed from this process's environment before PM2 is started from it. */
function withholdSecretsFromChildren(env: NodeJS.ProcessEnv, names: string[]): void {
  for (const name of names) delete env[name];
}

export interface BootResult {
  exitCode: number;
}

export interface StartOptions {
  /** `demo` at a terminal: a closed terminal (SIGHUP) stops the boot. Otherwise SIGHUP re-reads the secrets. */
  hangupStops?: boolean;
}

/** READY_REQUIRES_NODES against this manifest: the nodes whose failed import keeps /ready at 503. */
function requiredNodes(setting: Config['readyRequiresNodes'], prepared: PreparedNodes): string[] {
  if (setting.kind === 'none') return [];
  if (setting.kind === 'env') return prepared.files.map((f) => f.node);
  if (setting.kind === 'all') return prepared.manifest.nodes.map((n) => n.name).filter((n) => !prepared.skipped.includes(n));
  return setting.kind === 'list' ? setting.nodes : [];
}

/** The pid PM2 has for an instance now (0 or undefined while it is not running). */
export async function instancePid(processes: Pick<ProcessManager, 'list'>, name: string): Promise<number | undefined> {
  const pid = (await processes.list().catch(() => [])).find((i) => i.name === name)?.pid;
  return pid && pid > 0 ? pid : undefined;
}

export async function runStart(runCtx: RunContext, options: StartOptions = {}): Promise<BootResult> {
  const state = new BootState();
  const ctx: RunContext = { ...runCtx, state };
  const { config, logger } = ctx;
  // performance.now() counts from the process's start: Node itself, the imports and the configuration.
  const startupMs = Math.round(performance.now() * 10) / 10;
  logger.info({ phase: 'config', ms: startupMs }, `config: valid ${startupMs} ms after the process started`);
  state.recordPhase('config', startupMs);
  const processes = new ProcessManager(logger, ECOSYSTEM_FILE, ctx.masker, state);
  let crashLoopMessage: string | undefined;
  let stopCrashWatch: () => void = () => undefined;
  let rotator: Rotator | undefined;
  let health: HealthServer | undefined;
  let files: FileSession | undefined;
  let instanceFolders: Plan | undefined;
  let knownPids: KnownPid[] = [];
  let daemonDied = false;
  let stopDaemonWatch: () => void = () => undefined;
  let exitCode: number = ExitCode.ok;
  let supervisor: Supervisor | undefined;
  let watchdog: GpuWatchdog | undefined;
  /** Set when no GPU or instance is left in service: the boot ends with 71, the machine is to be replaced. */
  let nothingLeft: string | undefined;
  const stopLoopWatch = watchEventLoop((worstMs) => {
    state.eventLoopLagMs = worstMs;
  });

  // SIGHUP re-reads the secrets once the boot is done; in `demo` (a terminal closed) it stops.
  const stops = new StopRequests(logger, options.hangupStops ? 'stop' : () => {
    if (!rotator) return logger.warn('SIGHUP: the secrets are re-read once the boot is done (or ROTATION=off)');
    logger.info('SIGHUP: re-reading the secret sources');
    void rotator.now('SIGHUP');
  });
  const abort = new AbortController();

  try {
    preparePm2Home(processes.pm2Home);
    await timed(ctx, 'recover', () => recoverPhase(ctx));
    // After recover: a second boot refused on a live workspace must not take the first one's port.
    if (config.healthPort > 0) {
      health = await startConfiguredHealthServer(config, logger, state, async () => (processes.connected ? processes.list() : undefined), () => watchdog?.snapshot());
    }
    // PM2's daemon code takes ~75 ms of this thread to load: it loads in the boot's first wait
    // (load() starts on setImmediate). With GPUs that is nvidia-smi's answer; with mock GPUs nothing
    // waits before the node files' links are made in the thread pool: it is started there (below).
    // It serves PM2_HOME only once the secrets are out of this process's environment (PM2's RPC
    // answers `pm2 report` with it), below.
    let pm2LoadMs: number | undefined;
    if (config.gpuMode !== 'mock') processes.load().catch(() => undefined);
    stops.check();
    const gpus = await detectPhase(ctx, false);
    stops.check();
    const prepared = await secretsPhase(ctx);
    // Rotation re-reads the sources later; this process's own environment loses them just below.
    const sourceEnv: NodeJS.ProcessEnv = { ...ctx.env };
    const withheld = prepared.resolution.sourceVariableNames;
    // Each delete from process.env is an unsetenv(3) scan of the whole environment: only the names
    // that are set (the snapshot knows them) are deleted, a third of the list (11 vs 32 ms at 2,500).
    const present = ctx.env === process.env ? withheld : withheld.filter((name) => Object.hasOwn(ctx.env, name));
    withholdSecretsFromChildren(process.env, present);
    if (ctx.env !== process.env) withholdSecretsFromChildren(ctx.env, present);
    // PM2 serves (and, with mock GPUs, loads first) once the write below has its links in the thread pool.
    let connected: Promise<void> | undefined;
    stops.check();

    const [storage, owner] = await Promise.all([chooseStorage(config, logger), chooseOwner(config)]);
    // COMFY_ARGS against the flags of the ComfyUI in COMFYUI_PATH (read as the instances' user when root).
    await checkComfyArgsAtStart(config, logger, owner ? { asUser: owner } : {});
    const plan = buildPlan(config, gpus, withheld, {
      ...(owner ? { owner } : {}),
      processEnv: processEnvSources(prepared.manifest, new Map(prepared.files.map((f) => [f.node, f.path]))),
    });
    for (const warning of plan.layout.warnings) logger.warn(warning);
    state.gpus = gpus;
    state.nodes = nodeSummaries(prepared);
    // Which nodes must have loaded for /ready: by default those that declare env (their secrets were written for them).
    state.envNodes = prepared.files.map((f) => f.node);
    state.requiredNodes = requiredNodes(config.readyRequiresNodes, prepared);
    await timed(ctx, 'write', async () => {
      files = new FileSession(StateDir.create(config.stateDir), storage, owner);
      files.writePlan(`${JSON.stringify(plan, null, 2)}\n`);
      // Its first wait: PM2 loads and serves on this thread meanwhile (load and connect start on setImmediate).
      connected = processes.connect().then(() => {
        // From the load's start (with GPUs, before detect) to serving.
        pm2LoadMs = Math.round((performance.now() - processes.loadStartedAt!) * 10) / 10;
      });
      connected.catch(() => undefined);
      await files.write(prepared.files);
      // Each instance's own temp (and unshared) folders, handed to the instances' user.
      prepareInstanceFolders(plan, owner);
      instanceFolders = plan;
      return prepared.files;
    }, (written) => ({
      files: capList(written.map((f) => f.path)),
      storage: files?.secrets?.path ?? 'in place',
      ...(owner ? { owner } : {}),
    }), (written) => `plan and ${written.length} .env file(s) written${files?.secrets ? `, contents on tmpfs ${files.secrets.path}` : ' in place'}`);
    stops.check();

    const instances = await timed(ctx, 'pm2-start', async () => {
      try {
        // A signal while PM2 comes up is honoured at once: the finish stage (the wipe) must not wait on it.
        await stops.orStop(connected!);
        // Independent round trips to the daemon: clear what an earlier run left, and subscribe to output.
        const [stale] = await Promise.all([processes.removeStaleApps(), processes.watch()]);
        if (stale.length) logger.warn({ apps: stale }, 'removed instances left in PM2 by an earlier run');
        // Before the instances start (and after a reused daemon's leftovers are gone): a port another
        // process holds would make the real ComfyUI crash-loop on "address already in use" while
        // something else answers HTTP there. 78; the finish stage wipes what was written.
        const portProblems = await instancePortProblems(listenAddresses(config.comfyuiListen), plan.instances);
        if (portProblems.length) throw new ConfigError(`instance port${portProblems.length === 1 ? '' : 's'} in use`, portProblems);
        return await processes.startFromEcosystem(config.stateDir, files!.planFile);
      } catch (error) {
        if (error instanceof BootError || error instanceof StopRequested) throw error;
        throw new BootError(ExitCode.ioError, `PM2 could not start the instances: ${describeError(error)}`);
      }
    }, (list) => ({
      pm2Home: processes.pm2Home,
      // PM2 loaded beside detect, secrets and write: their figures include its share of the one thread.
      pm2LoadMs,
      instances: list.map((i) => ({ name: i.name, pid: i.pid, status: i.status })),
    }), (list) => `${list.length} instance(s) started under PM2`);
    knownPids = instances.map((i) => i.pid).filter((pid) => pid > 0).map((pid) => ({ pid, start: procStartTime(pid) }));
    state.instances = plan.instances;
    state.phase = 'running';
    const rotationDeps = { config, logger, masker: ctx.masker, sourceEnv, processes, state, files: files!, probeHost: probeHost(config.comfyuiListen) };
    rotator = new Rotator(rotationDeps, prepared);

    // Without PM2 nothing restarts the instances: `pm2 kill` (or a foreign daemon's death) ends the boot.
    stopCrashWatch = processes.onCrashLoop(config.crashLoopLimit, (message) => {
      crashLoopMessage = message;
      logger.error({ crashLoopLimit: config.crashLoopLimit }, `${message}: stopping (exit 78)`);
      stops.request('crash loop');
    });
    stopDaemonWatch = await processes.onPm2Exit((reason) => {
      daemonDied = true;
      logger.error({ reason }, `PM2 is gone (${reason}); no instance will be restarted: shutting down`);
      stops.request(reason);
    });

    // Healing: the supervisor (hangs, the restart budget) and the GPU watchdog (cordons).
    // Only while the boot runs: a stop already under way is not a machine to replace.
    const giveUp = (reason: string, gpuFailed: boolean): void => {
      if (nothingLeft || state.phase !== 'running') return;
      nothingLeft = reason;
      logger.error({ reason }, `${reason}: this machine cannot serve; stopping (exit 71)`);
      // A GPU that failed is the machine's fault: ask the platform for another one first.
      void (gpuFailed ? askForAnotherMachine(ctx, reason) : Promise.resolve()).finally(() => stops.request('nothing left in service'));
    };
    supervisor = new Supervisor({
      logger,
      state,
      probeHost: probeHost(config.comfyuiListen),
      settings: supervisorSettings(config),
      list: () => processes.list(),
      restart: (name) => processes.restartFresh(name),
      stop: (name) => processes.stopOne(name),
      onNothingLeft: (reason) => giveUp(reason, [...state.health.values()].some((h) => h.out?.kind === 'cordoned')),
      readinessWaiting: () => readinessWaiting,
    });
    supervisor.start();
    watchdog = startWatchdog(ctx, gpus, (gpu, reason) => {
      logger.error({ gpu: gpu.index, uuid: gpu.uuid, reason }, `GPU ${gpu.index} cordoned: ${reason}`);
      // The watchdog's own verdict first: with no healthy GPU the machine is what failed.
      const snapshot = watchdog?.snapshot();
      if (snapshot && snapshot.gpus.every((g) => g.state === 'cordoned')) giveUp(`no healthy GPU left (GPU ${gpu.index}: ${reason})`, true);
      if (state.phase === 'running') void supervisor?.cordonGpu(gpu.index, reason);
    }, (finding) => logger.warn({ gpu: finding.gpu, kind: finding.kind }, `GPU watchdog: ${finding.message}`));

    // Readiness runs beside the wait for a signal: a SIGTERM during a slow start is honoured at once.
    // The boot's duration counts from the process's start (performance.now()'s origin), Node's own start included.
    // Once all answer, PM2's worker (held back while they started) may run.
    let readinessWaiting = true;
    const ready = reportReadiness(logger, config, plan.instances, 0, abort.signal, (ms) => {
      state.recordPhase('ready', ms);
      processes.releasePm2Worker();
    }, (name) => instancePid(processes, name), (name) => {
      processes.markServing(name);
      supervisor?.markServing(name);
      // Which custom nodes it actually serves classes of: /object_info, once it answers.
      const port = plan.instances.find((i) => i.name === name)?.port;
      if (port !== undefined) {
        void objectInfoClasses(probeHost(config.comfyuiListen), port).then((classes) => {
          const record = state.instanceRecords.get(name);
          if (classes && record) record.classes = classes;
        });
      }
    }, (name) => (listener) => processes.onServerUp(name, listener));
    // From here (all answer, or READY_TIMEOUT_MS passed) the supervisor probes the ones that have not served too.
    const readinessDone = (): void => {
      readinessWaiting = false;
    };
    ready.then(readinessDone, readinessDone);

    const signal = await stops.requested;
    abort.abort();
    await ready;
    logger.info({ signal }, `${signal} received: stopping instances`);
  } catch (error) {
    if (!(error instanceof StopRequested)) throw error;
    logger.info({ signal: stops.reason }, `${stops.reason} received during boot: stopping`);
  } finally {
    const stopRequestedAt = Date.now();
    abort.abort();
    stopDaemonWatch();
    const drain = state.phase === 'running' && !daemonDied;
    state.phase = 'stopping';
    // Neither may act any more, nor hold the stop: their rounds in flight are left to finish alone.
    await supervisor?.close();
    await withTimeout(watchdog?.stop() ?? Promise.resolve(), 500);
    stopLoopWatch();
    // A rotation in progress finishes its write first: a file is never cut in half.
    await rotator?.close();
    exitCode = await shutdown(ctx, processes, knownPids, files, drain ? state.instances.filter((i) => !state.health.get(i.name)?.out) : [], stopRequestedAt);
    // The instances are stopped: what they left in their own temp folders goes (ComfyUI empties it itself on a clean exit).
    if (instanceFolders) {
      const removal = removeInstanceTemp(instanceFolders);
      for (const problem of removal.problems) logger.warn(problem);
    }
    await health?.close();
    if (daemonDied && exitCode === ExitCode.ok) exitCode = ExitCode.ioError;
    // Restarting an instance that refuses its configuration would loop forever: a finding, exit 78.
    if (crashLoopMessage && exitCode === ExitCode.ok) exitCode = ExitCode.config;
    // What the platform must act on first: replace the machine (a GPU stuck in the driver often leaves a process that makes it 74).
    if (nothingLeft && (exitCode === ExitCode.ok || exitCode === ExitCode.ioError)) exitCode = ExitCode.osError;
    stopCrashWatch();
    stops.dispose();
  }
  return { exitCode: stops.fatal && exitCode === ExitCode.ok ? ExitCode.software : exitCode };
}

/** `wipe`: remove every file a previous run left. */
export async function runWipe(ctx: RunContext): Promise<number> {
  const left = await cleanLeftovers(ctx, () => 'some files could not be wiped');
  // PM2's sockets and pid file of a daemon that died with its run (none answers on them).
  const stale = await removeStalePm2Files(pm2HomeOf(process.env));
  if (stale.length) ctx.logger.info({ files: stale }, `removed PM2's stale ${stale.map((f) => path.basename(f)).join(', ')}`);
  if (left.pid === undefined) ctx.logger.info({ stateDir: ctx.config.stateDir, folders: left.folders.length }, 'nothing to wipe: no record of written files');
  else ctx.logger.info({ removed: left.removed, restored: left.restored }, `wiped ${left.removed} file(s), restored ${left.restored}`);
  return ExitCode.ok;
}
