#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { SETTINGS_DOC, loadConfig, loadConfigBestEffort, type Config } from './config.js';
import { BootError, ConfigError, ExitCode, UsageError, describeError } from './errors.js';
import { SecretMasker, createLogger } from './log.js';
import { environmentSnapshot } from './env-snapshot.js';
import type { Logger } from 'pino';

const COMMANDS = {
  start: 'detect GPUs, write each custom node its .env, start one ComfyUI (or INSTANCES_PER_GPU) per GPU or MIG device under PM2, each pinned by UUID; stay up (health server, supervisor, GPU watchdog, rotation; SIGHUP re-reads secrets); drain, stop and wipe on SIGTERM/SIGINT (default)',
  check: 'pre-flight: validate configuration, manifest, secrets and GPUs; print a masked report; start and write nothing (exit 0 or 78)',
  detect: 'print the GPUs found, their MIG devices, and which devices are used and why (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES); --json: only the JSON on stdout, logs on stderr',
  plan: 'print the layout and the PM2 apps that start would run: each instance\'s device (UUID, MIG profile), slot, port and arguments (JSON on stdout, no secrets; logs on stderr)',
  wipe: 'remove every .env a previous run left (after a crash), restoring what they replaced; also dead runs\' secrets folders, a dead run\'s plan and PM2\'s stale sockets',
  demo: 'run start on the shipped demo workspace: mock GPUs, a ComfyUI stand-in, fake secrets',
  status: 'what the running boot says on its health server (HEALTH_PORT): GPUs, instances (state, port, ready, restarts, last exit), nodes loaded or failed, rotation, phases; a table, --json for scripts; exit 0 ready, 1 not ready, 69 no boot answers',
  install: 'build time: clone each manifest node with a url at its branch or commit, pip install its requirements, run its custom_script; refuses to run with secrets set',
} as const;
type Command = keyof typeof COMMANDS;

const EXIT_CODES = `exit codes: 0 ok, 1 install failed or (status) not ready, 64 usage, 65 state folder or record not gpu-boot's (nothing touched), 69 no GPU (GPU_MODE=actual), 70 internal error, 71 no healthy GPU or instance left while running (replace the machine), 73 cannot write, 74 I/O or PM2 failure, 75 another gpu-boot runs on this workspace, 78 configuration, manifest or secret error`;

function mainHelp(): string {
  const width = Math.max(...SETTINGS_DOC.map((s) => s.name.length));
  return [
    'usage: gpu-boot [command] [--help]',
    '',
    'The entrypoint of a GPU container: GPUs detected, secrets resolved into per-node .env files,',
    'ComfyUI per GPU or MIG device under PM2, watched and healed, everything wiped on stop.',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, doc]) => `  ${name.padEnd(7)} ${doc}`),
    '',
    'settings (environment variables, empty counts as unset):',
    ...SETTINGS_DOC.map((s) => `  ${s.name.padEnd(width)}  ${s.doc} [default: ${s.default}]`),
    '',
    'secrets: each ${VAR} in the manifest comes from exactly one of VAR_FILE, VAR_ENCODED (base64),',
    'VAR, or the SECRETS_ENV_FILE dotenv file; two set at once is an error.',
    '',
    EXIT_CODES,
    '',
  ].join('\n');
}

function commandHelp(command: Command): string {
  const flags: Partial<Record<Command, string>> = {
    check: '  --json   print the report as JSON',
    detect: '  --json   print only {"count","model","source","gpus":[...],"devices":[{"id","uuid","used","why"}...],...} on stdout; logs go to stderr',
    status: '  --json   print {"url","ready":<what /ready says>,"status":<what /status says>} instead of the table',
  };
  return [`usage: gpu-boot ${command}${flags[command] ? ' [--json]' : ''}`, '', COMMANDS[command], '', ...(flags[command] ? ['flags:', flags[command], ''] : []), 'settings: see `gpu-boot --help`', EXIT_CODES, ''].join('\n');
}

