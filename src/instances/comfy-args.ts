import net from 'node:net';
import path from 'node:path';
import { parse as parseShellWords } from 'shell-quote';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';

/**
 * ComfyUI's command line as gpu-boot sees it: COMFY_ARGS (shell words, checked against the flags
 * gpu-boot sets itself and against the flags of the ComfyUI in COMFYUI_PATH) and COMFYUI_LISTEN
 * (a comma-separated list of addresses, as `--listen` takes). No function here prints a value of
 * COMFY_ARGS: a flag's name only, never what follows it or its `=value`.
 */

/** COMFY_ARGS as argv: shell words, quoted as in a shell; operators and comments are refused. */
export function parseComfyArgs(text: string): string[] {
  const words = parseShellWords(text);
  const args: string[] = [];
  for (const word of words) {
    if (typeof word !== 'string') {
      throw new ConfigError('invalid configuration', [
        'COMFY_ARGS: contains shell operators or comments; give plain arguments (quote them as in a shell)',
      ]);
    }
    args.push(word);
  }
  return args;
}

/** One option in an argv: its name (before any `=`), where it is, and whether it carries `=value`. */
export interface FlagUse {
  flag: string;
  index: number;
  inlineValue: boolean;
}

/** argparse's test for a negative number, which is a value and not an option. */
const NEGATIVE_NUMBER = /^-\d+$|^-\d*\.\d+$/;

/**
 * The options of an argv, as argparse tells them from values: a word that starts with `-` (not `-`
 * alone, not a negative number), named up to its `=`. Words after `--` are positional arguments:
 * their index is `positionalsFrom` (-1 when there is no `--`). Pure.
 */
export function extractFlags(argv: readonly string[]): { flags: FlagUse[]; positionalsFrom: number } {
  const flags: FlagUse[] = [];
  for (let index = 0; index < argv.length; index += 1) {
    const word = argv[index]!;
    if (word === '--') return { flags, positionalsFrom: index };
    if (word.length < 2 || !word.startsWith('-') || NEGATIVE_NUMBER.test(word)) continue;
    const eq = word.indexOf('=');
    flags.push({ flag: eq > 0 ? word.slice(0, eq) : word, index, inlineValue: eq > 0 });
  }
  return { flags, positionalsFrom: -1 };
}

/** The flag names of an argv, in order, each once (`--port=1` counts as `--port`). Pure. */
export function extractFlagNames(argv: readonly string[]): string[] {
  return [...new Set(extractFlags(argv).flags.map((f) => f.flag))];
}

/**
 * Flags COMFY_ARGS must not carry, with what to set instead. gpu-boot passes the first ones to each
 * instance itself, and argparse keeps the last of a flag given twice: COMFY_ARGS would win.
 */
export const RESERVED_FLAGS: ReadonlyMap<string, string> = new Map([
  ['--port', 'is set by gpu-boot: instance i listens on COMFYUI_PORT_START+i; set COMFYUI_PORT_START (and INSTANCES_PER_GPU)'],
  ['--listen', 'is set by gpu-boot for every instance; set COMFYUI_LISTEN (a comma-separated list; 0.0.0.0,:: for all)'],
  ['--cuda-device', 'would undo gpu-boot\'s pinning: ComfyUI overwrites CUDA_VISIBLE_DEVICES (each instance\'s own device UUID) with it; set CUDA_VISIBLE_DEVICES on the container to choose the GPUs (GPU_MODE=actual)'],
  ['--cpu', 'is set by gpu-boot for every instance with GPU_MODE=mock; set GPU_MODE'],
  ['--temp-directory', 'is set by gpu-boot: each instance gets its own temp folder, $WORKSPACE_PATH/instances/<instance>/temp (ComfyUI empties it at start and exit); set WORKSPACE_PATH'],
  ['--output-directory', 'is decided by COMFYUI_SHARED_FOLDERS: shared, $COMFYUI_PATH/output; otherwise $WORKSPACE_PATH/instances/<instance>/output; set COMFYUI_SHARED_FOLDERS'],
  ['--input-directory', 'is decided by COMFYUI_SHARED_FOLDERS: shared, $COMFYUI_PATH/input; otherwise $WORKSPACE_PATH/instances/<instance>/input; set COMFYUI_SHARED_FOLDERS'],
  ['--user-directory', 'is decided by COMFYUI_SHARED_FOLDERS: shared, $COMFYUI_PATH/user; otherwise $WORKSPACE_PATH/instances/<instance>/user; set COMFYUI_SHARED_FOLDERS'],
  ['--base-directory', 'moves models, custom_nodes, input, output, temp and user at once, past the folders gpu-boot sets; set COMFYUI_PATH and COMFYUI_SHARED_FOLDERS'],
  ['--help', 'prints the usage and exits: PM2 would restart the instance forever'],
  ['-h', 'prints the usage and exits: PM2 would restart the instance forever'],
  ['--quick-test-for-ci', 'exits right after starting: PM2 would restart the instance forever'],
]);

