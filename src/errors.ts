/**
 * One error type for every failure the CLI reports. The code decides the exit
 * status (sysexits.h); the message names variables, nodes and paths, never values.
 */
export const ExitCode = {
  ok: 0,
  failed: 1, // `install`: a node could not be cloned, checked out or set up; `status`: the boot answers, not ready
  usage: 64, // EX_USAGE: unknown subcommand or flag
  dataError: 65, // EX_DATAERR: the state folder or its record is not gpu-boot's (planted, forged): nothing touched
  unavailable: 69, // EX_UNAVAILABLE: no GPU where one was required
  software: 70, // EX_SOFTWARE: a bug or an unexpected failure
  cantCreate: 73, // EX_CANTCREAT: a file could not be written
  osError: 71, // EX_OSERR: no healthy GPU or instance left while running: replace the machine
  ioError: 74, // EX_IOERR: PM2 or the disk failed while running
  tempFail: 75, // EX_TEMPFAIL: another gpu-boot is running on this workspace
  config: 78, // EX_CONFIG: bad configuration, manifest or secret
} as const;

export type ExitStatus = (typeof ExitCode)[keyof typeof ExitCode];

export class BootError extends Error {
  readonly exitCode: ExitStatus;
  /** Each problem on its own line; all of them are reported at once. */
  readonly problems: readonly string[];

  constructor(exitCode: ExitStatus, message: string, problems: readonly string[] = [], options?: ErrorOptions) {
    super(message, options);
    this.name = 'BootError';
    this.exitCode = exitCode;
    this.problems = problems;
  }
}

export class ConfigError extends BootError {
  constructor(message: string, problems: readonly string[] = []) {
    super(ExitCode.config, message, problems);
    this.name = 'ConfigError';
  }
}

export class NoGpuError extends BootError {
  constructor(message: string, problems: readonly string[] = []) {
    super(ExitCode.unavailable, message, problems);
    this.name = 'NoGpuError';
  }
}

export class UsageError extends BootError {
  constructor(message: string) {
    super(ExitCode.usage, message);
    this.name = 'UsageError';
  }
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