function parseCommandLine(argv: string[]): { command: Command; json: boolean; help: boolean } {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, strict: true, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  } catch (error) {
    throw new UsageError(`${describeError(error)}; see gpu-boot --help`);
  }
  const [name = 'start', ...rest] = parsed.positionals;
  if (name === 'help') return { command: 'start', json: false, help: true };
  if (!(name in COMMANDS)) throw new UsageError(`unknown command "${name}"; commands: ${Object.keys(COMMANDS).join(', ')}`);
  if (rest.length) throw new UsageError(`unexpected argument "${rest[0]}"`);
  const command = name as Command;
  if (parsed.values.json && command !== 'check' && command !== 'detect' && command !== 'status') throw new UsageError(`--json is only for check, detect and status`);
  return { command, json: parsed.values.json === true, help: parsed.values.help === true };
}

function reportError(error: unknown, logger: Logger | undefined, masker: SecretMasker): number {
  const code = error instanceof BootError ? error.exitCode : ExitCode.software;
  const problems = error instanceof BootError ? error.problems : [];
  const message = masker.mask(describeError(error));
  if (logger) logger.error({ exitCode: code, problems, ...(error instanceof BootError ? {} : { stack: masker.mask((error as Error)?.stack ?? '') }) }, message);
  const text = [`gpu-boot: error: ${message}`, ...problems.map((p) => `  - ${masker.mask(p)}`)].join('\n');
  process.stderr.write(`${text}\n`);
  return code;
}

/**
 * An invalid configuration must not hide the manifest's and the secrets' problems: they are checked
 * with the valid settings and the default of each invalid one, and added to the same report.
 * Nothing is written: prepareNodeFiles only reads.
 */
async function withLaterProblems(error: ConfigError, env: NodeJS.ProcessEnv, masker: SecretMasker, logger: Logger): Promise<ConfigError> {
  const { prepareNodeFiles } = await import('./secrets/node-files.js');
  const later: string[] = [];
  try {
    await prepareNodeFiles(loadConfigBestEffort(env), env, masker, logger);
  } catch (laterError) {
    if (!(laterError instanceof BootError)) throw laterError;
    later.push(...(laterError.problems.length ? laterError.problems : [laterError.message]));
  }
  if (later.length === 0) return error;
  const count = (n: number): string => `${n} problem${n === 1 ? '' : 's'}`;
  return new ConfigError(
    `invalid configuration (${count(error.problems.length)}), and ${count(later.length)} in the manifest and secrets (checked with the default of each invalid setting)`,
    [...error.problems, ...later],
  );
}

export async function main(argv: string[]): Promise<number> {
  const masker = new SecretMasker();
  let logger: Logger | undefined;
  try {
    const { command, json, help } = parseCommandLine(argv);
    if (help) {
      process.stdout.write(argv.length === 1 || argv[0] === 'help' || argv[0]?.startsWith('-') ? mainHelp() : commandHelp(command));
      return ExitCode.ok;
    }
    let env = environmentSnapshot();
    let cleanupDemo: (() => Promise<void>) | undefined;
    if (command === 'demo') {
      const { prepareDemo } = await import('./demo.js');
      const demo = await prepareDemo(env);
      env = demo.env;
      cleanupDemo = demo.cleanup;
      Object.assign(process.env, demo.env);
    }
    // stdout is for the JSON alone: `plan` prints only JSON, `detect` and `check` with --json.
    const quietStdout = command === 'plan' || command === 'status' || (json && (command === 'detect' || command === 'check'));
    // A bad LOG_LEVEL must still be reported: log at info until the configuration is known.
    let config: Config;
    try {
      config = loadConfig(env);
    } catch (error) {
      logger = await createLogger({ level: 'info', masker, fd: quietStdout ? 2 : 1 });
      // The manifest and the secrets are still checked: one report lists every problem.
      if (error instanceof ConfigError && (command === 'start' || command === 'check' || command === 'demo')) {
        throw await withLaterProblems(error, env, masker, logger);
      }
      throw error;
    }
    // start and demo run long and relay every instance's output: their lines go out once a turn.
    logger = await createLogger({ level: config.logLevel, masker, fd: quietStdout ? 2 : 1, batched: command === 'start' || command === 'demo' });
    for (const warning of config.warnings) logger.warn(warning);
    if (config.pm2Home) process.env.PM2_HOME = config.pm2Home;
    const ctx = { config, logger, masker, env };
    try {
      return await runCommand(command, json, ctx);
    } finally {
      await cleanupDemo?.();
    }
  } catch (error) {
    return reportError(error, logger, masker);
  }
}