/** The reserved flags a `--` word abbreviates (argparse takes any unique prefix of a long option). */
function reservedAbbreviated(flag: string): string[] {
  if (!flag.startsWith('--') || flag.length < 3) return [];
  return [...RESERVED_FLAGS.keys()].filter((reserved) => reserved.startsWith('--') && reserved !== flag && reserved.startsWith(flag));
}

/**
 * What is wrong with COMFY_ARGS without knowing ComfyUI's flags: a flag gpu-boot sets (or an
 * abbreviation of one, which argparse would take for it), and positional arguments after `--`,
 * which ComfyUI does not take. Each problem names the flag and the setting to use. Pure.
 */
export function reservedFlagProblems(argv: readonly string[]): string[] {
  const { flags, positionalsFrom } = extractFlags(argv);
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const { flag } of flags) {
    if (seen.has(flag)) continue;
    seen.add(flag);
    const reason = RESERVED_FLAGS.get(flag);
    if (reason) {
      problems.push(`COMFY_ARGS: ${flag} ${reason}`);
      continue;
    }
    const abbreviated = reservedAbbreviated(flag);
    if (abbreviated.length) {
      problems.push(`COMFY_ARGS: ${flag} abbreviates ${abbreviated.join(' or ')} (argparse takes a unique prefix of a flag): ${abbreviated.map((a) => `${a} ${RESERVED_FLAGS.get(a)!}`).join('; ')}`);
    }
  }
  if (positionalsFrom >= 0) problems.push('COMFY_ARGS: -- ends the flags, and ComfyUI takes no positional arguments; remove it');
  return problems;
}

/** The flags refused by reservedFlagProblems, which the other checks then leave alone. */
function isReserved(flag: string): boolean {
  return RESERVED_FLAGS.has(flag) || reservedAbbreviated(flag).length > 0;
}

/**
 * The flags of COMFY_ARGS that the ComfyUI whose flags are `known` would refuse: unknown ones and
 * ambiguous abbreviations (argparse takes an exact flag, else the one flag a `--` word is a prefix
 * of). Reserved flags are left to reservedFlagProblems. Pure.
 */
export function unknownFlagProblems(argv: readonly string[], known: ReadonlySet<string>, comfyuiPath: string): string[] {
  const where = `the ComfyUI in ${comfyuiPath} (comfy/cli_args.py)`;
  const problems: string[] = [];
  for (const flag of extractFlagNames(argv)) {
    if (isReserved(flag) || known.has(flag)) continue;
    const candidates = flag.startsWith('--') ? [...known].filter((k) => k.startsWith(flag)).sort() : [];
    if (candidates.length === 1) continue;
    if (candidates.length > 1) problems.push(`COMFY_ARGS: ${flag} is ambiguous in ${where}: it abbreviates ${candidates.join(', ')}; give the whole flag`);
    else problems.push(`COMFY_ARGS: ${flag} is not a flag of ${where}`);
  }
  return problems;
}

/** Where ComfyUI declares its flags. */
export function cliArgsFile(comfyuiPath: string): string {
  return path.join(comfyuiPath, 'comfy', 'cli_args.py');
}

export const CLI_ARGS_TIMEOUT_MS = 5000;
const CLI_ARGS_LIMIT = 4 * 1024 * 1024;

/**
 * Parses cli_args.py with Python's own ast module, never importing (running) it, and prints
 * {"flags": [...]}: the leading `-` strings of every `<anything>.add_argument(...)` call; or
 * {"error": "..."} where the file cannot be read or parsed.
 */
const AST_SCRIPT = `
import ast, json, sys
path = sys.argv[1]
try:
    with open(path, "rb") as f:
        source = f.read(${CLI_ARGS_LIMIT} + 1)
    if len(source) > ${CLI_ARGS_LIMIT}:
        raise ValueError("larger than 4 MiB")
    tree = ast.parse(source, path)
except OSError as e:
    print(json.dumps({"error": "cannot read %s: %s" % (path, e.strerror or type(e).__name__)}))
    sys.exit(0)
except SyntaxError as e:
    print(json.dumps({"error": "%s does not parse: %s (line %s)" % (path, e.msg, e.lineno)}))
    sys.exit(0)
except (ValueError, RecursionError, MemoryError) as e:
    print(json.dumps({"error": "%s does not parse: %s" % (path, type(e).__name__ if not str(e) else e)}))
    sys.exit(0)
flags = []
for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
        for arg in node.args:
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-")):
                break
            flags.append(arg.value)
print(json.dumps({"flags": flags}))
`;