async function runCommand(command: Command, json: boolean, ctx: { config: Config; logger: Logger; masker: SecretMasker; env: NodeJS.ProcessEnv }): Promise<number> {
  if (command === 'status') {
    const { formatStatus, healthUrl, readStatus, statusExitCode } = await import('./status.js');
    const result = await readStatus(healthUrl(ctx.config));
    process.stdout.write(json ? `${JSON.stringify(result, null, 2)}\n` : formatStatus(result));
    return statusExitCode(result);
  }
  const runner = await import('./runner.js');
  switch (command) {
    case 'start':
    case 'demo': {
      ctx.logger.info({ mode: ctx.config.gpuMode, workspace: ctx.config.workspacePath }, 'gpu-boot starting');
      return (await runner.runStart(ctx, { hangupStops: command === 'demo' })).exitCode;
    }
    case 'detect': {
      const gpus = await runner.detectPhase(ctx);
      const { detectionReport, formatDetection } = await import('./gpus/report.js');
      process.stdout.write(json ? `${JSON.stringify({ ...detectionReport(gpus), host: gpus.host ?? null })}\n` : formatDetection(gpus));
      return ExitCode.ok;
    }
    case 'plan': {
      const plan = await runner.computePlan(ctx);
      process.stdout.write(`${JSON.stringify(plan, null, 2)}\n`);
      return ExitCode.ok;
    }
    case 'wipe':
      return runner.runWipe(ctx);
    case 'install': {
      const { runInstall } = await import('./instances/installer.js');
      await runInstall(ctx.config, ctx.env, ctx.logger);
      return ExitCode.ok;
    }
    case 'check': {
      const { buildCheckReport, formatCheckReport } = await import('./check.js');
      const problems: string[] = [];
      const collect = (error: unknown): undefined => {
        if (error instanceof BootError) problems.push(...(error.problems.length ? error.problems : [error.message]));
        else throw error;
        return undefined;
      };
      const gpus = await runner.detectPhase(ctx).catch(collect);
      const prepared = await runner.secretsPhase(ctx).catch(collect);
      // What `start` checks next: the instances' user, COMFY_ARGS (against the flags of the ComfyUI
      // in COMFYUI_PATH too) and the port range.
      const { chooseOwner } = await import('./files/storage.js');
      const { buildPlan } = await import('./instances/plan.js');
      const { validateComfyArgs } = await import('./instances/comfy-args.js');
      const owner = await chooseOwner(ctx.config).catch(collect);
      const warnings: string[] = [];
      try {
        warnings.push(...(await validateComfyArgs(ctx.config, owner ? { asUser: owner } : {})).warnings);
      } catch (error) {
        collect(error);
      }
      if (gpus) {
        try {
          warnings.push(...gpus.selection.warnings);
          const plan = buildPlan(ctx.config, gpus, [], owner ? { owner } : {});
          warnings.push(...plan.layout.warnings);
          // The instances' ports, as start tests them: a port someone holds is a problem here too.
          const { instancePortProblems, listenAddresses } = await import('./instances/ports.js');
          problems.push(...(await instancePortProblems(listenAddresses(ctx.config.comfyuiListen), plan.instances)));
        } catch (error) {
          collect(error);
        }
      }
      // validateComfyArgs and buildPlan both refuse the flags gpu-boot sets: each problem once.
      const report = buildCheckReport(ctx.config, gpus, prepared, [...new Set(problems)].map((p) => ctx.masker.mask(p)), warnings.map((w) => ctx.masker.mask(w)));
      process.stdout.write(ctx.masker.mask(json ? `${JSON.stringify(report, null, 2)}\n` : formatCheckReport(report)));
      return report.ok ? ExitCode.ok : ExitCode.config;
    }
  }
}

// This module is the program: `node dist/entrypoint.js [command]`.
main(process.argv.slice(2)).then(
  (code) => {
    // PM2's client can keep sockets open; the work is done, so leave now.
    process.exit(code);
  },
  (error: unknown) => {
    process.stderr.write(`gpu-boot: unexpected failure: ${describeError(error)}\n`);
    process.exit(ExitCode.software);
  },
);