export type ComfyFlags = { ok: true; file: string; flags: ReadonlySet<string> } | { ok: false; file: string; reason: string };

export interface ReadFlagsOptions {
  timeoutMs?: number;
  /** Run the parse as this user (gpu-boot as root: the instances' user). */
  asUser?: { uid: number; gid: number };
}

/** Process variables only (never a secret): what a python3 on PATH, a venv's or pyenv's, needs to start. */
function pythonEnv(): Record<string, string> {
  const env: Record<string, string> = { LANG: 'C.UTF-8' };
  for (const name of ['PATH', 'HOME', 'PYENV_ROOT', 'PYENV_VERSION']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** The flags of the ComfyUI in COMFYUI_PATH, from its comfy/cli_args.py, parsed by COMFYUI_PYTHON; or why they could not be read. */
export async function readComfyFlags(config: Pick<Config, 'comfyuiPath' | 'comfyuiPython'>, options: ReadFlagsOptions = {}): Promise<ComfyFlags> {
  const file = cliArgsFile(config.comfyuiPath);
  const timeoutMs = options.timeoutMs ?? CLI_ARGS_TIMEOUT_MS;
  const { execa } = await import('execa');
  let stdout: string;
  try {
    const result = await execa(config.comfyuiPython, ['-I', '-S', '-c', AST_SCRIPT, file], {
      env: pythonEnv(),
      extendEnv: false,
      stdin: 'ignore',
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
      maxBuffer: 1024 * 1024,
      reject: false,
      ...(options.asUser ? { uid: options.asUser.uid, gid: options.asUser.gid } : {}),
    });
    if (result.timedOut) return { ok: false, file, reason: `COMFYUI_PYTHON took longer than ${timeoutMs} ms to parse ${file}` };
    if (result.failed && result.exitCode === undefined) {
      const code = (result.cause as NodeJS.ErrnoException | undefined)?.code;
      return { ok: false, file, reason: `COMFYUI_PYTHON (${config.comfyuiPython}) could not be run${code ? ` (${code})` : ''}` };
    }
    if (result.exitCode !== 0) return { ok: false, file, reason: `COMFYUI_PYTHON (${config.comfyuiPython}) exited with ${result.exitCode ?? result.signal ?? 'an error'} parsing ${file}` };
    stdout = String(result.stdout);
  } catch (error) {
    return { ok: false, file, reason: `COMFYUI_PYTHON (${config.comfyuiPython}) could not be run (${(error as NodeJS.ErrnoException).code ?? 'error'})` };
  }
  let answer: unknown;
  try {
    answer = JSON.parse(stdout.trim().split('\n').pop() ?? '');
  } catch {
    return { ok: false, file, reason: `COMFYUI_PYTHON (${config.comfyuiPython}) did not answer as python3 does parsing ${file}` };
  }
  if (typeof answer === 'object' && answer !== null) {
    const { error, flags } = answer as { error?: unknown; flags?: unknown };
    if (typeof error === 'string') return { ok: false, file, reason: error };
    if (Array.isArray(flags) && flags.every((f): f is string => typeof f === 'string')) {
      if (flags.length === 0) return { ok: false, file, reason: `no add_argument("--...") call in ${file}` };
      // argparse adds -h/--help itself.
      return { ok: true, file, flags: new Set([...flags, '-h', '--help']) };
    }
  }
  return { ok: false, file, reason: `COMFYUI_PYTHON (${config.comfyuiPython}) did not answer as python3 does parsing ${file}` };
}

export interface ComfyArgsValidation {
  /** `COMFY_ARGS not validated: <why>`, where ComfyUI's flags could not be read: not a refusal. */
  warnings: string[];
}

/**
 * The COMFY_ARGS check of `check` and `start`: shell words, no flag gpu-boot sets itself, and every
 * flag one of the ComfyUI in COMFYUI_PATH (its comfy/cli_args.py parsed, not imported, by
 * COMFYUI_PYTHON, with a timeout). Throws a ConfigError (78) with every problem; where the flags
 * cannot be read, the unknown-flag check is skipped with a warning. Empty COMFY_ARGS runs nothing.
 */
export async function validateComfyArgs(config: Pick<Config, 'comfyArgs' | 'comfyuiPath' | 'comfyuiPython'>, options: ReadFlagsOptions = {}): Promise<ComfyArgsValidation> {
  const argv = parseComfyArgs(config.comfyArgs);
  if (argv.length === 0) return { warnings: [] };
  const problems = reservedFlagProblems(argv);
  const warnings: string[] = [];
  const known = await readComfyFlags(config, options);
  if (known.ok) problems.push(...unknownFlagProblems(argv, known.flags, config.comfyuiPath));
  else warnings.push(`COMFY_ARGS not validated: ${known.reason}`);
  if (problems.length) throw new ConfigError(`invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'} in COMFY_ARGS)`, problems);
  return { warnings };
}

/** validateComfyArgs for `start`: warnings go to the log; a problem throws the ConfigError (78). */
export async function checkComfyArgsAtStart(
  config: Pick<Config, 'comfyArgs' | 'comfyuiPath' | 'comfyuiPython'>,
  logger: { warn: (message: string) => void },
  options: ReadFlagsOptions = {},
): Promise<void> {
  const { warnings } = await validateComfyArgs(config, options);
  for (const warning of warnings) logger.warn(warning);
}

// ---- COMFYUI_LISTEN -------------------------------------------------------------------------

const HOST_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function isHostName(text: string): boolean {
  if (text.length > 253 || /^[0-9.]+$/.test(text)) return false;
  return text.split('.').every((label) => HOST_LABEL.test(label));
}

/** One listen address as ComfyUI takes it: IPv4, IPv6 (brackets dropped) or a host name; undefined if none. */
function normalizeAddress(text: string): string | undefined {
  const bare = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  if (bare !== text) return net.isIPv6(bare) ? bare : undefined;
  if (net.isIPv4(text) || net.isIPv6(text)) return text;
  return isHostName(text) ? text : undefined;
}

/**
 * COMFYUI_LISTEN as ComfyUI's `--listen` takes it: a comma-separated list of IPv4 and IPv6
 * addresses and host names (`0.0.0.0,::` for all). Returns the addresses (trimmed, IPv6 brackets
 * dropped) or the problem, which names the elements by position, never by value. Pure.
 */
export function parseListen(text: string): { addresses: string[]; problem?: string } {
  const items = text.split(',').map((item) => item.trim());
  const addresses: string[] = [];
  const bad: number[] = [];
  items.forEach((item, i) => {
    const address = normalizeAddress(item);
    if (address === undefined) bad.push(i + 1);
    else addresses.push(address);
  });
  if (bad.length) {
    const which = items.length === 1 ? 'must be' : bad.length === 1 ? `element ${bad[0]} of the comma-separated list must be` : `elements ${bad.join(', ')} of the comma-separated list must each be`;
    return { addresses, problem: `${which} an IPv4 or IPv6 address or a host name (a comma-separated list, as --listen takes; 0.0.0.0,:: for all)` };
  }
  const lowered = addresses.map((a) => (net.isIPv6(a) ? expandIPv6(a) : a.toLowerCase()));
  if (new Set(lowered).size !== lowered.length) return { addresses, problem: 'lists the same address twice (each would be bound once per instance: the second bind fails)' };
  return { addresses };
}

function expandIPv6(address: string): string {
  // Enough to compare: `::` and `0:0:0:0:0:0:0:0` are the same address.
  const [head = '', tail = ''] = address.toLowerCase().split('%')[0]!.split('::');
  const parts = (s: string) => (s ? s.split(':') : []);
  const h = parts(head);
  const t = parts(tail);
  const full = address.includes('::') ? [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t] : h;
  return full.map((p) => (p.includes('.') ? p : String(parseInt(p, 16)))).join(':') + (address.includes('%') ? `%${address.split('%')[1]}` : '');
}

const IPV6_ANY = expandIPv6('::');

/**
 * The address readiness probes for a listen list: a wildcard listener is reached on loopback
 * (0.0.0.0: 127.0.0.1; ::: ::1; both: 127.0.0.1), else the first address listed.
 */
export function probeHost(listen: string | readonly string[]): string {
  const items = (typeof listen === 'string' ? listen.split(',') : [...listen])
    .map((item) => item.trim())
    .map((item) => (item.startsWith('[') && item.endsWith(']') ? item.slice(1, -1) : item))
    .filter(Boolean);
  if (items.includes('0.0.0.0')) return '127.0.0.1';
  if (items.some((item) => net.isIPv6(item) && expandIPv6(item) === IPV6_ANY)) return '::1';
  return items[0] ?? '127.0.0.1';
}
